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
import { Tally, dropUnused, removeFiles, runSteps, sweepRepository } from './gc.js';
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
    this.timer = setInterval(() => this.flush(), FLUSH_MS);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
    this.flush();
  }

  /** A client pulled manifest `digest` of `repo` (a built image, if any build recorded it). */
  pulled(repo: string, digest: string): void {
    this.pending.set(`${repo}\0${digest}`, Date.now());
    if (this.pending.size >= MAX_PENDING) this.flush();
  }

  flush(): void {
    if (!this.pending.size) return;
    const batch = this.pending;
    this.pending = new Map();
    const update = this.core.index.db.prepare(`UPDATE builds SET last_pulled = max(coalesce(last_pulled, 0), ?)
      WHERE repo = ? AND (manifest = ? OR alt_manifest = ?) AND evicted_at IS NULL`);
    try {
      this.core.index.db.transaction(() => {
        for (const [key, t] of batch) {
          const [repo, digest] = key.split('\0') as [string, string];
          update.run(t, repo, digest, digest);
        }
      })();
    } catch {
      // The index cannot be written just now (a full disk): the times are an ordering
      // hint, and a pull that is not recorded only makes its image look older.
    }
  }

  /** Bytes of the blobs that built images use and no pushed repository links. */
  usage(): number {
    return this.core.index.db.prepare<[], { n: number }>(`
      WITH built AS (SELECT r.id FROM repositories r WHERE r.name IN (SELECT repo FROM builds))
      SELECT total(b.size) AS n FROM blobs b
       WHERE (EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.repo_id IN built)
           OR EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest AND m.repo_id IN built)
           OR EXISTS (SELECT 1 FROM layers y WHERE y.digest = b.digest))
         AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.repo_id NOT IN built)
         AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest AND m.repo_id NOT IN built)`).get()!.n;
  }

  /**
   * Evicts the least recently pulled built images until usage is at most `maxBytes`.
   * `keep` (the image whose build just finished, which a client is waiting to pull) is
   * never evicted. The caller runs it under the same one-at-a-time rule as GC.
   */
  async enforce(maxBytes: number, keep?: { repo: string; manifest: string }): Promise<Eviction> {
    this.flush();
    const before = this.usage();
    const out: Eviction = { images: [], blobs: 0, bytes: 0, before, after: before, limit: maxBytes };
    if (before <= maxBytes) return out;
    const db = this.core.index.db;
    const candidates = db.prepare<[], { repo: string; manifest: string }>(
      `SELECT repo, manifest FROM builds WHERE evicted_at IS NULL
        GROUP BY repo, manifest ORDER BY max(coalesce(last_pulled, created_at)) ASC, repo, manifest`).all();
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
    out.after = this.usage();
    return out;
  }

  /**
   * Evicts one built image: its build rows are marked evicted (so a pull of its hash tag
   * can say so), its tags and manifests go, then whatever of its repository no remaining
   * manifest references, and the blobs nothing else uses.
   */
  private async evict(repo: string, manifest: string): Promise<{ blobs: number; bytes: number }> {
    const { index } = this.core;
    const db = index.db;
    const id = index.repoId(repo);
    db.transaction(() => {
      const rows = db.prepare<[string, string], { alt_manifest: string | null }>(
        'SELECT alt_manifest FROM builds WHERE repo = ? AND manifest = ? AND evicted_at IS NULL').all(repo, manifest);
      db.prepare('UPDATE builds SET evicted_at = ? WHERE repo = ? AND manifest = ? AND evicted_at IS NULL').run(Date.now(), repo, manifest);
      if (id === undefined) return;
      for (const d of new Set([manifest, ...rows.map((r) => r.alt_manifest).filter((a): a is string => a !== null)])) {
        // Another build on record may name the same manifest (an ingested archive is
        // filed under two hashes): it goes with the last of them.
        const named = db.prepare<[string, string, string], { n: number }>(
          'SELECT count(*) AS n FROM builds WHERE repo = ? AND evicted_at IS NULL AND (manifest = ? OR alt_manifest = ?)').get(repo, d, d)!.n;
        if (named) continue;
        db.prepare('DELETE FROM tags WHERE repo_id = ? AND digest = ?').run(id, d);
        db.prepare('DELETE FROM manifests WHERE repo_id = ? AND digest = ?').run(id, d);
      }
    })();
    this.core.bump(repo);
    const tally = new Tally();
    if (id !== undefined) {
      // Every manifest still in the repository is live here: old leftovers are GC's.
      const all = () => db.prepare<[number], { digest: string }>('SELECT digest FROM manifests WHERE repo_id = ?').all(id).map((r) => r.digest);
      // No grace: a cache. Whatever was created since the oldest build in progress
      // began is that build's, and whatever since the mark began is spared (mark.ts).
      const mark = await Mark.of(this.core, id, repo, all, 0);
      if (mark) await sweepRepository(this.core, mark, tally);
    }
    await runSteps(this.core, dropUnused(this.core, this.core.heldSince ?? Date.now(), tally), tally);
    await removeFiles(this.core, tally.dropped);
    return { blobs: tally.dropped.length, bytes: tally.dropped.reduce((n, b) => n + b.size, 0) };
  }
}
