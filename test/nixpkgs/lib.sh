# Shared by the builders here (passed to each as $lib).
export SOURCE_DATE_EPOCH=315532800
# Reproducible tar flags, as nixpkgs' dockerTools uses them.
TARFLAGS="--sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner --hard-dereference"

# Prints the store paths of every graph* file (exportReferencesGraph format: path,
# deriver, reference count, references), sorted and without duplicates.
closure() {
  awk 'state == 0 { print; state = 1; next }
       state == 1 { state = 2; next }
       state == 2 { n = $0 + 0; state = (n > 0) ? 3 : 0; next }
       state == 3 { if (--n == 0) state = 0 }' graph* | sort -u
}

# tar of /nix, /nix/store (so that they are readable in the image) and of the store
# paths given on stdin, appended to the layer tar $1.
append_store_paths() {
  mkdir -p nixroot/nix/store
  chmod 555 nixroot/nix/store nixroot/nix
  tar -C nixroot $TARFLAGS --no-recursion -rf "$1" nix nix/store
  sed 's|^/||' | tar -C / $TARFLAGS -rf "$1" --verbatim-files-from -T -
}
