// Assembly of a built image: closure → layer groups (layers.ts) → reproducible tar
// (tar.ts) → parallel gzip (gzip.ts) → blob store, then config and manifests (image.ts)
// written through Storage exactly like a pushed image.
//
// Each layer is streamed once from the Nix store into a temporary file in the store's
// tmp dir while both digests (diff_id of the tar, digest of the gzip) are computed, and
// committed with Storage.commitFile: nothing is copied to a staging tree, no tarball is
// written to the Nix store, nothing half-written is ever visible. A layer is identified
// by what it contains (LAYER_FORMAT + its sorted store paths, or the ordered contents
// for the root filesystem layer); store paths are immutable, so a key once built is
// reused by every later build and image in any repository without reading the store.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { LayerRow } from '../blobs/index.js';
import type { Storage } from '../blobs/storage.js';
import { Digester } from '../oci/digest.js';
import { parseManifest } from '../oci/manifest.js';
import { MediaTypes } from '../oci/media-types.js';
import { InvalidImageSpec } from './errors.js';
import { ParallelGzip } from './gzip.js';
import { imageConfig, imageManifest, type LayerDescriptor } from './image.js';
import { FARM_FORMAT, rootfsEntries } from './farm.js';
import { groupStorePaths } from './layers.js';
import { storePathEntries, tarStream, type TarEntry } from './tar.js';
import type { BuiltImage, ImageSpec, StorePathInfo } from './types.js';

/**
 * Names everything that decides a layer's bytes besides its paths: tar conventions
 * (tar.ts), the gzip block scheme (gzip.ts). Bump it when either changes, so that old
 * layers are not reused under a new format.
 */
export const LAYER_FORMAT = 'nixreg-layer-v1 tar(mtime=1,root,hardlinks) pgzip(6,1MiB)';

/**
 * Layers built at once. Each layer stream already compresses on all cores (gzip.ts, whose
 * global slots also bound memory), but a layer's last block, its file reads and the fsync
 * of its commit are serial; other layers' blocks fill those gaps (most layers of a real
 * closure are a few MB, a handful of blocks).
 */
const LAYERS_AT_ONCE = Math.min(Math.max(4, availableParallelism()), 8);

/** What one layer is made of, before it is built. */
interface LayerPlan {
  key: string;
  paths: string[];
  rootfs: boolean;
  entries: () => AsyncIterable<TarEntry> | Iterable<TarEntry>;
}

/** Builds of the same layer key already under way, per store (single flight). */
const inflight = new Map<string, Promise<LayerRow>>();

export interface AssembleStats {
  /** Layers built in this call (the rest were reused). */
  built: number;
  reused: number;
  /** Uncompressed bytes written by this call. */
  tarBytes: number;
}

/**
 * Lays out `closure` as image layers, stores them (reusing any layer already built for
 * the same set of store paths) and stores an OCI manifest plus a Docker schema2
 * manifest of the image in `repo`, untagged. `hash` is passed through as the image tag
 * the caller will use.
 */
export async function assembleImage(
  storage: Storage, repo: string, spec: ImageSpec, closure: StorePathInfo[], hash: string,
  stats?: AssembleStats,
): Promise<BuiltImage> {
  if (!Number.isInteger(spec.maxLayers) || spec.maxLayers < 1) {
    throw new InvalidImageSpec(`maxLayers must be a positive integer, not ${String(spec.maxLayers)}`);
  }
  const plans = planLayers(spec, closure);
  const rows = await mapLimited(plans, LAYERS_AT_ONCE, (p) => layerFor(storage, repo, p, stats));
  const layers: LayerDescriptor[] = plans.map((p, i) => ({
    digest: rows[i]!.digest, diffId: rows[i]!.diff_id, size: rows[i]!.size, paths: p.paths, rootfs: p.rootfs,
  }));

  const configBody = imageConfig(spec, layers);
  const config = await storage.writeBlob(repo, configBody);
  const store = async (body: Buffer, mediaType: string) => storage.putManifest(repo, body, parseManifest(body, mediaType));
  const manifest = await store(imageManifest('oci', config, layers), MediaTypes.ociManifest);
  const alternate = await store(imageManifest('docker', config, layers), MediaTypes.dockerManifest);
  return { hash, manifest, alternate };
}

function layerKey(kind: string, items: string[]): string {
  return createHash('sha256').update(`${LAYER_FORMAT}\n${kind}\n${items.join('\n')}`).digest('hex');
}

/** Store-path groups bottom up, then the root filesystem layer (merged when maxLayers is 1). */
function planLayers(spec: ImageSpec, closure: StorePathInfo[]): LayerPlan[] {
  const contents = [...spec.contents];
  const all = [...new Set(closure.map((p) => p.path))].sort();
  // The farm follows links only into the closure, so it depends on the contents, their
  // order and the closure (all immutable store paths), and on how the farm is laid out.
  const farm = () => rootfsEntries(contents, { closure: all });
  if (spec.maxLayers === 1) {
    return [{
      key: layerKey(`single ${FARM_FORMAT}`, [...all, '', ...contents]), paths: all, rootfs: true,
      entries: async function* () { yield* storePathEntries(all); yield* await farm(); },
    }];
  }
  const groups = groupStorePaths(closure, spec.maxLayers - 1);
  return [
    ...groups.map((g): LayerPlan => ({
      key: layerKey('store', g.paths), paths: g.paths, rootfs: false, entries: () => storePathEntries(g.paths),
    })),
    {
      key: layerKey(`rootfs ${FARM_FORMAT}`, [...contents, '', ...all]), paths: [], rootfs: true,
      entries: async function* () { yield* await farm(); },
    },
  ];
}

async function layerFor(storage: Storage, repo: string, plan: LayerPlan, stats?: AssembleStats): Promise<LayerRow> {
  const known = storage.index.getLayer(plan.key);
  if (known && storage.index.linkBlob(repo, known.digest)) {
    if (stats) stats.reused++;
    return known;
  }
  const flightKey = `${storage.layout.root}\0${plan.key}`;
  let p = inflight.get(flightKey);
  if (!p) {
    p = buildLayer(storage, repo, plan, stats).finally(() => inflight.delete(flightKey));
    inflight.set(flightKey, p);
    return p;
  }
  const row = await p;
  storage.index.linkBlob(repo, row.digest);
  return row;
}

async function buildLayer(storage: Storage, repo: string, plan: LayerPlan, stats?: AssembleStats): Promise<LayerRow> {
  const tmp = join(storage.layout.tmpDir, randomUUID());
  try {
    const diff = new Digester();
    const compressed = new Digester();
    await pipeline(tarStream(plan.entries()), diff, new ParallelGzip(6), compressed, createWriteStream(tmp));
    const row: LayerRow = { digest: compressed.digest(), diff_id: diff.digest(), size: compressed.bytes };
    await storage.commitFile(repo, tmp, row.digest, row.size);
    storage.index.putLayer(plan.key, row);
    if (stats) { stats.built++; stats.tarBytes += diff.bytes; }
    return row;
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/** Like Promise.all over `items`, with at most `limit` calls of `fn` running at once. */
async function mapLimited<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
