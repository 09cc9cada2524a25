# builder of buildLayeredImage: the stream script's archive, gzipped.
"$stream" > image.tar
gzip -9n < image.tar > "$out"
