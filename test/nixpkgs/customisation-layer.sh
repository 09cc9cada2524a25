# builder of streamLayeredImage's customisation layer: the roots' files linked into /
# (as symlinkJoin does) plus extraCommands, as $out/layer.tar and its $out/checksum.
. "$lib"
mkdir layer
for item in $roots; do
  (cd "$item" && find . ! -type d) | while read -r f; do
    mkdir -p "layer/$(dirname "$f")"
    ln -sfn "$item/${f#./}" "layer/$f"
  done
done
if [ -n "$extraCommands" ]; then (cd layer && eval "$extraCommands"); fi
mkdir "$out"
tar -C layer $TARFLAGS --xform 's:^\./::' -cf "$out/layer.tar" .
sha256sum "$out/layer.tar" | cut -d' ' -f1 > "$out/checksum"
