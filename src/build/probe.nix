# The derivation nixreg builds at start to learn whether Nix can build on this machine
# at all (src/build/nix-health.ts). `nonce` makes it new each time, so Nix must really
# build it (build users, sandbox, store locks) instead of finding it valid; nothing
# substitutes it, so no binary cache is asked. It is deleted again right after.
{ nonce }:
derivation {
  name = "nixreg-probe";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo ${nonce} > $out" ];
  allowSubstitutes = false;
  preferLocalBuild = true;
}
