# Evaluates one image for nixreg, from one of three origins (src/build/origins/origins.ts):
#   an image file:   --argstr file /abs/path.nix
#   a flake output:  --argstr flake /abs/dir --argstr attr NAME  (packages.<system>.NAME,
#                    else legacyPackages.<system>.NAME; needs the flakes feature)
#   a package list:  --argstr packages SOURCE-KIND --argstr source SOURCE [--argstr rev COMMIT]
#                    --argstr names '["git","python3packages.flask"]' [--argstr shell 1]
# called as nix-instantiate --eval --strict --json --read-write-mode eval.nix ARGS.
# Every value arrives as a string argument (lists as JSON text): nothing from a request
# is ever spliced into Nix source. Returns plain JSON-able data; nixreg validates and
# reports on it. An origin that does not have the image (a flake without the output, a
# package set without a name) returns { missing = …; } instead of failing with a trace.
#   a flake's output names (for routing): --argstr flake /abs/dir --argstr list 1
{ file ? "", flake ? "", attr ? "", list ? "", packages ? "", source ? "", rev ? "", names ? "[]", shell ? "" }:
let
  layoutVersion = "nixreg-image-v1";

  # Auto-call like nix-build: a function whose arguments all have defaults gets {}.
  autoCall = what: imported:
    let required = builtins.filter (n: !(builtins.functionArgs imported).${n}) (builtins.attrNames (builtins.functionArgs imported));
    in if builtins.isFunction imported then
      (if required == [ ] then imported { }
       else throw "${what} is a function with required arguments (${builtins.concatStringsSep ", " required}); give them defaults")
    else imported;

  system = builtins.currentSystem;

  # A flake's output NAME for this system, or null.
  flakeOutputs = (builtins.getFlake ("path:" + flake)).outputs or { };
  flakePkgs = (flakeOutputs.packages or { }).${system} or { };
  flakeLegacy = (flakeOutputs.legacyPackages or { }).${system} or { };
  flakeValue =
    if builtins.hasAttr attr flakePkgs then flakePkgs.${attr}
    else if builtins.hasAttr attr flakeLegacy then flakeLegacy.${attr}
    else null;

  # The package set, as the SOURCE-KIND says where it comes from.
  pkgSet =
    if packages == "path" then autoCall source (import (/. + source))
    else if packages == "nixpath" then autoCall "<${source}>" (import (builtins.findFile builtins.nixPath source))
    else if packages == "git" then autoCall source (import (builtins.fetchGit ({ url = source; allRefs = true; } // (if rev == "" then { } else { inherit rev; }))))
    else throw "unknown package source kind ${packages}";

  # An attribute path of lower-case names (registry names have no capitals) in `set`:
  # each part as it is, else the attribute whose name is the same in lower case.
  lower = s: builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ] s;
  pick = set: part:
    if builtins.hasAttr part set then { found = true; value = set.${part}; }
    else
      let same = builtins.filter (n: lower n == part) (builtins.attrNames set);
      in if same == [ ] then { found = false; } else { found = true; value = set.${builtins.head same}; };
  # { value } or { missing; near }: `near` are the names beside the missing part that
  # share its first letter (nixreg picks the closest of them).
  lookup = name:
    let
      go = set: parts: done:
        if parts == [ ] then { value = set; }
        else if !builtins.isAttrs set then { missing = done; near = [ ]; }
        else
          let p = builtins.head parts; r = pick set p;
          in if r.found then go r.value (builtins.tail parts) (done ++ [ p ])
          else {
            missing = builtins.concatStringsSep "." (done ++ [ p ]);
            near = builtins.filter (n: builtins.substring 0 1 (lower n) == builtins.substring 0 1 p) (builtins.attrNames set);
          };
    in go pkgSet (builtins.filter builtins.isString (builtins.split "\\." name)) [ ];
  requested = builtins.fromJSON names;
  shellNames = builtins.filter (n: builtins.hasAttr n pkgSet) [ "bashInteractive" "coreutils" "moreutils" "nano" ];
  found = map (n: { name = n; r = lookup n; }) requested;
  missingPkgs = builtins.filter (x: !(x.r ? value)) found;
  listContents = (if shell == "" then [ ] else map (n: pkgSet.${n}) shellNames) ++ map (x: x.r.value) found;

  missing =
    if flake != "" then (if flakeValue == null then { output = attr; } else null)
    else if packages != "" then (if missingPkgs == [ ] then null else { packages = map (x: { name = x.name; part = x.r.missing; near = x.r.near; }) missingPkgs; })
    else null;

  value =
    if flake != "" then flakeValue
    else if packages != "" then {
      contents = listContents;
      name = builtins.concatStringsSep "/" ((if shell == "" then [ ] else [ "shell" ]) ++ requested);
      config = if shell != "" && builtins.elem "bashInteractive" shellNames then { Cmd = [ "bash" ]; } else { };
    }
    else autoCall file (import (/. + file));
  what = if flake != "" then "the flake output ${attr}" else if packages != "" then "the package list" else file;

  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  typeOf = v: if isDrv v then "derivation" else builtins.typeOf v;

  kind =
    if isDrv value then "derivation"
    else if builtins.isList value then "list"
    else if builtins.isAttrs value then "spec"
    else throw "${what} must evaluate to an image spec (an attribute set with contents and config), a derivation, or a list of derivations; it evaluated to a ${builtins.typeOf value}";

  spec = if kind == "spec" then value else { contents = if kind == "list" then value else [ value ]; };
  keys = builtins.attrNames spec;
  known = [ "contents" "config" "name" "maxLayers" "created" "architecture" ];
  unknown = builtins.filter (k: !(builtins.elem k known)) keys;

  contentsRaw = spec.contents or [ ];
  contents =
    if !builtins.isList contentsRaw then throw "contents must be a list of derivations, got a ${typeOf contentsRaw}"
    else builtins.genList (i:
      let d = builtins.elemAt contentsRaw i; in
      if isDrv d then d
      else throw "contents[${toString i}] must be a derivation, got a ${typeOf d}") (builtins.length contentsRaw);

  imageSystem = if contents == [ ] then system else (builtins.head contents).system or system;

  # Plain data only: derivations inside config become their out paths (as in toJSON).
  # The store paths config mentions (Cmd = [ "${hello}/bin/hello" ]) join the closure,
  # as in dockerTools, so they are listed from the string's context.
  configJSON = builtins.toJSON (spec.config or { });
  config = builtins.fromJSON (builtins.unsafeDiscardStringContext configJSON);
  configRefs = builtins.attrNames (builtins.getContext configJSON);
  name = spec.name or (if contents == [ ] then "image" else (builtins.head contents).name or "image");
  maxLayers = spec.maxLayers or 100;
  created = spec.created or "1970-01-01T00:00:01Z";
  architecture = spec.architecture or null;

  # The image's identity: a derivation that is never built, whose inputs are the contents
  # and the canonical JSON of everything else that shapes the image. Nix hashes it, so the
  # tag is the same on every machine and changes with any input.
  image = derivation {
    name = "nixreg-image";
    system = imageSystem;
    builder = "/nixreg/never-built";
    contents = map (d: d.outPath) contents;
    spec = builtins.toJSON { inherit config name maxLayers created architecture; layout = layoutVersion; };
    inherit configJSON;
  };
in
if flake != "" && list != "" then { outputs = builtins.attrNames flakePkgs ++ builtins.attrNames flakeLegacy; }
else if missing != null then { inherit missing; }
else if unknown != [ ] then throw "unknown image spec attribute(s): ${builtins.concatStringsSep ", " unknown} (allowed: ${builtins.concatStringsSep ", " known})"
else {
  inherit kind keys config configRefs name maxLayers created architecture;
  system = imageSystem;
  configType = typeOf (spec.config or { });
  contents = map (d: { drv = d.drvPath; out = d.outPath; name = d.name; }) contents;
  imagePath = image.outPath;
}
