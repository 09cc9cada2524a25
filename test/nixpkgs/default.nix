# An offline stand-in for the few parts of nixpkgs that the tests use: `hello`, and
# dockerTools' buildImage, buildLayeredImage and streamLayeredImage. Built from host
# tools only (no nixpkgs, no binary cache), the dockerTools functions produce the same
# archive layout as the real ones in pkgs/build-support/docker: buildImage a gzipped
# `docker save` style tarball with one layer holding the config's closure (plus
# `repositories` and legacy layer json/VERSION files); streamLayeredImage a script that
# writes an uncompressed archive, layers first and manifest.json last; buildLayeredImage
# that stream, gzipped. Needs `sandbox = false` (builders run /bin/sh and host tools).
{ system ? builtins.currentSystem, ... }:
let
  toLower = builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  toList = x: if builtins.isList x then x else if x == null then [ ] else [ x ];

  # A derivation whose builder is a script of this directory, run by the host's /bin/sh.
  script = name: file: env: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-e" file ];
    PATH = "/usr/bin:/bin";
    lib = ./lib.sh;
  } // env);

  writeText = name: text: script name ./write-text.sh { inherit text; };

  # GNU hello's behaviour without a compiler: static busybox runs a two-line script.
  hello = script "hello-2.12.1" ./hello.sh { };

  # The image config that dockerTools writes before layers are known (keys sorted, as
  # builtins.toJSON does in nixpkgs); its references are the closure the image needs.
  baseJson = name: { created, config, architecture }: writeText "${name}-config.json" (builtins.toJSON {
    inherit created architecture;
    config = (if config == null then { } else config) // { Env = (if config == null then [ ] else config.Env or [ ]); };
    preferLocalBuild = true;
    os = "linux";
  });

  # exportReferencesGraph arguments for the closures of `paths`.
  graphs = paths: builtins.concatLists (builtins.genList (i: [ "graph${toString i}" (builtins.elemAt paths i) ]) (builtins.length paths));

  buildImage = { name, tag ? null, config ? null, copyToRoot ? null, contents ? null
    , created ? "1970-01-01T00:00:01Z", architecture ? "amd64", ... }:
    let
      baseName = baseNameOf name;
      roots = toList (if copyToRoot != null then copyToRoot else contents);
      base = baseJson baseName { inherit created config architecture; };
    in script "docker-image-${baseName}.tar.gz" ./build-image.sh {
      imageName = toLower name;
      imageTag = if tag == null then "" else tag;
      inherit roots created;
      baseJson = base;
      exportReferencesGraph = graphs ([ base ] ++ roots);
    };

  streamLayeredImage = { name, tag ? null, contents ? [ ], config ? { }, created ? "1970-01-01T00:00:01Z"
    , architecture ? "amd64", maxLayers ? 100, extraCommands ? "", ... }:
    let
      baseName = baseNameOf name;
      roots = toList contents;
      configJson = writeText "${baseName}-config.json" (builtins.toJSON config);
      customisation = script "${baseName}-customisation-layer" ./customisation-layer.sh {
        inherit roots extraCommands;
      };
    in script "stream-${baseName}" ./stream-layered-image.sh {
      imageName = toLower name;
      imageTag = if tag == null then "" else tag;
      inherit created architecture maxLayers customisation configJson;
      stream = ./stream.sh;
      # The store layers: the closure of the contents and of what the config refers to.
      exportReferencesGraph = graphs ([ configJson ] ++ roots);
    };

  buildLayeredImage = { name, ... } @ args:
    let stream = streamLayeredImage args;
    in script "${baseNameOf name}.tar.gz" ./run-stream.sh { inherit stream; };
in
{
  inherit hello writeText system;
  dockerTools = { inherit buildImage buildLayeredImage streamLayeredImage; };
}
