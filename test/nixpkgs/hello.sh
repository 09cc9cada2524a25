# builder of hello: bin/hello prints the greeting with a static busybox from the host,
# so the package's closure is itself and runs in an otherwise empty image.
mkdir -p "$out/bin" "$out/libexec"
cp /bin/busybox "$out/libexec/busybox"
printf '#!%s sh\necho "Hello, world!"\n' "$out/libexec/busybox" > "$out/bin/hello"
chmod 555 "$out/bin/hello"
