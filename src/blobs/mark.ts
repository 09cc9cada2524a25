// The mark of garbage collection: what is live in one repository, kept true while the
// repository goes on being written to (gc.ts's header says why and how it is used).
//
// A mark starts from a snapshot of the repository's manifests and roots, taken in one
// synchronous step, and reads the manifest bodies it reaches. Bodies are content-
// addressed and never change, so what a body references, once read, is true for ever;
// only the rows (which manifests exist, what the tags name) move. So a mark is brought up
// to date by taking in the rows written since it last looked (`since`): every manifest
// put, tag moved and build recorded since then is a root, and what it reaches is live.
// Liveness only ever grows in a mark: a row deleted meanwhile leaves its digest marked,
// which can only spare too much until the next run, never too little.
//
// A manifest younger than the cutoff is never swept, so it is a root too: whatever stays
// in a repository keeps what it references, whether or not a tag still leads to it.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { readFileSync } from 'node:fs';
import { parseManifest } from '../oci/manifest.js';
import type { StoreCore } from './core.js';

/** What is live in one repository: manifests and the blobs they reference. */
export interface Live { manifests: Set<string>; blobs: Set<string> }

/** What a manifest body references. */
interface Refs { blobs: string[]; manifests: string[] }

/**
 * Writes stamped this long before the time a mark last looked are looked at again (but
 * never before the cutoff, which would make old manifests roots): a wall clock stepped
 * back by less than this cannot hide a write from it. Taking a write in twice costs a set
 * lookup.
 */
const SKEW_MS = 2_000;
/** Manifest bodies read side by side. */
export const READS_AT_ONCE = 64;

/**
 * Collection is background work and yields to traffic, as a database's vacuum does: while
 * requests are coming, after each piece of work it pauses nineteen times as long as the
 * piece cost (up to half a second), so that it takes about 5 % of the machine from them;
 * with no request coming it only lets the event loop turn. A busy registry collects
 * slowly, an idle one at full speed.
 *
 * A piece costs the longer of its wall time and the CPU the process used meanwhile, all
 * threads counted: 64 file removals or reads side by side run on libuv's threads and can
 * keep both cores busy for the piece's whole wall time. Paced by wall time alone, a
 * collection took 10-20 % of the GET rate in bench/gc, not 5 %. The CPU also counts the
 * requests served during the piece, so this errs on the side of the requests.
 */
const BUSY_PAUSE = 19;
export interface Piece { wall: number; cpu: NodeJS.CpuUsage }
export const piece = (): Piece => ({ wall: performance.now(), cpu: process.cpuUsage() });
export async function pace(core: StoreCore, start: Piece): Promise<void> {
  let wait = 0;
  if (core.busy()) {
    const cpu = process.cpuUsage(start.cpu);
    const took = Math.max(performance.now() - start.wall, (cpu.user + cpu.system) / 1000);
    wait = Math.min(500, took * BUSY_PAUSE);
  }
  await new Promise<void>((r) => (wait < 1 ? setImmediate(r) : setTimeout(r, wait)));
}

/** One repository's mark. */
export class Mark {
  readonly live: Live = { manifests: new Set(), blobs: new Set() };
  /** The repository's manifests (digest → media type), as far as the mark has looked. */
  private readonly rows = new Map<string, string>();
  /** Referrers by subject: they are live while their subject is. */
  private readonly bySubject = new Map<string, string[]>();
  private readonly refs = new Map<string, Refs>();
  /** Writes stamped since (less SKEW_MS) are not yet taken in. */
  private since: number;
  private readonly q;

  /** When the snapshot was taken: nothing written after it is ever swept from this mark. */
  readonly began: number;
  /**
   * Nothing stamped since this goes from the repository, and every manifest stamped since
   * is a root: the grace period before the snapshot, or the start of the oldest build in
   * progress if earlier (core.hold).
   */
  readonly cutoff: number;

  private constructor(private readonly core: StoreCore, readonly id: number, readonly name: string, graceMs: number) {
    const db = core.index.db;
    this.since = this.began = Date.now();
    this.cutoff = Math.min(this.began - graceMs, core.heldSince ?? Infinity);
    this.q = {
      manifests: db.prepare<[number, number], { digest: string; media_type: string; subject: string | null; created_at: number }>(
        'SELECT digest, media_type, subject, created_at FROM manifests WHERE repo_id = ? AND created_at >= ?'),
      tags: db.prepare<[number, number], { digest: string }>('SELECT digest FROM tags WHERE repo_id = ? AND updated_at >= ?'),
      builds: db.prepare<[string, number], { manifest: string; alt_manifest: string | null }>(
        'SELECT manifest, alt_manifest FROM builds WHERE repo = ? AND created_at >= ? AND evicted_at IS NULL'),
      exists: db.prepare<[number, string], { one: number }>('SELECT 1 AS one FROM manifests WHERE repo_id = ? AND digest = ?'),
    };
  }

  /**
   * Marks repository `id` from the roots `roots()` names, read in the same synchronous
   * step as the repository's manifests, sparing what is younger than `graceMs`. Undefined
   * when a manifest body could not be read or parsed: then nothing in the repository may
   * be swept, since a reference missed is a blob lost.
   */
  static async of(core: StoreCore, id: number, name: string, roots: () => string[], graceMs: number): Promise<Mark | undefined> {
    const m = new Mark(core, id, name, graceMs);
    const start = roots();
    for (const r of m.rowsSince(Number.MIN_SAFE_INTEGER)) if (r.created_at >= m.cutoff) start.push(r.digest);
    return (await m.grow(start)) ? m : undefined;
  }

  /**
   * Takes in what was written since the mark last looked, reading the bodies it needs
   * side by side, paced. Outside any transaction, so it may find more written by the
   * time the caller's transaction runs: that one calls `settle`.
   */
  async catchUp(): Promise<boolean> {
    return this.grow(this.writtenSince());
  }

  /**
   * The same as catchUp, within the caller's write transaction, so that nothing can be
   * written between it and the sweep that follows. Bodies still unread are read there
   * and then (files just written, so from the page cache), at most `maxReads` of them:
   * 'more' asks the caller to catch up outside the transaction and come back.
   * 'unreadable': a body could not be read, sweep nothing more here.
   */
  settle(maxReads: number): 'settled' | 'more' | 'unreadable' {
    const now = Date.now();
    const missing = this.reach(this.writtenSince());
    if (missing.length > maxReads) return 'more';
    if (!this.growSync(missing)) return 'unreadable';
    this.since = now;
    return 'settled';
  }

  /** Rows written (stamped) since the mark last looked: the new roots. */
  private writtenSince(): string[] {
    const since = this.since - SKEW_MS;
    return [
      ...this.rowsSince(Math.max(since, this.cutoff)).map((r) => r.digest),
      ...this.q.tags.all(this.id, since).map((r) => r.digest),
      ...this.q.builds.all(this.name, since).flatMap((b) => (b.alt_manifest ? [b.manifest, b.alt_manifest] : [b.manifest])),
    ];
  }

  /** Records the manifests stamped since `since`, and returns them. */
  private rowsSince(since: number) {
    const rows = this.q.manifests.all(this.id, since);
    for (const r of rows) {
      if (!this.rows.has(r.digest) && r.subject !== null) {
        const s = this.bySubject.get(r.subject);
        if (s) s.push(r.digest); else this.bySubject.set(r.subject, [r.digest]);
      }
      this.rows.set(r.digest, r.media_type);
    }
    return rows;
  }

  /**
   * Marks live what `roots` reach through the bodies already read: an index's children,
   * the referrers of anything live, and a live manifest's config and layers. Returns the
   * manifests reached whose bodies are still to be read.
   */
  private reach(roots: string[]): string[] {
    const missing = new Set<string>();
    const queue = roots.slice();
    while (queue.length) {
      const d = queue.pop()!;
      if (this.live.manifests.has(d) || !this.rows.has(d)) continue;
      const r = this.refs.get(d);
      if (!r) { missing.add(d); continue; }
      this.live.manifests.add(d);
      for (const b of r.blobs) this.live.blobs.add(b);
      queue.push(...r.manifests, ...(this.bySubject.get(d) ?? []));
    }
    return [...missing];
  }

  /** reach, reading the bodies it needs side by side (paced) until nothing is missing. */
  private async grow(roots: string[]): Promise<boolean> {
    for (let missing = this.reach(roots); missing.length; missing = this.reach(missing)) {
      for (let i = 0; i < missing.length; i += READS_AT_ONCE) {
        const t0 = piece();
        // Side by side: one at a time, each read would wait a turn of the event loop
        // behind the requests being served, and a large store would take minutes.
        const batch = missing.slice(i, i + READS_AT_ONCE);
        const bodies = await Promise.all(batch.map((d) => this.core.store.read(d).catch(() => undefined)));
        if (!batch.every((d, k) => this.learn(d, bodies[k]))) return false;
        await pace(this.core, t0);
      }
    }
    return true;
  }

  /**
   * The same as grow, reading in this synchronous step (`missing`: what reach returned).
   * Only a store with local files can be read so; on a remote one (S3) the repository is
   * left for the next collection instead, which under pushes that never pause is the
   * starvation this file otherwise ends: a known limit of S3 with the SQLite index.
   */
  private growSync(missing0: string[]): boolean {
    const store = this.core.store;
    for (let missing = missing0; missing.length; missing = this.reach(missing)) {
      if (!store.localPath) return false;
      for (const d of missing) {
        let body: Buffer | undefined;
        try { body = readFileSync(store.localPath(d)); } catch { body = undefined; }
        if (!this.learn(d, body)) return false;
      }
    }
    return true;
  }

  /**
   * Records what manifest `d` references. A body that cannot be read or parsed is fine
   * if the manifest is gone meanwhile (a client deleted it: it is no longer the
   * repository's), and stops the sweep of the repository otherwise.
   */
  private learn(d: string, body: Buffer | undefined): boolean {
    try {
      if (body) {
        const p = parseManifest(body, this.rows.get(d));
        this.refs.set(d, { blobs: p.blobs, manifests: p.manifests });
        return true;
      }
    } catch { /* below */ }
    if (this.q.exists.get(this.id, d)) return false;
    this.rows.delete(d);
    return true;
  }
}
