# builder of dockerTools.streamLayeredImage: $out is a script that writes the image
# archive to stdout when run (see stream.sh); the layers' store paths are fixed here.
. "$lib"
closure | grep -vxF "$configJson" \
  | awk -v max=$((maxLayers - 1)) 'NR < max { print; next } { rest = rest (rest ? " " : "") $0 } END { if (rest) print rest }' \
  > layers
{
  echo '#!/bin/sh'
  printf "%s='%s'\n" self "$out" lib "$lib" stream "$stream" customisation "$customisation" configJson "$configJson" \
    imageName "$imageName" imageTag "$imageTag" created "$created" architecture "$architecture"
  printf "layers='%s'\n" "$(cat layers)"
  echo '. "$stream"'
} > "$out"
chmod 555 "$out"
