// The JSON documents of a built image: one config blob, described by an OCI manifest and
// by a Docker schema2 manifest. Both manifests name the same config bytes (the Docker
// and OCI config formats agree on every field we write), so the image ID that clients
// compute from the config is the same whichever manifest they fetch.
//
// Every document is serialised with a fixed key order (and the user's `config` with its
// keys sorted recursively), so equal inputs give byte-identical JSON and digests.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import type { BlobRef } from '../../oci/descriptor.js';
import { MediaTypes } from '../../oci/media-types.js';
import { layerMediaType, type LayerCompression } from './compression.js';
import type { ImageSpec } from '../types.js';

export interface LayerDescriptor {
  digest: string;
  diffId: string;
  size: number;
  /** Store paths in the layer, or empty for the root filesystem layer. */
  paths: string[];
  /** Whether this layer holds the root filesystem (symlink farm and /tmp). */
  rootfs: boolean;
  compression: LayerCompression;
}

/** JSON with object keys sorted at every depth, arrays kept in order. */
export function canonicalJson(v: unknown): string {
  return JSON.stringify(sortKeys(v));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return Object.fromEntries(Object.keys(o).sort().map((k) => [k, sortKeys(o[k])]));
  }
  return v;
}

function historyComment(l: LayerDescriptor): string {
  if (l.rootfs) return l.paths.length ? `root filesystem and ${l.paths.length} store paths: ${l.paths.join(' ')}` : 'root filesystem: links to the contents, /tmp';
  return `${l.paths.length} store path${l.paths.length === 1 ? '' : 's'}: ${l.paths.join(' ')}`;
}

/** The image config (OCI image-spec config.md; also a valid Docker image config). */
export function imageConfig(spec: ImageSpec, layers: LayerDescriptor[]): Buffer {
  // Fixed key order: created, architecture, os, config, rootfs, history (as in the spec).
  const doc = {
    created: spec.created,
    architecture: spec.architecture,
    os: spec.os,
    config: sortKeys(spec.config),
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((l) => ({
      created: spec.created,
      created_by: l.rootfs ? `nixreg: root filesystem of ${spec.name}` : 'nixreg: store paths',
      comment: historyComment(l),
    })),
  };
  return Buffer.from(JSON.stringify(doc));
}

/** The media types of each manifest encoding: the only thing in which the two differ. */
const ENCODINGS = {
  oci: { manifest: MediaTypes.ociManifest, config: MediaTypes.ociConfig },
  docker: { manifest: MediaTypes.dockerManifest, config: MediaTypes.dockerConfig },
} as const;

/**
 * An image manifest over one config blob and its layers: OCI, or Docker schema2 for
 * clients that do not accept OCI. Built images and ingested archives both use it.
 */
export function imageManifest(encoding: keyof typeof ENCODINGS, config: BlobRef, layers: (BlobRef & { compression: LayerCompression })[]): Buffer {
  const t = ENCODINGS[encoding];
  return Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: t.manifest,
    config: { mediaType: t.config, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: layerMediaType(l.compression, encoding), digest: l.digest, size: l.size })),
  }));
}
