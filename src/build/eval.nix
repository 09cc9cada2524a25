# Evaluates one image file for nixreg. Called as
#   nix-instantiate --eval --strict --json --read-write-mode eval.nix --argstr file /abs/path.nix
# The file path arrives as a string argument: nothing from a request is ever spliced into
# Nix source. Returns plain JSON-able data; nixreg validates and reports on it.
{ file }:
let
  layoutVersion = "nixreg-image-v1";

  # Auto-call like nix-build: a function whose arguments all have defaults gets {}.
  imported = import (/. + file);
  required = builtins.filter (n: !(builtins.functionArgs imported).${n}) (builtins.attrNames (builtins.functionArgs imported));
  value =
    if builtins.isFunction imported then
      (if required == [ ] then imported { }
       else throw "${file} is a function with required arguments (${builtins.concatStringsSep ", " required}); give them defaults")
    else imported;

  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  typeOf = v: if isDrv v then "derivation" else builtins.typeOf v;

  kind =
    if isDrv value then "derivation"
    else if builtins.isList value then "list"
    else if builtins.isAttrs value then "spec"
    else throw "${file} must evaluate to an image spec (an attribute set with contents and config), a derivation, or a list of derivations; it evaluated to a ${builtins.typeOf value}";

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

  system = if contents == [ ] then builtins.currentSystem else (builtins.head contents).system or builtins.currentSystem;

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
    inherit system;
    builder = "/nixreg/never-built";
    contents = map (d: d.outPath) contents;
    spec = builtins.toJSON { inherit config name maxLayers created architecture; layout = layoutVersion; };
    inherit configJSON;
  };
in
if unknown != [ ] then throw "unknown image spec attribute(s): ${builtins.concatStringsSep ", " unknown} (allowed: ${builtins.concatStringsSep ", " known})"
else {
  inherit kind keys config configRefs name maxLayers created architecture system;
  configType = typeOf (spec.config or { });
  contents = map (d: { drv = d.drvPath; out = d.outPath; name = d.name; }) contents;
  imagePath = image.outPath;
}
