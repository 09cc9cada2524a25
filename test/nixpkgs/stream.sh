# The body of a streamLayeredImage script: builds each layer in a temporary directory
# and writes an uncompressed docker-archive to stdout, layers first and manifest.json
# last, as nixpkgs' stream_layered_image.py does.
set -eu
export PATH=/usr/bin:/bin
. "$lib"
[ -n "$imageTag" ] || imageTag=$(basename "$self" | cut -d- -f1)
tmp=$(mktemp -d)
# /nix and /nix/store are made read-only for the image (see lib.sh).
trap 'chmod -R u+w "$tmp"; rm -rf "$tmp"' EXIT
cd "$tmp"
ids=""
echo "$layers" | while read -r paths; do
  [ -n "$paths" ] || continue
  echo "Creating layer from paths: $paths" >&2
  printf '%s\n' $paths | append_store_paths l.tar
  sum=$(sha256sum l.tar | cut -d' ' -f1)
  mkdir "$sum"
  mv l.tar "$sum/layer.tar"
  echo "$sum" >> ids
done
sum=$(cat "$customisation/checksum")
mkdir "$sum"
cp "$customisation/layer.tar" "$sum/layer.tar"
echo "$sum" >> ids

diff_ids=$(sed 's/.*/"sha256:&"/' ids | paste -sd, -)
history=$(sed "s/.*/{\"created\":\"$created\",\"comment\":\"layer &\"}/" ids | paste -sd, -)
printf '{"created":"%s","architecture":"%s","os":"linux","config":%s,"rootfs":{"diff_ids":[%s],"type":"layers"},"history":[%s]}' \
  "$created" "$architecture" "$(cat "$configJson")" "$diff_ids" "$history" > config.json
cfg=$(sha256sum config.json | cut -d' ' -f1)
mv config.json "$cfg.json"
layer_list=$(sed 's|.*|"&/layer.tar"|' ids | paste -sd, -)
printf '[{"Config":"%s.json","RepoTags":["%s:%s"],"Layers":[%s]}]' "$cfg" "$imageName" "$imageTag" "$layer_list" > manifest.json
echo "Adding manifests..." >&2
sed 's|$|/layer.tar|' ids > members
echo "$cfg.json" >> members
echo manifest.json >> members
tar --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner --no-recursion --verbatim-files-from -T members -cf -
