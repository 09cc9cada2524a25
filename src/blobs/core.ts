// What the parts of storage share: the layout, the index, the blob store (store/), the
// per-digest locks and the per-repository generations that invalidate caches.
// Owns no policy; blob files, uploads and manifests (files.ts, uploads.ts, manifests.ts)
// each build on it.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';
import { LRUCache } from 'lru-cache';
import type { Index } from './index/index.js';
import type { BlobStore } from './store/blob-store.js';
import type { Layout } from './layout.js';
import { StorageFull, noSpaceCode } from './errors.js';
import { KeyedLock } from './lock.js';

export class StoreCore {
  readonly locks: KeyedLock;
  /**
   * A generation per repository that every write or delete in it bumps: caches key
   * their entries by it, so invalidation is per repository and O(1). Bounded, so that a
   * client touching endless names cannot grow it: a repository whose entry is evicted
   * reads as `floor`, a value newer than any its cached entries were keyed with, so an
   * eviction can cost cache hits but never serve a stale entry.
   */
  private counter = 0;
  private floor = 0;
  private readonly generations = new LRUCache<string, number>({
    max: 10_000,
    dispose: (_v, _k, reason) => { if (reason === 'evict') this.floor = ++this.counter; },
  });

  constructor(readonly layout: Layout, readonly index: Index, readonly store: BlobStore) {
    this.locks = new KeyedLock(index.withDigestLock?.bind(index));
  }

  generation(repo: string): number {
    return this.generations.get(repo) ?? this.floor;
  }

  bump(repo: string): void {
    this.generations.set(repo, ++this.counter);
  }

  /** Whether requests are being served now (set by the server): background work yields to them. */
  busy: () => boolean = () => false;

  /** Repositories whose generation is remembered (for stats and the bound's test). */
  get trackedRepositories(): number { return this.generations.size; }

  /** When a write last found no space (ms since the epoch), for readiness checks. */
  lastFull: number | undefined;

  /**
   * `err` as StorageFull when it says that the disk or the index is out of space
   * (`what` completes "no space left to …"); any other error as it is.
   */
  noSpace(err: unknown, what: string): unknown {
    const reason = noSpaceCode(err);
    if (reason === undefined) return err;
    this.lastFull = Date.now();
    return err instanceof StorageFull ? err : new StorageFull(what, reason);
  }

  /**
   * Blob links a client has just looked at (HEAD or GET). `docker push` HEADs each layer
   * and skips the upload of those the repository has, then pushes the manifest: garbage
   * collection must not take such a link in between, however old it is. In memory and
   * bounded: what is evicted from it is only less protected, and the grace period of the
   * links themselves still applies.
   */
  private readonly seen = new LRUCache<string, number>({ max: 100_000 });
  touch(repo: string, digest: string): void { this.seen.set(`${repo}\0${digest}`, Date.now()); }
  seenSince(repo: string, digest: string, since: number): boolean { return (this.seen.get(`${repo}\0${digest}`) ?? 0) >= since; }

  /**
   * Work in progress (image builds) that is linking blobs it has not yet referenced from
   * a manifest. Everything created or linked since the oldest of them began is spared
   * by garbage collection and by the cache quota.
   */
  private readonly holds = new Map<symbol, number>();
  hold(): () => void {
    const key = Symbol('hold');
    this.holds.set(key, Date.now());
    return () => { this.holds.delete(key); };
  }
  /** The start of the oldest hold, or undefined when nothing is held. */
  get heldSince(): number | undefined {
    let min: number | undefined;
    for (const t of this.holds.values()) if (min === undefined || t < min) min = t;
    return min;
  }
}

export async function readdirSafe(dir: string): Promise<string[]> {
  try { return await fs.readdir(dir); } catch { return []; }
}

/**
 * mkdir -p, one level at a time, returning the directories it created (outermost
 * first). Not Node's recursive mkdir: after any failure other than ENOENT that one
 * stats the path and reports what stat says, so a directory it could not create for
 * lack of space comes back as ENOENT, and a full disk would look like a bug.
 */
export async function makeDir(dir: string): Promise<string[]> {
  try {
    await fs.mkdir(dir);
    return [dir];
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return [];
    if (code !== 'ENOENT' || dirname(dir) === dir) throw e;
  }
  const made = await makeDir(dirname(dir));
  try {
    await fs.mkdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return made;
    throw e;
  }
  return [...made, dir];
}

/** Removes the entries of `dir` not modified for `ageMs` (temporary files a process that died left). */
export async function removeOlder(dir: string, ageMs: number): Promise<void> {
  for (const e of await fs.readdir(dir).catch(() => [] as string[])) {
    const p = `${dir}/${e}`;
    const st = await fs.stat(p).catch(() => undefined);
    if (st && st.mtimeMs < Date.now() - ageMs) await fs.rm(p, { recursive: true, force: true }).catch(() => {});
  }
}
