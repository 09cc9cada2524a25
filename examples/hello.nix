# The quick-start image: `docker pull localhost:5000/hello:latest`, then
# `docker run --rm localhost:5000/hello:latest`.
#
# It needs no nixpkgs: its one package copies the host's static busybox into the Nix
# store (Debian: apt-get install busybox-static). With nixpkgs you would write
# `contents = [ pkgs.busybox ];` instead.
let
  busybox = derivation {
    name = "busybox";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" "mkdir -p $out/bin && cp /bin/busybox $out/bin/busybox && ln -s busybox $out/bin/sh" ];
  };
in
{
  name = "hello";
  contents = [ busybox ];
  config = {
    Cmd = [ "/bin/busybox" "echo" "Hello from an image Nix built on pull!" ];
    Env = [ "PATH=/bin" ];
    Labels = { "org.opencontainers.image.source" = "examples/hello.nix"; };
  };
}
