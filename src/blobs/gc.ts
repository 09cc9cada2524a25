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
// Sweep the rest, sparing anything younger than the grace period before the repository's
// mark began (manifests by when they were pushed, links by when they were last made,
// blobs by when they were stored) and anything created since the oldest build in progress
// began (core.hold), so a client that has pushed layers but not yet their manifest, and
// a build linking layers it has not yet referenced, keep them. A manifest spared so is
// also a root: what stays in a repository keeps what it references.
//
// Marking reads manifest bodies and takes time, and a busy repository is written to
// meanwhile: a manifest pushed during the mark may reference an old layer the mark found
// unreferenced, or make an old untagged manifest live again (a tag moved onto it, an
// index naming it). So each repository is marked and then swept at once, in small
// transactions, and each transaction first brings the mark up to date with every row
// written to the repository since it last looked (mark.ts: new manifests, moved tags and
// new builds are roots), then removes only what is still unmarked, re-checking each row.
// The bodies those writes need are read before the transaction, side by side; the few
// written in between are read within it (just written, so from the page cache): a
// handful at most, or the transaction gives way and they are read outside it again;
// after a few such rounds, within it whatever their number, so that the sweep ends.
// Each such transaction is one Index.sweepStep (index/index.ts), which runs the mark's
// callbacks inside it: SQLite reads that handful synchronously (readNow); PostgreSQL,
// which can await within its transaction, reads them there whatever their number. A
// push after the transaction finds what it removed gone: Manifests.put checks, in the
// step that records the manifest, that its layers and children are there, and refuses
// it otherwise (MANIFEST_BLOB_UNKNOWN), so a push is refused, never acknowledged and then
// broken. Thus a repository pushed to without pause is collected like a quiet one (it
// used to be left for the next run, every run), and no transaction holds the index for
// longer than a chunk of rows takes (GcReport.holdMs).
//
// Order keeps the store consistent at every instant, kill -9 included: rows go first,
// files after, each file under its digest's lock and only if its row is still gone (a
// concurrent push of the same content re-creates both). A crash between the two leaves
// files without rows, which startup reconciliation removes; never a row without a file.
//
// In PostgreSQL (one index, perhaps several servers) the same transactions hold when the
// repository's row serialises them: a sweep transaction starts with SELECT … FROM
// repositories WHERE id = $1 FOR UPDATE; every write to a repository (a manifest with the
// check of its references, a tag, a link, a build) takes that row FOR SHARE first and
// stamps its rows with clock_timestamp() after the lock. A write committed after a sweep
// transaction is then stamped later than that transaction's start, and one committed
// before is seen by its statements (READ COMMITTED); in SQLite one connection on one
// thread gives the same order. Marks stay in the collecting process, and one process
// collects at a time (Index.collectorLock, collectorTurn below); the per-digest lock around
// file removal also takes an advisory lock on the digest (Index.withDigestLock).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type { StoreCore } from './core.js';
import { CollectionRunning } from './errors.js';
import type { Index, RepoKey, RepoSnapshot } from './index/index.js';
import { Mark, READS_AT_ONCE, pace, piece } from './mark.js';

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
  /** Repositories not swept, because a manifest body in them could not be read. */
  deferred: number;
  ms: number;
  /** The longest the collection held the index's write lock in one transaction. */
  holdMs: number;
  /** Where the time went: marking, sweeping rows, removing files. */
  phases: { markMs: number; sweepMs: number; filesMs: number };
  /** With dryRun: what would go. */
  items?: { manifests: { repo: string; digest: string }[]; blobs: { digest: string; size: number }[] };
}

/** Rows per transaction in the sweep: a few milliseconds each, then requests get a turn. */
const CHUNK = 500;
/**
 * Manifest bodies a sweep transaction reads itself, of manifests pushed since the bodies
 * were last read outside it; with more, it gives way and they are read outside, for
 * TRIES rounds; after that it reads them all, so that a sweep always ends.
 */
const READS_IN_TRANSACTION = 8;
const TRIES = 3;
/** Blob rows weighed per query in a dry run. */
const DRY_PAGE = 1000;

/** The roots of a repository (see the header): tags, pushes by digest, builds on record. */
function rootsOf(snapshot: RepoSnapshot): string[] {
  const { builds } = snapshot;
  const built = new Set(builds.flatMap((b) => [b.manifest, b.alt_manifest ?? '']));
  return [
    ...snapshot.tagged,
    ...builds.filter((b) => b.evicted_at === null).flatMap((b) => (b.alt_manifest ? [b.manifest, b.alt_manifest] : [b.manifest])),
    ...snapshot.manifests.filter((m) => m.by_digest && m.subject === null && !built.has(m.digest)).map((m) => m.digest),
  ];
}

/** Marks repository `repo` from its roots (see the header and mark.ts). */
export function markRepository(core: StoreCore, repo: RepoKey, graceMs: number): Promise<Mark | undefined> {
  return Mark.of(core, repo, rootsOf, graceMs);
}

/** The sweep's bookkeeping, and in a dry run the list of what would go. */
export class Tally {
  manifests = 0;
  links = 0;
  deferred = 0;
  holdMs = 0;
  readonly dropped: { digest: string; size: number }[] = [];
  readonly gone: { repo: string; digest: string }[] = [];
}

/** Runs `fn` (one transaction of the index), and keeps the longest such hold in the tally. */
async function transact<T>(tally: Tally, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    tally.holdMs = Math.max(tally.holdMs, performance.now() - t0);
  }
}

/**
 * What of the marked repository is not live and older than its cutoff: its manifests and
 * blob links. Whoever removes them re-checks each (tagged meanwhile? looked at?).
 */
async function candidates(core: StoreCore, mark: Mark): Promise<{ manifests: string[]; links: string[] }> {
  const c = await core.index.sweepCandidates(mark.repo, mark.cutoff);
  return {
    manifests: c.manifests.filter((d) => !mark.keepsManifest(d)),
    links: c.links.filter((d) => !mark.live.blobs.has(d) && !mark.keepsManifest(d)),
  };
}

/**
 * Removes from the marked repository the manifests and links its mark does not keep and
 * that are older than its cutoff, a chunk per transaction (Index.sweepStep), each brought
 * up to date with the writes since the last (see the header).
 */
export async function sweepRepository(core: StoreCore, mark: Mark, tally: Tally): Promise<void> {
  const { manifests, links } = await candidates(core, mark);
  const all = [...manifests.map((d) => ({ d, manifest: true })), ...links.map((d) => ({ d, manifest: false }))];
  for (let i = 0; i < all.length; i += CHUNK) {
    const chunk = all.slice(i, i + CHUNK);
    const step = {
      mark,
      cutoff: mark.cutoff,
      manifests: chunk.filter((c) => c.manifest).map((c) => c.d),
      links: chunk.filter((c) => !c.manifest).map((c) => c.d),
      maxReads: 0,
    };
    for (let tries = 1; ; tries++) {
      // The bodies the writes since the last transaction need, read beside the requests.
      if (!await mark.catchUp()) { tally.deferred++; return; }
      const t0 = piece();
      step.maxReads = tries < TRIES ? READS_IN_TRANSACTION : Infinity;
      const done = await transact(tally, () => core.index.sweepStep(mark.repo, step));
      if (done.outcome === 'swept') {
        tally.manifests += done.manifests;
        tally.links += done.links;
        // Resolved references of this repository may name a manifest just removed.
        if (done.manifests) core.bump(mark.name);
      }
      await pace(core, t0);
      if (done.outcome === 'unreadable') { tally.deferred++; return; }
      if (done.outcome === 'swept') break;
    }
  }
}

/**
 * Removes the rows of blobs nothing uses any more (no link, no manifest; a cached build
 * layer counts as unused once nothing links it) and that are older than `cutoff`, a chunk
 * per transaction with a pause between (pace), so requests are served meanwhile. Their
 * files are removed afterwards (removeFiles).
 */
export async function dropUnused(core: StoreCore, cutoff: number, tally: Tally): Promise<void> {
  const unused = await core.index.unusedBlobs(cutoff);
  for (let i = 0; i < unused.length; i += CHUNK) {
    const t0 = piece();
    const dropped = await transact(tally, () => core.index.dropUnusedBlobs(unused.slice(i, i + CHUNK), cutoff));
    tally.dropped.push(...dropped);
    await pace(core, t0);
  }
}

/**
 * What a collection would remove now, worked out by reading alone: a dry run must not
 * hold the index's write lock (a dry run from `nixreg gc` runs beside a live server).
 * Decides as the sweep does: the same candidates and re-checks, and a blob goes when
 * every link and manifest row that uses it goes.
 */
async function dryRun(core: StoreCore, marks: Mark[], graceMs: number, tally: Tally): Promise<void> {
  const lessManifests = new Map<string, number>();
  const lessLinks = new Map<string, number>();
  const inc = (m: Map<string, number>, d: string) => m.set(d, (m.get(d) ?? 0) + 1);
  for (const m of marks) {
    const c = await candidates(core, m);
    for (const d of c.manifests) {
      if (await core.index.isTagged(m.repo, d)) continue;
      tally.manifests++;
      tally.gone.push({ repo: m.name, digest: d });
      inc(lessManifests, d);
    }
    for (const d of c.links) if (!core.seenSince(m.name, d, m.cutoff)) { tally.links++; inc(lessLinks, d); }
  }
  const cutoff = Math.min(Date.now() - graceMs, core.heldSince ?? Infinity);
  for (let after = ''; ;) {
    const page = await core.index.blobUses(cutoff, after, DRY_PAGE);
    for (const b of page) {
      if (b.young === 0 && b.links === (lessLinks.get(b.digest) ?? 0) && b.manifests === (lessManifests.get(b.digest) ?? 0)) {
        tally.dropped.push({ digest: b.digest, size: b.size });
      }
    }
    if (page.length < DRY_PAGE) break;
    after = page[page.length - 1]!.digest;
  }
}

/** Removes the files of blobs whose rows are gone, each under its digest's lock. */
export async function removeFiles(core: StoreCore, dropped: { digest: string }[]): Promise<void> {
  for (let i = 0; i < dropped.length; i += READS_AT_ONCE) {
    const t0 = piece();
    await Promise.all(dropped.slice(i, i + READS_AT_ONCE).map(({ digest }) => core.locks.run(digest, async () => {
      // Stored again meanwhile (a push of the same bytes): the file is theirs now.
      if (await core.index.blobSize(digest) === undefined) await core.store.delete(digest).catch(() => {});
    })));
    await pace(core, t0);
  }
}

/** One full collection; see the header. The caller runs one at a time (storage.ts). */
export async function collectGarbage(core: StoreCore, opts: GcOptions): Promise<GcReport> {
  const started = Date.now();
  const dry = !!opts.dryRun;
  const tally = new Tally();
  const phases = { markMs: 0, sweepMs: 0, filesMs: 0 };
  let t = Date.now();
  const lap = (k: keyof typeof phases) => { const now = Date.now(); phases[k] += now - t; t = now; };
  const repos = await core.index.repositories();
  const marks: Mark[] = [];
  for (const r of repos) {
    // Each repository is swept right after its mark, while few writes have come since.
    const mark = await markRepository(core, r, opts.graceMs);
    lap('markMs');
    if (!mark) tally.deferred++;
    else if (dry) marks.push(mark);
    else {
      await sweepRepository(core, mark, tally);
      lap('sweepMs');
    }
  }
  if (dry) {
    await dryRun(core, marks, opts.graceMs, tally);
  } else {
    await dropUnused(core, Math.min(Date.now() - opts.graceMs, core.heldSince ?? Infinity), tally);
    lap('sweepMs');
    await removeFiles(core, tally.dropped);
    lap('filesMs');
  }
  return {
    dryRun: dry,
    manifests: tally.manifests,
    links: tally.links,
    blobs: tally.dropped.length,
    bytes: tally.dropped.reduce((n, b) => n + b.size, 0),
    deferred: tally.deferred,
    ms: Date.now() - started,
    holdMs: Math.round(tally.holdMs * 10) / 10,
    phases,
    ...(dry ? { items: { manifests: tally.gone, blobs: tally.dropped } } : {}),
  };
}

/**
 * This process's turn to collect or evict among the processes sharing the index (one at
 * a time: Index.collectorLock); within a process, Storage already runs them one at a
 * time. Throws CollectionRunning while another process has it.
 */
export async function collectorTurn(index: Index): Promise<() => Promise<void>> {
  if (!index.collectorLock) return async () => {};
  const release = await index.collectorLock();
  if (!release) throw new CollectionRunning();
  return release;
}
