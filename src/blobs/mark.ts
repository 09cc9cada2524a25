// The mark of garbage collection: what is live in one repository, kept true while the
// repository goes on being written to (gc.ts's header says why and how it is used).
//
// A mark starts from a snapshot of the repository's manifests and roots, taken as of one
// moment (Index.repoSnapshot), and reads the manifest bodies it reaches. Bodies are content-
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
import type { ManifestStamp, RepoKey, RepoSnapshot, RepoWrites, SweepMark, WritesSince } from './index/index.js';

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

/**
 * One repository's mark. It is the SweepMark of index.ts: the index's sweepStep runs its
 * takeIn, readNow or read, and caughtUp inside the step's transaction.
 */
export class Mark implements SweepMark {
  readonly live: Live = { manifests: new Set(), blobs: new Set() };
  /** The repository's manifests (digest → media type), as far as the mark has looked. */
  private readonly rows = new Map<string, string>();
  /** Referrers by subject: they are live while their subject is. */
  private readonly bySubject = new Map<string, string[]>();
  private readonly refs = new Map<string, Refs>();
  /**
   * Manifests reached whose bodies a step within a transaction did not read (it gave
   * way, or could not read one there): catchUp reads them outside.
   */
  private readonly unread = new Set<string>();
  /** Writes stamped since (less SKEW_MS) are not yet taken in. */
  private since: number;

  /** When the snapshot was taken: nothing written after it is ever swept from this mark. */
  readonly began: number;
  /**
   * Nothing stamped since this goes from the repository, and every manifest stamped since
   * is a root: the grace period before the snapshot, or the start of the oldest build in
   * progress if earlier (core.hold).
   */
  readonly cutoff: number;

  private constructor(private readonly core: StoreCore, readonly repo: RepoKey, asOf: number, graceMs: number) {
    this.since = this.began = asOf;
    this.cutoff = Math.min(this.began - graceMs, core.heldSince ?? Infinity);
  }

  get id(): number { return this.repo.id; }
  get name(): string { return this.repo.name; }

  /**
   * Marks `repo` from the roots `roots` names in its snapshot (read as of one moment with
   * the repository's manifests), sparing what is younger than `graceMs`. Undefined when
   * a manifest body could not be read or parsed: then nothing in the repository may be
   * swept, since a reference missed is a blob lost.
   */
  static async of(core: StoreCore, repo: RepoKey, roots: (s: RepoSnapshot) => string[], graceMs: number): Promise<Mark | undefined> {
    const snapshot = await core.index.repoSnapshot(repo);
    const m = new Mark(core, repo, snapshot.asOf, graceMs);
    const start = roots(snapshot);
    for (const r of m.record(snapshot.manifests)) if (r.created_at >= m.cutoff) start.push(r.digest);
    return (await m.grow(start, true)) ? m : undefined;
  }

  /**
   * Takes in what was written since the mark last looked, reading the bodies it needs
   * side by side, paced. Outside any transaction, so it may find more written by the
   * time the caller's sweep step runs: that one takes in the rest (sweepStep).
   */
  async catchUp(): Promise<boolean> {
    const w = await this.core.index.repoWrites(this.repo, this.wants());
    const ok = await this.grow([...this.newRoots(w), ...this.unread], true);
    if (ok) this.unread.clear();
    return ok;
  }

  wants(): WritesSince {
    const since = this.since - SKEW_MS;
    return { manifests: Math.max(since, this.cutoff), others: since };
  }

  takeIn(writes: RepoWrites): string[] {
    const missing = this.reach(this.newRoots(writes));
    for (const d of missing) this.unread.add(d);
    return missing;
  }

  /**
   * Reads within the caller's transaction (files just written, so from the page cache).
   * Only a store with local files can be read so; on a remote one (S3) the repository is
   * left for the next collection instead, which under pushes that never pause is the
   * starvation gc.ts otherwise ends: a known limit of S3 with the SQLite index.
   */
  readNow(missing0: string[]): 'read' | 'more' | 'unreadable' {
    const store = this.core.store;
    for (let missing = missing0; missing.length; missing = this.reach(missing)) {
      if (!store.localPath) return 'unreadable';
      for (const d of missing) {
        let body: Buffer | undefined;
        try { body = readFileSync(store.localPath(d)); } catch { body = undefined; }
        // Perhaps deleted meanwhile, which only a look at the index can tell: outside.
        if (!this.parse(d, body)) { this.unread.add(d); return 'more'; }
      }
    }
    return 'read';
  }

  read(missing: string[]): Promise<boolean> { return this.grow(missing, false); }

  caughtUp(asOf: number): void {
    this.since = asOf;
    this.unread.clear();
  }

  keepsManifest(digest: string): boolean { return this.live.manifests.has(digest); }

  keepsLink(digest: string): boolean {
    return this.live.blobs.has(digest) || this.live.manifests.has(digest) || this.core.seenSince(this.repo.name, digest, this.cutoff);
  }

  /** The roots that writes bring: manifests put, tags moved, builds recorded. */
  private newRoots(w: RepoWrites): string[] {
    return [...this.record(w.manifests).map((r) => r.digest), ...w.tags, ...w.builds];
  }

  /** Records manifest rows, and returns them. */
  private record(rows: ManifestStamp[]): ManifestStamp[] {
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

  /** reach, reading the bodies it needs side by side (paced if `paced`) until nothing is missing. */
  private async grow(roots: string[], paced: boolean): Promise<boolean> {
    for (let missing = this.reach(roots); missing.length; missing = this.reach(missing)) {
      for (let i = 0; i < missing.length; i += READS_AT_ONCE) {
        const t0 = piece();
        // Side by side: one at a time, each read would wait a turn of the event loop
        // behind the requests being served, and a large store would take minutes.
        const batch = missing.slice(i, i + READS_AT_ONCE);
        const bodies = await Promise.all(batch.map((d) => this.core.store.read(d).catch(() => undefined)));
        for (let k = 0; k < batch.length; k++) if (!await this.learn(batch[k]!, bodies[k])) return false;
        if (paced) await pace(this.core, t0);
      }
    }
    return true;
  }

  /** Records what manifest `d` references; false if its body is missing or does not parse. */
  private parse(d: string, body: Buffer | undefined): boolean {
    try {
      if (body) {
        const p = parseManifest(body, this.rows.get(d));
        this.refs.set(d, { blobs: p.blobs, manifests: p.manifests });
        return true;
      }
    } catch { /* false */ }
    return false;
  }

  /**
   * parse, and for a body that cannot be read or parsed: fine if the manifest is gone
   * meanwhile (a client deleted it: it is no longer the repository's), and stops the
   * sweep of the repository otherwise.
   */
  private async learn(d: string, body: Buffer | undefined): Promise<boolean> {
    if (this.parse(d, body)) return true;
    if (await this.core.index.lookup(this.repo.name, { digest: d })) return false;
    this.rows.delete(d);
    return true;
  }
}
