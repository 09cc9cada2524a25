// The index seam: what is visible where (repositories, blob links, manifests, tags,
// uploads, build records), behind one interface with an implementation per engine:
// sqlite.ts (embedded, the default) and postgres.ts (--database postgres://…, shared by
// replicas). Nothing outside src/blobs/index/ knows SQL or a database handle; every
// query the rest of storage needs is a named method here, and one contract suite
// (test/blobs/index-contract.ts) runs against each implementation.
//
// Every method returns a Promise. Transactions are not exposed (better-sqlite3's must be
// synchronous, PostgreSQL's are async on a dedicated client): a method that must be
// atomic is one method, and each implementation makes it atomic its own way. The one
// place a caller's work runs inside a transaction is GC's sweepStep (SweepMark).
//
// Times are milliseconds since the epoch, stamped by the implementation when it writes
// (SQLite: the process's clock; PostgreSQL: clock_timestamp() after the repository's row
// lock, see gc.ts's header); the `asOf` of a snapshot or of writes is that same clock, as
// the mark compares the two. A row that is missing reads as undefined (or false, or []);
// no method throws for absence (putTag excepted: a tag must name a manifest). Failures of the engine (full disk, unreachable server)
// throw the engine's error, which storage maps (errors.ts noSpaceCode, StorageUnavailable).
//
// Room: blobs. May import src/oci; never src/build or src/registry.

export interface ManifestRow {
  digest: string;
  media_type: string;
  size: number;
  artifact_type: string | null;
  subject: string | null;
}

/** A referrer as a listing needs it before its annotations are read (referrerAnnotations). */
export interface ReferrerRow {
  digest: string;
  media_type: string;
  size: number;
  artifact_type: string | null;
  /** Bytes of its annotations' JSON; null: it has none. */
  annotations_bytes: number | null;
}

export interface NewManifest {
  digest: string;
  mediaType: string;
  size: number;
  artifactType?: string | undefined;
  subject?: string | undefined;
  annotations?: Record<string, string> | undefined;
  /** Pushed by a client by digest, not by tag (a garbage-collection root; see gc.ts). */
  byDigest?: boolean | undefined;
}

/** What a manifest being recorded references: each must be visible in its repository. */
export interface References {
  /** Blobs (config, layers) that must be linked into the repository. */
  blobs: string[];
  /** Manifests (an index's children) that must be in the repository. */
  manifests: string[];
}

/** Which referrers to list: those after digest `after`, at most `limit`, of one type if given. */
export interface ReferrersPage {
  after: string;
  limit: number;
  artifactType?: string | undefined;
}

export interface LayerRow {
  digest: string;
  diff_id: string;
  size: number;
}

/** One image built from an expression (see the builds table). */
export interface BuildRow {
  repo: string;
  hash: string;
  manifest: string;
  media_type: string;
  size: number;
  alt_manifest: string | null;
  alt_media_type: string | null;
  alt_size: number | null;
  store_path: string;
  /** When the cache quota evicted it (its manifests are gone); null while it is stored. */
  evicted_at: number | null;
  /** How its layers were compressed (gzip-6, zstd-3, none); null: before the choice, gzip-6. */
  layer_format: string | null;
}

export interface UploadRow {
  repo: string;
  started_at: number;
  updated_at: number;
  /** JSON (store/blob-store.ts Staged): where its bytes stand; null: nothing recorded yet. */
  staged: string | null;
  claimed_by: string | null;
}

/** Unfinished uploads of one repository, of one client, and in all (or the limits of each). */
export interface UploadCounts { repo: number; client: number; total: number }

/** An upload as the purge of stale uploads sees it. */
export interface UploadListing {
  id: string;
  updated_at: number;
  staged: string | null;
  claimed_until: number | null;
}

/** A repository as garbage collection names it: its row's id and its name. */
export interface RepoKey { id: number; name: string }

/** A manifest row with what the mark needs of it. */
export interface ManifestStamp {
  digest: string;
  media_type: string;
  subject: string | null;
  /** When it was (last) pushed. */
  created_at: number;
  /** Pushed by digest (a root unless it is a referrer, see gc.ts). */
  by_digest: boolean;
}

/** A build record as the mark sees it: its manifests are roots while it is not evicted. */
export interface BuildStamp { manifest: string; alt_manifest: string | null; evicted_at: number | null }

/**
 * A repository's rows as garbage collection starts its mark from them, read as of one
 * moment (one transaction or one synchronous step): nothing written to the repository
 * can fall between its parts.
 */
export interface RepoSnapshot {
  /** The index's clock just before the reads: a write not seen here is stamped at or after it. */
  asOf: number;
  manifests: ManifestStamp[];
  /** The digests the repository's tags name (each once). */
  tagged: string[];
  builds: BuildStamp[];
}

/** The writes to a repository since given times (RepoWrites): what a mark takes in. */
export interface WritesSince {
  /** Manifest rows stamped at or after this. */
  manifests: number;
  /** Tags and build records stamped at or after this. */
  others: number;
}

export interface RepoWrites {
  /** The index's clock just before the reads (as RepoSnapshot.asOf). */
  asOf: number;
  manifests: ManifestStamp[];
  /** Digests named by tags put or moved since. */
  tags: string[];
  /** Manifests of build records (not evicted) recorded since. */
  builds: string[];
}

/**
 * What a sweep step asks of the collector's mark (mark.ts), inside the step's
 * transaction. The index reads the writes since the mark last looked, hands them to
 * takeIn, reads the bodies takeIn says are missing (readNow or read), tells the mark it is
 * up to date (caughtUp), and only then removes rows, asking keeps* of each.
 */
export interface SweepMark {
  /** The writes the mark has not taken in yet. */
  wants(): WritesSince;
  /** Takes in the writes (new roots) and returns the manifests reached whose bodies it has not read. No I/O. */
  takeIn(writes: RepoWrites): string[];
  /**
   * Reads those bodies, and those they reach, synchronously (local files just written, so
   * from the page cache). 'more': the step must give way and let the caller read them
   * outside the transaction (a body could not be read or parsed: perhaps its manifest was
   * deleted, which only an async look can tell). 'unreadable': they cannot be read
   * synchronously at all (a remote store): the step ends with 'unreadable'.
   */
  readNow(missing: string[]): 'read' | 'more' | 'unreadable';
  /** Reads those bodies asynchronously; false: a body of a manifest still present cannot be read ('unreadable'). */
  read(missing: string[]): Promise<boolean>;
  /** The mark is up to date with the index as of `asOf` (RepoWrites.asOf). */
  caughtUp(asOf: number): void;
  /** Whether the mark keeps manifest `digest` (then it is not removed). */
  keepsManifest(digest: string): boolean;
  /** Whether the mark keeps the link of blob `digest` (live, or looked at by a client lately). */
  keepsLink(digest: string): boolean;
}

export interface SweepStep {
  mark: SweepMark;
  /** Only rows stamped before this go. */
  cutoff: number;
  /** Candidates (sweepCandidates), a chunk of them. */
  manifests: string[];
  links: string[];
  /**
   * Bodies an implementation that cannot await inside its transaction (SQLite) may read
   * there synchronously (readNow); with more it returns 'more'. One that can await
   * (PostgreSQL) reads any number with `read`.
   */
  maxReads: number;
}

export type SweepResult =
  | { outcome: 'more' }
  | { outcome: 'unreadable' }
  | { outcome: 'swept'; manifests: number; links: number };

/** A blob row as a dry run of garbage collection weighs it (Index.blobUses). */
export interface BlobUse {
  digest: string;
  size: number;
  /** Repositories linking it, manifest rows that are it, and cached build layers of it created at or after the cutoff. */
  links: number;
  manifests: number;
  young: number;
}

export interface Index {
  /**
   * True when other processes may write this index at the same time (PostgreSQL shared
   * by replicas): then no process may answer from a cache of rows that can change (tags,
   * whether a manifest exists); content-addressed data may still be cached.
   */
  readonly shared: boolean;
  /** Where it is, for messages (a path, or a URL without its password). */
  readonly description: string;
  /** Closes it; calls after close reject. */
  close(): Promise<void>;
  /** Resolves when the index answers a trivial query; rejects otherwise, within the implementation's own deadline (readiness). */
  ping(): Promise<void>;
  /** Only where `shared`: one collection or eviction at a time among the processes (a release, or undefined while another holds it; `onLost` if lost first), and a digest's lock among them around a blob's publish and removal (with core.ts's KeyedLock). */
  collectorLock?(onLost?: () => void): Promise<(() => Promise<void>) | undefined>;
  withDigestLock?<T>(digest: string, fn: () => Promise<T>): Promise<T>;
  /** Only where `shared`: `key` held by this process alone among them (its release), after waiting (`waiting` told once) while another holds it or dies; the signal's reason if it aborts first. */
  lease?(key: string, signal?: AbortSignal, waiting?: () => void): Promise<() => Promise<void>>;
  /** Only where shared: the records and logs of build jobs, for every replica to answer for (job-store.ts). */
  readonly jobs?: import('./job-store.js').JobStore;

  // ------------------------------------------------------------------ blobs and links

  /** The size of a stored blob (any repository); undefined if no row. */
  blobSize(digest: string): Promise<number | undefined>;
  /** Records a blob durably stored and links it into `repo` (created if need be), atomically; idempotent, renews the link's stamp. */
  addBlob(repo: string, digest: string, size: number): Promise<void>;
  /** Links an already-stored blob into `repo` (renewing the stamp); false, and nothing written, if the blob has no row. Atomic. */
  linkBlob(repo: string, digest: string): Promise<boolean>;
  /** The size of blob `digest` if it is linked into `repo`; undefined otherwise. */
  linkedBlobSize(repo: string, digest: string): Promise<number | undefined>;
  /**
   * Removes a link, atomically with, when nothing uses the blob any more (no link, no
   * manifest row, no cached layer), the blob's row: then `orphaned` and the caller
   * removes the file (under the digest's lock).
   */
  unlinkBlob(repo: string, digest: string): Promise<{ removed: boolean; orphaned: boolean }>;
  /** Removes every row naming blob `digest` (tags, manifests, links, layers, the blob), atomically: its file is lost. */
  forgetBlob(digest: string): Promise<void>;
  /** Blob rows after digest `after`, in digest order (byte order), at most `limit` (reconciliation). */
  blobsAfter(after: string, limit: number): Promise<{ digest: string; created_at: number }[]>;
  /** Blobs stored and their bytes: may scan the table, so for scrapes, not for requests. */
  totals(): Promise<{ blobs: number; bytes: number }>;

  // ------------------------------------------------------------------ repositories

  /** The repository of that name; undefined if it has no row. */
  repository(name: string): Promise<RepoKey | undefined>;
  /** Names after `last` of repositories holding a manifest or a link, in byte order, at most `n`. */
  listRepos(last: string, n: number): Promise<string[]>;
  /** Every repository row (garbage collection walks them). */
  repositories(): Promise<RepoKey[]>;

  // ------------------------------------------------------------------ manifests and tags

  /**
   * The manifest a tag names, or the manifest of a digest, in `repo`: one lookup (the
   * hot path of every pull). undefined if the tag, the repository or the row is missing.
   */
  lookup(repo: string, ref: { tag: string } | { digest: string }): Promise<ManifestRow | undefined>;
  /** The digest a tag names in `repo`, without the manifest row. */
  resolveTag(repo: string, tag: string): Promise<string | undefined>;
  /**
   * Records a manifest whose body is already durably stored (its blob row, its manifest
   * row, its referrer annotations) and optionally points `tag` at it, atomically and only
   * if every reference in `refs` is visible in `repo` at that moment (PostgreSQL: under
   * the repository's row FOR SHARE, so no sweep can interleave). Returns the references
   * missing: if any, nothing was written. A re-push renews created_at; by_digest only
   * ever goes from false to true.
   */
  putManifest(repo: string, m: NewManifest, refs: References, tag?: string): Promise<string[]>;
  /**
   * Deletes a manifest row and its tags, and its blob row if nothing uses it any more
   * (`orphaned`: the caller removes the file), atomically. Returns the tags it had.
   */
  deleteManifest(repo: string, digest: string): Promise<{ deleted: boolean; tags: string[]; orphaned: boolean }>;
  /** Points `tag` at manifest `digest` of `repo` (which must be there: rejects otherwise), stamping it now. */
  putTag(repo: string, tag: string, digest: string): Promise<void>;
  /** false if there was no such tag. */
  deleteTag(repo: string, tag: string): Promise<boolean>;
  /** Tags after `last`, in byte order, at most `n`; undefined if the repository does not exist. */
  listTags(repo: string, last: string, n: number): Promise<string[] | undefined>;
  /** For the web page: when each of `tags` last moved, and when a build it names was last pulled (null: none). Missing tags are left out. */
  tagTimes(repo: string, tags: string[]): Promise<{ tag: string; updated: number; pulled: number | null }[]>;
  /** For the web page: when each of `repos` last changed (a manifest stored, a tag moved); those without any are left out. */
  repoChanges(repos: string[]): Promise<{ repo: string; changed: number }[]>;
  /** A page of the manifests whose subject is `subject`, in digest order, without their annotations. */
  referrers(repo: string, subject: string, page: ReferrersPage): Promise<ReferrerRow[]>;
  /** The annotations of referrer `digest` in `repo`, as the JSON bytes recorded; undefined if it has none. */
  referrerAnnotations(repo: string, digest: string): Promise<Buffer | undefined>;

  // ------------------------------------------------------------------ uploads

  /**
   * Records a new upload (does not create the repository). With `limits`, atomically
   * with counting the unfinished uploads (registry-wide: PostgreSQL serialises the count
   * and the insert, e.g. by an advisory lock), and only if each count is under its limit:
   * concurrent starts cannot both take the last free slot. Returns the counts when it
   * refuses (nothing written), undefined when it recorded the upload.
   */
  createUpload(id: string, repo: string, client: string, limits?: UploadCounts): Promise<UploadCounts | undefined>;
  /** Unfinished uploads of a repository, of a client, and in all. */
  openUploads(repo: string, client: string): Promise<UploadCounts>;
  uploadCount(): Promise<number>;
  getUpload(id: string): Promise<UploadRow | undefined>;
  /** The upload was used now; `staged`, if given, replaces where its bytes stand. No-op for a missing upload. */
  touchUpload(id: string, staged?: string): Promise<void>;
  /**
   * Claims upload `id` for `owner` until `until`, atomically: true if nobody's claim runs
   * (none, run out, or `owner`'s own); false while another owner's claim runs, or if the
   * upload is gone.
   */
  claimUpload(id: string, owner: string, until: number): Promise<boolean>;
  /** Takes the claim of `from` (known to be gone) for `owner`, only if `from` still holds it (compare-and-set). */
  takeOverClaim(id: string, from: string, owner: string, until: number): Promise<boolean>;
  /** Renews `owner`'s claim; nothing if another holds it. */
  extendClaim(id: string, owner: string, until: number): Promise<void>;
  /** Ends `owner`'s claim (the row keeps its owner's name); nothing if another holds it. */
  releaseUpload(id: string, owner: string): Promise<void>;
  deleteUpload(id: string): Promise<void>;
  /** Every upload, for the purge of stale ones. */
  allUploads(): Promise<UploadListing[]>;

  // ------------------------------------------------------------------ build-on-pull

  /** The layer built for contents key `key`, only if its blob row is still there. */
  getLayer(key: string): Promise<LayerRow | undefined>;
  /** Records (or replaces) the layer of `key`, stamped now. */
  putLayer(key: string, l: LayerRow): Promise<void>;
  /** The record of `repo`'s image built for `hash`, evicted or not. */
  getBuild(repo: string, hash: string): Promise<BuildRow | undefined>;
  /** Whether `repo` holds images built here. */
  hasBuilds(repo: string): Promise<boolean>;
  /** Records (or replaces) a finished build, stamped now, counting as pulled now; not evicted. */
  putBuild(b: Omit<BuildRow, 'evicted_at'>): Promise<void>;

  // ------------------------------------------------------------------ the cache quota (quota.ts)

  /** Records when built images were last pulled, all in one transaction; a time never goes back; evicted builds are left alone. */
  notePulls(pulls: { repo: string; digest: string; at: number }[]): Promise<void>;
  /** Bytes of the blobs that repositories with builds use (links, manifests, cached layers) and no other repository does. */
  builtUsage(): Promise<number>;
  /** Built images not evicted, least recently pulled (or built) first, then by repo and manifest: each (repo, manifest) once. */
  evictionOrder(): Promise<{ repo: string; manifest: string }[]>;
  /**
   * Evicts one built image, atomically: its build rows are stamped evicted, and its
   * manifests (OCI and Docker) with their tags are deleted unless another build record
   * not evicted still names them. Blob rows stay (GC's sweep and dropUnusedBlobs' work).
   */
  evictBuild(repo: string, manifest: string): Promise<void>;

  // ------------------------------------------------------------------ garbage collection (gc.ts, mark.ts)

  /** A repository's rows as of one moment, for a mark to start from. */
  repoSnapshot(repo: RepoKey): Promise<RepoSnapshot>;
  /** What was written to a repository since `since` (outside any transaction: catching up). */
  repoWrites(repo: RepoKey, since: WritesSince): Promise<RepoWrites>;
  /** Manifests and blob links of `repo` stamped before `cutoff`: what a sweep may remove (the mark then filters them). */
  sweepCandidates(repo: RepoKey, cutoff: number): Promise<{ manifests: string[]; links: string[] }>;
  /**
   * One step of a repository's sweep, in one transaction that no write to the
   * repository can interleave with (SQLite: one synchronous transaction; PostgreSQL: the
   * repository's row FOR UPDATE): reads the writes since the mark last looked
   * (step.mark.wants), takes them in, reads the bodies they need (readNow, or `read` where
   * it can await; more than maxReads without awaiting: 'more', nothing removed), then
   * removes each of step.manifests the mark does not keep that is still stamped before the
   * cutoff and untagged, and each of step.links the mark does not keep still stamped
   * before the cutoff. 'unreadable': a body could not be read, nothing removed.
   */
  sweepStep(repo: RepoKey, step: SweepStep): Promise<SweepResult>;
  /** Whether a tag of `repo` names `digest` (dry runs re-check as the sweep does). */
  isTagged(repo: RepoKey, digest: string): Promise<boolean>;
  /** Blobs stamped before `cutoff` that no link and no manifest row uses. */
  unusedBlobs(cutoff: number): Promise<string[]>;
  /**
   * Deletes, atomically, the rows of those of `digests` still unused (no link, no manifest
   * row) and with no cached layer created at or after `cutoff`, with their cached layers;
   * returns what went, with sizes. The caller removes the files after.
   */
  dropUnusedBlobs(digests: string[], cutoff: number): Promise<{ digest: string; size: number }[]>;
  /** A page of blob rows stamped before `cutoff`, after digest `after`, with how much uses each (dry runs). */
  blobUses(cutoff: number, after: string, limit: number): Promise<BlobUse[]>;
}
