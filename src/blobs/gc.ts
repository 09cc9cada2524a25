// Garbage collection, online: what no tag, no deliberate push and no build record can
// reach any more is removed while pushes, pulls and builds go on.
//
// Mark, per repository, from:
//  - every tag;
//  - every manifest pushed by digest (a client asked for it to exist untagged), except
//    referrers, which live and die with their subject;
//  - every image build on record that the cache quota has not evicted (its OCI and
//    Docker manifests; hash tags are tags);
//  - then, to a fixed point: an index's child manifests, and the referrers of anything
//    live. A live manifest keeps its config and layers.
// A manifest whose tag moved away, the leftovers of an old build and a referrer whose
// subject was deleted are therefore collectable; so is a layer that no live manifest of
// its repository references (a repository sees a blob only through its link).
//
// Sweep the rest, sparing anything younger than the grace period (manifests by when they
// were pushed, links by when they were last made, blobs by when they were stored) and
// anything created since the oldest build in progress began (core.hold), so a client that
// has pushed layers but not yet their manifest, and a build linking layers it has not yet
// referenced, keep them. Marking reads manifest bodies and takes time: a repository
// written to meanwhile (index.writtenSince) is left for the next run rather than swept
// from a stale mark. Every row is re-checked in the transaction that removes it, and the
// sweep goes in small transactions so that requests are served between them.
//
// Order keeps the store consistent at every instant, kill -9 included: rows go first,
// files after, each file under its digest's lock and only if its row is still gone (a
// concurrent push of the same content re-creates both). A crash between the two leaves
// files without rows, which startup reconciliation removes; never a row without a file.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { parseManifest } from '../oci/manifest.js';
import type { StoreCore } from './core.js';

export interface GcOptions {
  /** Nothing younger than this is collected. */
  graceMs: number;
  /** Work out what would go, and change nothing. */
  dryRun?: boolean | undefined;
}

export interface GcReport {
  dryRun: boolean;
  /** Manifests removed from repositories. */
  manifests: number;
  /** Blob links removed from repositories. */
  links: number;
  /** Blob files removed, and their bytes. */
  blobs: number;
  bytes: number;
  /** Repositories written to while the collection ran: left for the next run. */
  deferred: number;
  ms: number;
  /** Where the time went: marking, sweeping rows, removing files. */
  phases: { markMs: number; sweepMs: number; filesMs: number };
  /** With dryRun: what would go. */
  items?: { manifests: { repo: string; digest: string }[]; blobs: { digest: string; size: number }[] };
}

/** What is live in one repository: manifests and the blobs they reference. */
export interface Live { manifests: Set<string>; blobs: Set<string> }

interface ManifestMark { digest: string; media_type: string; subject: string | null; by_digest: number }

/** Rows per transaction in the sweep: a few milliseconds each, then requests get a turn. */
const CHUNK = 500;
/** Manifest bodies read, and blob files removed, side by side. */
const READS_AT_ONCE = 64;
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
interface Piece { wall: number; cpu: NodeJS.CpuUsage }
const piece = (): Piece => ({ wall: performance.now(), cpu: process.cpuUsage() });
async function pace(core: StoreCore, start: Piece): Promise<void> {
  let wait = 0;
  if (core.busy()) {
    const cpu = process.cpuUsage(start.cpu);
    const took = Math.max(performance.now() - start.wall, (cpu.user + cpu.system) / 1000);
    wait = Math.min(500, took * BUSY_PAUSE);
  }
  await new Promise<void>((r) => (wait < 1 ? setImmediate(r) : setTimeout(r, wait)));
}

/**
 * What the given roots keep alive in repository `id`. Undefined when a manifest body
 * could not be read or parsed: then nothing in the repository is swept, since a
 * reference missed is a blob lost.
 */
export async function markRepository(core: StoreCore, id: number, roots: Iterable<string>): Promise<Live | undefined> {
  const db = core.index.db;
  const rows = new Map(db.prepare<[number], ManifestMark>(
    'SELECT digest, media_type, subject, by_digest FROM manifests WHERE repo_id = ?').all(id).map((r) => [r.digest, r]));
  const live: Live = { manifests: new Set(), blobs: new Set() };
  let queue = [...roots];
  for (;;) {
    while (queue.length) {
      const batch = [...new Set(queue.splice(0, READS_AT_ONCE))].filter((d) => rows.has(d) && !live.manifests.has(d));
      for (const d of batch) live.manifests.add(d);
      const t0 = piece();
      // Read side by side: one at a time, each read would wait a turn of the event loop
      // behind the requests being served, and a large store would take minutes.
      const parsed = await Promise.all(batch.map(async (d) => {
        try { return parseManifest(await core.store.read(d), rows.get(d)!.media_type); } catch { return undefined; }
      }));
      if (parsed.some((p) => p === undefined)) return undefined;
      for (const p of parsed) {
        for (const b of p!.blobs) live.blobs.add(b);
        queue.push(...p!.manifests);
      }
      await pace(core, t0);
    }
    // Referrers of what is live are live: a signature stays while its image does.
    queue = [...rows.values()].filter((r) => r.subject !== null && live.manifests.has(r.subject) && !live.manifests.has(r.digest)).map((r) => r.digest);
    if (!queue.length) return live;
  }
}

/** The roots of a repository (see the header): tags, pushes by digest, builds on record. */
function rootsOf(core: StoreCore, id: number, name: string): string[] {
  const db = core.index.db;
  const builds = db.prepare<[string], { manifest: string; alt_manifest: string | null; evicted_at: number | null }>(
    'SELECT manifest, alt_manifest, evicted_at FROM builds WHERE repo = ?').all(name);
  const built = new Set(builds.flatMap((b) => [b.manifest, b.alt_manifest ?? '']));
  return [
    ...db.prepare<[number], { digest: string }>('SELECT DISTINCT digest FROM tags WHERE repo_id = ?').all(id).map((r) => r.digest),
    ...builds.filter((b) => b.evicted_at === null).flatMap((b) => (b.alt_manifest ? [b.manifest, b.alt_manifest] : [b.manifest])),
    ...db.prepare<[number], { digest: string }>('SELECT digest FROM manifests WHERE repo_id = ? AND by_digest = 1 AND subject IS NULL')
      .all(id).map((r) => r.digest).filter((d) => !built.has(d)),
  ];
}

/** The sweep's bookkeeping, and in a dry run the list of what would go. */
export class Tally {
  manifests = 0;
  links = 0;
  deferred = 0;
  readonly dropped: { digest: string; size: number }[] = [];
  readonly gone: { repo: string; digest: string }[] = [];
}

/** A piece of a sweep, run in one transaction; false: stop this sweep (see deferred). */
export type Step = () => boolean;

/**
 * What of repository `id` is not live and older than `cutoff`: its manifests and blob
 * links. Whoever removes them re-checks each (tagged meanwhile? looked at?).
 */
function candidates(core: StoreCore, id: number, live: Live, cutoff: number): { manifests: string[]; links: string[] } {
  const db = core.index.db;
  return {
    manifests: db.prepare<[number, number], { digest: string }>('SELECT digest FROM manifests WHERE repo_id = ? AND created_at < ?')
      .all(id, cutoff).map((r) => r.digest).filter((d) => !live.manifests.has(d)),
    links: db.prepare<[number, number], { digest: string }>('SELECT digest FROM repo_blobs WHERE repo_id = ? AND linked_at < ?')
      .all(id, cutoff).map((r) => r.digest).filter((d) => !live.blobs.has(d) && !live.manifests.has(d)),
  };
}

/**
 * The steps that remove from repository `id` the manifests and links that `live` does not
 * keep and that are older than `cutoff`. Each re-checks its rows as it runs.
 */
export function sweepRepository(core: StoreCore, id: number, name: string, live: Live, cutoff: number, tally: Tally): Step[] {
  const { index } = core;
  const db = index.db;
  const { manifests, links } = candidates(core, id, live, cutoff);
  const dropManifest = db.prepare(`DELETE FROM manifests WHERE repo_id = ? AND digest = ? AND created_at < ?
    AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = manifests.repo_id AND t.digest = manifests.digest)`);
  const dropLink = db.prepare('DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ? AND linked_at < ?');
  const all = [...manifests.map((d) => ({ d, manifest: true })), ...links.map((d) => ({ d, manifest: false }))];
  const steps: Step[] = [];
  for (let i = 0; i < all.length; i += CHUNK) {
    const chunk = all.slice(i, i + CHUNK);
    steps.push(() => {
      // Written to since the mark: the mark may miss what the write made live.
      if (index.writtenSince().has(name)) { tally.deferred++; return false; }
      let removed = false;
      for (const { d, manifest } of chunk) {
        if (manifest) {
          if (dropManifest.run(id, d, cutoff).changes) { tally.manifests++; removed = true; }
        } else if (!core.seenSince(name, d, cutoff) && dropLink.run(id, d, cutoff).changes) tally.links++;
      }
      // Resolved references of this repository may name a manifest just removed.
      if (removed) core.bump(name);
      return true;
    });
  }
  return steps;
}

/**
 * The steps that remove the rows of blobs nothing uses any more (no link, no manifest;
 * a cached build layer counts as unused once nothing links it) and that are older than
 * `cutoff`. Their files are removed afterwards (removeFiles).
 */
export function dropUnused(core: StoreCore, cutoff: number, tally: Tally): Step[] {
  const db = core.index.db;
  const candidates = db.prepare<[number], { digest: string }>(
    `SELECT digest FROM blobs b WHERE created_at < ?
       AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
       AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)`).all(cutoff).map((r) => r.digest);
  const inUse = db.prepare<[string, string], { n: number }>(
    'SELECT (SELECT count(*) FROM repo_blobs WHERE digest = ?) + (SELECT count(*) FROM manifests WHERE digest = ?) AS n');
  const youngLayer = db.prepare<[string, number], { n: number }>('SELECT count(*) AS n FROM layers WHERE digest = ? AND created_at >= ?');
  const dropLayers = db.prepare('DELETE FROM layers WHERE digest = ?');
  const size = db.prepare<[string], { size: number }>('SELECT size FROM blobs WHERE digest = ?');
  const dropBlob = db.prepare('DELETE FROM blobs WHERE digest = ?');
  const steps: Step[] = [];
  for (let i = 0; i < candidates.length; i += CHUNK) {
    const chunk = candidates.slice(i, i + CHUNK);
    steps.push(() => {
      for (const d of chunk) {
        if (inUse.get(d, d)!.n > 0 || youngLayer.get(d, cutoff)!.n > 0) continue;
        const s = size.get(d)?.size;
        if (s === undefined) continue;
        dropLayers.run(d);
        dropBlob.run(d);
        tally.dropped.push({ digest: d, size: s });
      }
      return true;
    });
  }
  return steps;
}

/**
 * Runs steps each in a transaction of its own with a pause between (pace), so requests
 * are served meanwhile; stops at the first that says so.
 */
export async function runSteps(core: StoreCore, steps: Step[]): Promise<void> {
  for (const s of steps) {
    const t0 = piece();
    const go = core.index.db.transaction(s)();
    await pace(core, t0);
    if (!go) return;
  }
}

/**
 * What a collection would remove now, worked out by reading alone: a dry run must not
 * hold the index's write lock (a dry run from `nixreg gc` runs beside a live server).
 * Decides as the sweep does: the same candidates and re-checks, and a blob goes when
 * every link and manifest row that uses it goes.
 */
function dryRun(core: StoreCore, marks: { id: number; name: string; live: Live }[], cutoff: number, tally: Tally): void {
  const db = core.index.db;
  const tagged = db.prepare<[number, string], { n: number }>('SELECT count(*) AS n FROM tags WHERE repo_id = ? AND digest = ?');
  const lessManifests = new Map<string, number>();
  const lessLinks = new Map<string, number>();
  const inc = (m: Map<string, number>, d: string) => m.set(d, (m.get(d) ?? 0) + 1);
  for (const m of marks) {
    const c = candidates(core, m.id, m.live, cutoff);
    for (const d of c.manifests) {
      if (tagged.get(m.id, d)!.n) continue;
      tally.manifests++;
      tally.gone.push({ repo: m.name, digest: d });
      inc(lessManifests, d);
    }
    for (const d of c.links) if (!core.seenSince(m.name, d, cutoff)) { tally.links++; inc(lessLinks, d); }
  }
  const blobs = db.prepare<[number, number], { digest: string; size: number; links: number; manifests: number; young: number }>(
    `SELECT digest, size, (SELECT count(*) FROM repo_blobs l WHERE l.digest = b.digest) AS links,
            (SELECT count(*) FROM manifests m WHERE m.digest = b.digest) AS manifests,
            (SELECT count(*) FROM layers y WHERE y.digest = b.digest AND y.created_at >= ?) AS young
       FROM blobs b WHERE created_at < ?`);
  for (const b of blobs.iterate(cutoff, cutoff)) {
    if (b.young === 0 && b.links === (lessLinks.get(b.digest) ?? 0) && b.manifests === (lessManifests.get(b.digest) ?? 0)) {
      tally.dropped.push({ digest: b.digest, size: b.size });
    }
  }
}

/** Removes the files of blobs whose rows are gone, each under its digest's lock. */
export async function removeFiles(core: StoreCore, dropped: { digest: string }[]): Promise<void> {
  for (let i = 0; i < dropped.length; i += READS_AT_ONCE) {
    const t0 = piece();
    await Promise.all(dropped.slice(i, i + READS_AT_ONCE).map(({ digest }) => core.locks.run(digest, async () => {
      // Stored again meanwhile (a push of the same bytes): the file is theirs now.
      if (core.index.blobSize(digest) === undefined) await core.store.delete(digest).catch(() => {});
    })));
    await pace(core, t0);
  }
}

/** One full collection; see the header. The caller runs one at a time (storage.ts). */
export async function collectGarbage(core: StoreCore, opts: GcOptions): Promise<GcReport> {
  const started = Date.now();
  const { index } = core;
  const dry = !!opts.dryRun;
  const tally = new Tally();
  const phases = { markMs: 0, sweepMs: 0, filesMs: 0 };
  let t = Date.now();
  const lap = (k: keyof typeof phases) => { const now = Date.now(); phases[k] = now - t; t = now; };
  index.trackWrites();
  try {
    const repos = index.db.prepare<[], { id: number; name: string }>('SELECT id, name FROM repositories').all();
    const marks: { id: number; name: string; live: Live }[] = [];
    for (const r of repos) {
      const live = await markRepository(core, r.id, rootsOf(core, r.id, r.name));
      if (live) marks.push({ ...r, live });
    }
    lap('markMs');
    const cutoff = Math.min(Date.now() - opts.graceMs, core.heldSince ?? Infinity);
    if (dry) {
      dryRun(core, marks, cutoff, tally);
    } else {
      for (const m of marks) await runSteps(core, sweepRepository(core, m.id, m.name, m.live, cutoff, tally));
      await runSteps(core, dropUnused(core, cutoff, tally));
      lap('sweepMs');
      await removeFiles(core, tally.dropped);
      lap('filesMs');
    }
  } finally {
    index.stopTracking();
  }
  return {
    dryRun: dry,
    manifests: tally.manifests,
    links: tally.links,
    blobs: tally.dropped.length,
    bytes: tally.dropped.reduce((n, b) => n + b.size, 0),
    deferred: tally.deferred,
    ms: Date.now() - started,
    phases,
    ...(dry ? { items: { manifests: tally.gone, blobs: tally.dropped } } : {}),
  };
}

