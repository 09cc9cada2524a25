# builder of dockerTools.buildImage: one layer (the roots' contents plus the closure of
# the config and the roots) in a gzipped docker-archive, laid out as nixpkgs does it.
. "$lib"
[ -n "$imageTag" ] || imageTag=$(basename "$out" | cut -d- -f1)

mkdir layer temp image
for item in $roots; do
  cp -RPp "$item"/. layer/
done
chmod -R u+w layer
tar -C layer $TARFLAGS -cf temp/layer.tar .
closure | grep -vxF "$baseJson" > newFiles || true
if [ -s newFiles ]; then append_store_paths temp/layer.tar < newFiles; fi

# Legacy (v1) layer metadata, which `docker load` ignores but dockerTools writes.
base=$(cat "$baseJson")
checksum=$(sha256sum temp/layer.tar | cut -d' ' -f1)
printf '%s,"checksum":"sha256:%s"}' "${base%\}}" "$checksum" > temp/json
layerID=$(sha256sum temp/json | cut -d' ' -f1)
size=$(stat -c %s temp/layer.tar)
printf '%s,"checksum":"sha256:%s","id":"%s","Size":%s}' "${base%\}}" "$checksum" "$layerID" "$size" > temp/json
printf '1.0' > temp/VERSION
mv temp "image/$layerID"

printf '%s,"rootfs":{"diff_ids":["sha256:%s"],"type":"layers"},"history":[{"created":"%s"}]}\n' \
  "${base%\}}" "$checksum" "$created" > image/config
configID=$(sha256sum image/config | cut -d' ' -f1)
mv image/config "image/$configID.json"
printf '[{"RepoTags":["%s:%s"],"Layers":["%s/layer.tar"],"Config":"%s.json"}]\n' \
  "$imageName" "$imageTag" "$layerID" "$configID" > image/manifest.json
printf '{"%s":{"%s":"%s"}}\n' "$imageName" "$imageTag" "$layerID" > image/repositories
chmod -R a-w image
tar -C image $TARFLAGS --xform 's:^\./::' -c . | gzip -9n > "$out"
