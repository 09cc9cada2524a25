// The closure record of a built image: which store path is in which layer, its NAR size
// and what it references, filed as an OCI referrer of the image manifest (artifactType
// MediaTypes.nixregClosure). As a referrer it needs no schema of its own, lives and dies
// with its image (garbage collection takes referrers with their subject), is seen by
// every replica sharing the storage, and is read only by the web page and its API: a pull
// never touches it. The image's own manifests, config and digests are untouched by it.
//
// The document is deterministic (paths in byte order, references as sorted indices into
// them), so a rebuild of the same image writes the same referrer, and bounded: past
// MAX_BYTES references are left out, and past that nothing is recorded.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import type { Storage } from '../../blobs/storage.js';
import type { Descriptor } from '../../oci/descriptor.js';
import { parseManifest } from '../../oci/manifest.js';
import { MediaTypes } from '../../oci/media-types.js';
import type { StorePathInfo } from '../types.js';

/** The largest closure document written: 16 MiB holds ~100,000 paths with their references. */
export const MAX_BYTES = 16 * 1024 * 1024;

export interface ClosurePath {
  path: string;
  narSize: number;
  /** Index of the manifest layer that holds the path. */
  layer: number;
  /** Indices (into `paths`) of the paths it references, itself excluded. */
  references?: number[];
}

export interface ClosureDocument {
  schemaVersion: 1;
  /** Indices of the image's contents: the top of the closure, where why-chains start. */
  roots: number[];
  /** Per manifest layer, in order: its store paths' count and NAR bytes (the root filesystem layer has none). */
  layers: { paths: number; narSize: number }[];
  paths: ClosurePath[];
  /** True when the references were left out to stay within MAX_BYTES. */
  referencesOmitted?: boolean;
}

const byBytes = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The document for `closure` laid out as `layerPaths` (per manifest layer) with `contents` at the top. */
export function closureDocument(closure: StorePathInfo[], layerPaths: string[][], contents: string[]): ClosureDocument {
  const info = new Map<string, StorePathInfo>();
  for (const p of closure) if (!info.has(p.path)) info.set(p.path, p);
  const names = [...info.keys()].sort(byBytes);
  const index = new Map(names.map((p, i) => [p, i]));
  const layerOf = new Map<string, number>();
  layerPaths.forEach((paths, i) => { for (const p of paths) layerOf.set(p, i); });
  const paths = names.map((p): ClosurePath => {
    const refs = info.get(p)!.references.map((r) => index.get(r)).filter((i): i is number => i !== undefined && names[i] !== p);
    return { path: p, narSize: info.get(p)!.narSize, layer: layerOf.get(p) ?? layerPaths.length - 1, references: [...new Set(refs)].sort((a, b) => a - b) };
  });
  const roots = [...new Set(contents.map((c) => index.get(c)).filter((i): i is number => i !== undefined))].sort((a, b) => a - b);
  const layers = layerPaths.map((ps) => ({ paths: ps.length, narSize: ps.reduce((n, p) => n + (info.get(p)?.narSize ?? 0), 0) }));
  return { schemaVersion: 1, roots, layers, paths };
}

/** The document's bytes within MAX_BYTES, dropping references if need be; undefined if even that is too big. */
export function closureBytes(doc: ClosureDocument): Buffer | undefined {
  let body = Buffer.from(JSON.stringify(doc));
  if (body.length <= MAX_BYTES) return body;
  body = Buffer.from(JSON.stringify({ ...doc, paths: doc.paths.map(({ references: _, ...p }) => p), referencesOmitted: true }));
  return body.length <= MAX_BYTES ? body : undefined;
}

const EMPTY = Buffer.from('{}');

/** Stores `doc` as a referrer of `subject` (an image manifest of `repo`); returns it, or undefined if too big to record. */
export async function storeClosure(storage: Storage, repo: string, subject: Descriptor, doc: ClosureDocument): Promise<Descriptor | undefined> {
  const body = closureBytes(doc);
  if (!body) return undefined;
  const blob = await storage.writeBlob(repo, body);
  const empty = await storage.writeBlob(repo, EMPTY);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    artifactType: MediaTypes.nixregClosure,
    config: { mediaType: MediaTypes.ociEmpty, digest: empty.digest, size: empty.size },
    layers: [{ mediaType: MediaTypes.nixregClosure, digest: blob.digest, size: blob.size }],
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
  }));
  return storage.putManifest(repo, manifest, parseManifest(manifest, MediaTypes.ociManifest));
}
