// Assembly of a built image: closure → layer groups (layers.ts) → reproducible tar
// (tar.ts) → the chosen compression (compression.ts) → blob store, then config and
// manifests (image.ts) written through Storage exactly like a pushed image.
//
// Sub-room assembly/ owns the bytes of a built image: which store paths share a layer
// (layers.ts), the root filesystem's symlink farm (farm.ts), reproducible tar (tar.ts),
// compression (compression.ts, gzip.ts over the buffers of blocks.ts), the config and
// manifests (image.ts). This module is its entry point. It knows no Nix process: the
// closure comes in, already realised; nor any origin or evaluation.
//
// Each layer is streamed once from the Nix store into a temporary file in the store's
// tmp dir while both digests (diff_id of the tar, digest of what is stored) are computed, and
// committed with Storage.commitFile: nothing is copied to a staging tree, no tarball is
// written to the Nix store, nothing half-written is ever visible. A layer is identified
// by what it contains (TAR_FORMAT, the compression + its sorted store paths, or the ordered contents
// for the root filesystem layer); store paths are immutable, so a key once built is
// reused by every later build and image in any repository without reading the store.
//
// Assembly runs under the build's deadline (an AbortSignal): when it fires, reading
// stops at the next file or chunk, temporary files are removed and no layer row is
// written, so a slow or hostile closure cannot hold a build slot past --build-timeout.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import { createHash, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { LayerRow, Storage } from '../../blobs/storage.js';
import { Digester } from '../../oci/digest.js';
import { parseManifest } from '../../oci/manifest.js';
import { MediaTypes } from '../../oci/media-types.js';
import { BuildError, BuildFailed, InvalidImageSpec } from '../errors.js';
import { closureDocument, storeClosure } from './closure.js';
import { FARM_FORMAT, rootfsEntries } from './farm.js';
import { fileSink } from './blocks.js';
import { compressor, DEFAULT_COMPRESSION, type CompressionSetting } from './compression.js';
import { imageConfig, imageManifest, type LayerDescriptor } from './image.js';
import type { Progress } from '../jobs/jobs.js';
import { groupStorePaths } from './layers.js';
import { storePathEntries, tarStream, type TarEntry } from './tar.js';
import type { BuiltImage, ImageSpec, StorePathInfo } from '../types.js';

/**
 * Names everything that decides a layer's bytes besides its paths and compression: the
 * tar conventions (tar.ts). Bump it when they change, so that old layers are not reused
 * under a new format.
 */
const TAR_FORMAT = 'nixreg-layer-v1 tar(mtime=1,root,hardlinks)';

/**
 * The layer format in a reuse key: tar and compression. A key names what its blob is (a
 * gzip of level N of that tar), not the encoder's exact bytes: any blob filed under it is
 * right to serve. gzip is named as the keys made before the choice existed were, so an
 * upgrade reuses them.
 */
export function layerFormat(c: CompressionSetting): string {
  const packed = c.kind === 'gzip' ? `pgzip(${c.gzipLevel},1MiB)` : 'none';
  return `${TAR_FORMAT} ${packed}`;
}

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
  compression: CompressionSetting;
  paths: string[];
  rootfs: boolean;
  entries: (signal: AbortSignal) => AsyncIterable<TarEntry> | Iterable<TarEntry>;
}

/**
 * A layer build that several assemblies wait for (single flight). It is stopped only
 * when every one of them has given up: one build timing out must not fail another
 * build that shares a layer with it.
 */
interface Flight { done: Promise<LayerRow>; waiters: number; stop: AbortController }

/** Builds of the same layer key already under way, per store. */
const inflight = new Map<string, Flight>();

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
 * the caller will use. When `signal` aborts, assembly stops and rejects with a
 * BuildFailed saying so (a timeout, for AbortSignal.timeout). `progress` learns the
 * layers, store paths and bytes done of the total as they are packed. Layers are
 * compressed as `compression` says.
 */
export async function assembleImage(
  storage: Storage, repo: string, spec: ImageSpec, closure: StorePathInfo[], hash: string,
  stats?: AssembleStats, signal?: AbortSignal, progress?: Progress, compression: CompressionSetting = DEFAULT_COMPRESSION,
): Promise<BuiltImage> {
  if (!Number.isInteger(spec.maxLayers) || spec.maxLayers < 1) {
    throw new InvalidImageSpec(`maxLayers must be a positive integer, not ${String(spec.maxLayers)}`);
  }
  try {
    signal?.throwIfAborted();
    const plans = planLayers(spec, closure, compression);
    const sizes = new Map(closure.map((p) => [p.path, p.narSize]));
    const narBytes = (plan: LayerPlan) => plan.paths.reduce((n, p) => n + (sizes.get(p) ?? 0), 0);
    if (progress) {
      progress.layers = { done: 0, total: plans.length };
      progress.paths = { done: 0, total: sizes.size };
      progress.bytesTotal = [...sizes.values()].reduce((a, b) => a + b, 0);
      progress.bytesFinished = 0;
    }
    const rows = await buildAll(plans, async (p, s) => {
      const row = await layerFor(storage, repo, p, s, stats, progress);
      if (progress) { progress.layers.done++; progress.paths.done += p.paths.length; progress.bytesFinished += narBytes(p); }
      return row;
    }, signal);
    const layers: LayerDescriptor[] = plans.map((p, i) => ({
      digest: rows[i]!.digest, diffId: rows[i]!.diff_id, size: rows[i]!.size, paths: p.paths, rootfs: p.rootfs,
      compression: compression.kind,
    }));

    const configBody = imageConfig(spec, layers);
    const config = await storage.writeBlob(repo, configBody);
    const store = async (body: Buffer, mediaType: string) => storage.putManifest(repo, body, parseManifest(body, mediaType));
    const manifest = await store(imageManifest('oci', config, layers), MediaTypes.ociManifest);
    const alternate = await store(imageManifest('docker', config, layers), MediaTypes.dockerManifest);
    // For the web page (closure.ts): a referrer beside the image, never part of it.
    await storeClosure(storage, repo, manifest, closureDocument(closure, plans.map((p) => p.paths), spec.contents));
    return { hash, manifest, alternate };
  } catch (e) {
    if (signal?.aborted) throw cancelled(repo, signal);
    throw e;
  }
}

function cancelled(repo: string, signal: AbortSignal): BuildError {
  const why: unknown = signal.reason;
  if (why instanceof BuildError) return why;
  return (why as Error | undefined)?.name === 'TimeoutError'
    ? new BuildFailed(`building ${repo} failed: assembling the image timed out (the build ran longer than the server's build timeout)`)
    : new BuildFailed(`building ${repo} failed: assembling the image was cancelled`);
}

function layerKey(format: string, kind: string, items: string[]): string {
  return createHash('sha256').update(`${format}\n${kind}\n${items.join('\n')}`).digest('hex');
}

/** Store-path groups bottom up, then the root filesystem layer (merged when maxLayers is 1). */
function planLayers(spec: ImageSpec, closure: StorePathInfo[], compression: CompressionSetting): LayerPlan[] {
  const format = layerFormat(compression);
  const contents = [...spec.contents];
  const all = [...new Set(closure.map((p) => p.path))].sort();
  // The farm follows links only into the closure, so it depends on the contents, their
  // order and the closure (all immutable store paths), and on how the farm is laid out.
  const farm = (signal: AbortSignal) => rootfsEntries(contents, { closure: all, signal });
  if (spec.maxLayers === 1) {
    return [{
      key: layerKey(format, `single ${FARM_FORMAT}`, [...all, '', ...contents]), paths: all, rootfs: true, compression,
      entries: async function* (signal) { yield* storePathEntries(all, signal); yield* await farm(signal); },
    }];
  }
  const groups = groupStorePaths(closure, spec.maxLayers - 1);
  return [
    ...groups.map((g): LayerPlan => ({
      key: layerKey(format, 'store', g.paths), paths: g.paths, rootfs: false, compression,
      entries: (signal) => storePathEntries(g.paths, signal),
    })),
    {
      key: layerKey(format, `rootfs ${FARM_FORMAT}`, [...contents, '', ...all]), paths: [], rootfs: true, compression,
      entries: async function* (signal) { yield* await farm(signal); },
    },
  ];
}

async function layerFor(
  storage: Storage, repo: string, plan: LayerPlan, signal: AbortSignal, stats?: AssembleStats, progress?: Progress,
): Promise<LayerRow> {
  signal.throwIfAborted();
  const known = await storage.getLayer(plan.key);
  if (known && await storage.linkBlob(repo, known.digest)) {
    if (stats) stats.reused++;
    return known;
  }
  const flightKey = `${storage.root}\0${plan.key}`;
  let flight = inflight.get(flightKey);
  if (!flight) {
    const stop = new AbortController();
    const done = buildLayer(storage, repo, plan, stop.signal, stats, progress).finally(() => { if (inflight.get(flightKey) === f) inflight.delete(flightKey); });
    const f: Flight = { waiters: 0, stop, done };
    inflight.set(flightKey, flight = f);
  }
  const row = await board(flight, flightKey, signal);
  await storage.linkBlob(repo, row.digest);
  return row;
}

/** Waits for `f` until it ends or `signal` aborts; the last waiter to leave stops it. */
function board(f: Flight, key: string, signal: AbortSignal): Promise<LayerRow> {
  f.waiters++;
  return new Promise<LayerRow>((resolve, reject) => {
    let gone = false;
    const leave = () => {
      if (gone) return false;
      gone = true;
      f.waiters--;
      signal.removeEventListener('abort', abort);
      return true;
    };
    const abort = () => {
      if (!leave()) return;
      if (f.waiters > 0) { reject(signal.reason); return; }
      // Nobody wants it any more: stop it, and answer once its temporary file is gone.
      if (inflight.get(key) === f) inflight.delete(key);
      f.stop.abort(signal.reason);
      f.done.then(() => reject(signal.reason), () => reject(signal.reason));
    };
    signal.addEventListener('abort', abort, { once: true });
    f.done.then((row) => { if (leave()) resolve(row); }, (e: unknown) => { if (leave()) reject(e); });
  });
}

async function buildLayer(
  storage: Storage, repo: string, plan: LayerPlan, signal: AbortSignal, stats?: AssembleStats, progress?: Progress,
): Promise<LayerRow> {
  const tmp = join(storage.tmpDir, randomUUID());
  // Opened before anything is streamed, so no open still under way can recreate the file
  // after a cancelled build has removed it.
  const file = await fs.open(tmp, 'wx');
  try {
    const diff = new Digester();
    const packer = compressor(plan.compression);
    // Uncompressed, the stored bytes are the tar: its digest is the diff_id, hashed once.
    const compressed = packer ? new Digester() : diff;
    // Counted where it already is: the digester of the tar knows its bytes.
    progress?.live.add(diff);
    try {
      const stages = packer ? [diff, packer, compressed] : [diff];
      await pipeline([tarStream(plan.entries(signal)), ...stages, fileSink(file)], { signal });
    } finally {
      progress?.live.delete(diff);
    }
    signal.throwIfAborted();
    const row: LayerRow = { digest: compressed.digest(), diff_id: diff.digest(), size: compressed.bytes };
    await storage.commitFile(repo, tmp, row.digest, row.size);
    await storage.putLayer(plan.key, row);
    if (stats) { stats.built++; stats.tarBytes += diff.bytes; }
    return row;
  } finally {
    await file.close().catch(() => {});
    await fs.rm(tmp, { force: true });
  }
}

/**
 * Builds every plan's layer, at most LAYERS_AT_ONCE at a time. The first failure (or
 * `outer` aborting) stops the others, and the call returns only once all have stopped,
 * so that none is still writing a temporary file when the caller reports the failure.
 */
async function buildAll(plans: LayerPlan[], build: (p: LayerPlan, signal: AbortSignal) => Promise<LayerRow>, outer?: AbortSignal): Promise<LayerRow[]> {
  const stop = new AbortController();
  const signal = stop.signal;
  const forward = () => stop.abort(outer!.reason);
  if (outer?.aborted) forward();
  outer?.addEventListener('abort', forward, { once: true });
  const out: LayerRow[] = new Array(plans.length);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (next < plans.length && !signal.aborted) {
      const i = next++;
      try {
        out[i] = await build(plans[i]!, signal);
      } catch (e) {
        failure ??= { error: e };
        stop.abort(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(LAYERS_AT_ONCE, plans.length) }, worker));
  outer?.removeEventListener('abort', forward);
  if (failure) throw failure.error;
  signal.throwIfAborted();
  return out;
}
