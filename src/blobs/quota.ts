// The cache quota of built images (--cache-max-bytes): when the blobs that only built
// images use outgrow it, the images pulled least recently are evicted at once, until
// usage is under the limit again. And the record of when each built image was last
// pulled, which that order needs.
//
// Built images are a cache: any of them can be built again from its expression (or, if
// the expression moved on, is no longer what anyone should get by `latest`). Pushed
// content is not: a blob that any pushed repository links is never counted and never
// removed here, whatever the quota.
//
// Last-pulled times are kept in memory and written in one transaction every few seconds
// (and before every eviction): a manifest GET must not cost a database write.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type { StoreCore } from './core.js';
import { Tally, dropUnused, removeFiles, sweepRepository } from './gc.js';
import { Mark } from './mark.js';

export interface Eviction {
  /** Images evicted (each may have had an OCI and a Docker manifest). */
  images: { repo: string; manifest: string }[];
  blobs: number;
  bytes: number;
  /** Bytes that only built images use, before and after, and the limit. */
  before: number;
  after: number;
  limit: number;
}

const FLUSH_MS = 5_000;
const MAX_PENDING = 10_000;

export class Quota {
  /** repo \0 manifest digest → when it was last pulled. */
  private pending = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly core: StoreCore) {
    this.timer = setInterval(() => { void this.flush(); }, FLUSH_MS);
    this.timer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
  }

  /** A client pulled manifest `digest` of `repo` (a built image, if any build recorded it). */
  pulled(repo: string, digest: string): void {
    this.pending.set(`${repo}\0${digest}`, Date.now());
    if (this.pending.size >= MAX_PENDING) void this.flush();
  }

  async flush(): Promise<void> {
    if (!this.pending.size) return;
    const batch = this.pending;
    this.pending = new Map();
    try {
      await this.core.index.notePulls([...batch].map(([key, at]) => {
        const [repo, digest] = key.split('\0') as [string, string];
        return { repo, digest, at };
      }));
    } catch {
      // The index cannot be written just now (a full disk): the times are an ordering
      // hint, and a pull that is not recorded only makes its image look older.
    }
  }

  /** Bytes of the blobs that built images use and no pushed repository links. */
  usage(): Promise<number> { return this.core.index.builtUsage(); }

  /**
   * Evicts the least recently pulled built images until usage is at most `maxBytes`.
   * `keep` (the image whose build just finished, which a client is waiting to pull) is
   * never evicted. The caller runs it under the same one-at-a-time rule as GC.
   */
  async enforce(maxBytes: number, keep?: { repo: string; manifest: string }): Promise<Eviction> {
    await this.flush();
    const before = await this.usage();
    const out: Eviction = { images: [], blobs: 0, bytes: 0, before, after: before, limit: maxBytes };
    if (before <= maxBytes) return out;
    const candidates = await this.core.index.evictionOrder();
    let usage = before;
    for (const c of candidates) {
      if (usage <= maxBytes) break;
      if (keep && c.repo === keep.repo && c.manifest === keep.manifest) continue;
      const freed = await this.evict(c.repo, c.manifest);
      out.images.push(c);
      out.blobs += freed.blobs;
      out.bytes += freed.bytes;
      usage -= freed.bytes;
    }
    out.after = await this.usage();
    return out;
  }

  /**
   * Evicts one built image: its build rows are marked evicted (so a pull of its hash tag
   * can say so), its tags and manifests go (Index.evictBuild), then whatever of its
   * repository no remaining manifest references, and the blobs nothing else uses.
   */
  private async evict(repo: string, manifest: string): Promise<{ blobs: number; bytes: number }> {
    const { index } = this.core;
    await index.evictBuild(repo, manifest);
    this.core.bump(repo);
    const tally = new Tally();
    const key = await index.repository(repo);
    if (key) {
      // Every manifest still in the repository is live here: old leftovers are GC's.
      // No grace: a cache. Whatever was created since the oldest build in progress
      // began is that build's, and whatever since the mark began is spared (mark.ts).
      const mark = await Mark.of(this.core, key, (s) => s.manifests.map((m) => m.digest), 0);
      if (mark) await sweepRepository(this.core, mark, tally);
    }
    await dropUnused(this.core, this.core.heldSince ?? Date.now(), tally);
    await removeFiles(this.core, tally.dropped);
    return { blobs: tally.dropped.length, bytes: tally.dropped.reduce((n, b) => n + b.size, 0) };
  }
}
