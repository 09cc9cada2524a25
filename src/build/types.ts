// Shared shapes of the build pipeline (source.ts walks it):
// name → origin (origins/) → evaluation (evaluate.ts) → realisation (builder.ts over
// nix/) → assembly (assembly/, or ingest/) → record (record.ts).
//
// Room: build, shared by all of it: imports nothing else of build. May import src/blobs and src/oci;
// never src/registry.
import type { Descriptor } from '../oci/descriptor.js';

/** One store path of a closure, as `nix-store --query` reports it. */
export interface StorePathInfo {
  path: string;
  /** NAR size in bytes: the size-first layering sorts on this. */
  narSize: number;
  /** Store paths this path references (may include itself). */
  references: string[];
}

/** An image spec after evaluation and realisation: everything assembly needs. */
export interface ImageSpec {
  /** Image name, for the config's history and annotations. */
  name: string;
  /** Realised store paths of `contents` (the roots linked into / by the top layer). */
  contents: string[];
  /** OCI image config's `config` object (Cmd, Entrypoint, Env, …), already validated. */
  config: Record<string, unknown>;
  /** Upper bound on layers, including the top (root filesystem) layer. */
  maxLayers: number;
  /** RFC 3339 creation time (default 1970-01-01T00:00:01Z). */
  created: string;
  /** OCI architecture and os, e.g. amd64 / linux (mapped from the Nix system). */
  architecture: string;
  os: string;
}

/** What a finished build leaves in the blob store for one image. */
export interface BuiltImage {
  /** The image tag: the 32-character Nix base32 hash part of the image's store path. */
  hash: string;
  /** The OCI manifest (or, for ingested Docker archives, the Docker schema2 manifest). */
  manifest: Descriptor;
  /** A second encoding of the same image for clients that do not accept the first, if any. */
  alternate?: Descriptor | undefined;
}
