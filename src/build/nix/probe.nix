# The derivation nixreg builds at start to learn whether Nix can build on this machine
# at all (src/build/nix/nix-health.ts). `nonce` makes it new each time, so Nix must really
# build it (build users, sandbox set-up, store locks) instead of finding it valid;
# nothing substitutes it, so no binary cache is asked. Its builder is built into Nix
# (an empty buildEnv), so it needs no program from the host or from nixpkgs and works
# with the sandbox on or off. It is deleted again right after.
{ nonce }:
derivation {
  name = "nixreg-probe";
  system = builtins.currentSystem;
  builder = "builtin:buildenv";
  derivations = "";
  manifest = nonce;
  allowSubstitutes = false;
  preferLocalBuild = true;
}
