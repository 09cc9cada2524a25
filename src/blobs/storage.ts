// Content-addressed storage: blobs in a blob store (store/: the local disk, or S3) plus the
// index (index/: SQLite, or PostgreSQL), behind one API that the HTTP handlers and the image
// builder both use. This file opens, reconciles and closes storage and is the one entry point; the
// work is done by its parts: files.ts (blob content), uploads.ts (upload sessions),
// manifests.ts (manifests, tags, listings), over core.ts (layout, index, store, locks).
// Nothing here knows HTTP or Nix: failures are the domain errors of errors.ts.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { promises as fs } from 'node:fs';
import type { Readable } from 'node:stream';
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import { StoreCore, removeOlder } from './core.js';
import { CollectionRunning, StorageUnavailable } from './errors.js';
import { reconcileBlobs, type Reconciled } from './reconcile.js';
import type { BlobStore, ByteRange } from './store/blob-store.js';
import { DiskStore } from './store/disk.js';
import type { S3Options } from './store/s3.js';
import { BlobFiles } from './files.js';
import type { BuildRow, Index, LayerRow, ReferrerRow, ReferrersPage, UploadCounts } from './index/index.js';
import type { JobRecord, JobStore, LogChunk, StoredJob } from './index/job-store.js';
import { openIndex } from './index/open.js';
import { Layout } from './layout.js';
import { Manifests, type ManifestInfo } from './manifests.js';
import { collectGarbage, collectorTurn, type GcReport } from './gc.js';
import { Quota, type Eviction } from './quota.js';
import { Uploads } from './uploads.js';

export interface StorageOptions {
  /** The index in PostgreSQL (--database postgres://…); default: SQLite in the data directory. */
  database?: string | undefined;
  /** With `database`: connections at most, and the deadline of each wait and statement (ms). */
  databasePool?: number | undefined;
  databaseTimeoutMs?: number | undefined;
  /** Blobs and uploads in S3 (--storage s3://…); default: the local disk under the data directory. */
  s3?: S3Options | undefined;
  /** What a background reconciliation of a remote store did, or why it failed (for the log). */
  onReconcile?: ((r: Reconciled | Error) => void) | undefined;
  /** Uploads untouched for longer than this are purged (default 24 h). */
  uploadMaxAgeMs?: number;
  /** Bytes of manifest bodies kept in memory (default 64 MiB). */
  manifestCacheBytes?: number;
  /** Garbage collection spares what is younger than this (default 1 h). */
  gcGraceMs?: number;
  /** Collect garbage this often (default 1 h; 0: only on demand). */
  gcIntervalMs?: number;
  /** Bytes that only built images may use; the least recently pulled go beyond it. */
  cacheMaxBytes?: number | undefined;
  /** Told of every collection and eviction, for the log. */
  onGc?: ((report: GcReport) => void) | undefined;
  onEvict?: ((eviction: Eviction) => void) | undefined;
}

/** What garbage collection and the quota have freed since the process started. */
export interface GcTotals {
  runs: number; freedBytes: number; freedBlobs: number; freedManifests: number;
  /** Built images the quota evicted, and the bytes of the blob files that went with them. */
  evictions: number; evictedBytes: number;
  last?: GcReport | undefined;
}

/** The S3 store, if asked for: loaded on demand, so the default never loads the AWS SDK. */
async function remoteStore(opts: StorageOptions): Promise<BlobStore | undefined> {
  if (!opts.s3) return undefined;
  const { S3Store } = await import('./store/s3.js');
  return new S3Store(opts.s3);
}

export class Storage {
  readonly layout: Layout;
  readonly index: Index;
  private readonly files: BlobFiles;
  private readonly uploads: Uploads;
  private readonly manifests: Manifests;
  private readonly uploadMaxAgeMs: number;
  private readonly core: StoreCore;
  private readonly quota: Quota;
  private readonly opts: StorageOptions;
  private purgeTimer: NodeJS.Timeout | undefined;
  private gcTimer: NodeJS.Timeout | undefined;
  /** Collections and evictions run one at a time: each reasons about the store as a whole. */
  private exclusive: Promise<unknown> = Promise.resolve();
  readonly gcTotals: GcTotals = { runs: 0, freedBytes: 0, freedBlobs: 0, freedManifests: 0, evictions: 0, evictedBytes: 0 };
  readonly store: BlobStore;

  private constructor(root: string, opts: StorageOptions, store: BlobStore | undefined, index: Index) {
    this.layout = new Layout(root);
    this.store = store ?? new DiskStore(this.layout);
    this.index = index;
    const core = this.core = new StoreCore(this.layout, this.index, this.store);
    this.uploadMaxAgeMs = opts.uploadMaxAgeMs ?? 24 * 3600_000;
    this.files = new BlobFiles(core);
    this.uploads = new Uploads(core, this.files, this.uploadMaxAgeMs);
    this.manifests = new Manifests(core, opts.manifestCacheBytes ?? 64 * 1024 * 1024);
    this.quota = new Quota(core);
    this.opts = opts;
  }

  static async open(root: string, opts: StorageOptions = {}): Promise<Storage> {
    const layout = new Layout(root);
    // With S3, nothing durable is kept on local disk but the index (and build logs).
    const local = opts.s3 ? [] : [layout.blobsDir, layout.uploadsDir];
    for (const d of [layout.root, ...local, layout.tmpDir, layout.gcrootsDir, layout.logsDir]) {
      await fs.mkdir(d, { recursive: true });
    }
    const s = await Storage.make(root, opts);
    try {
      await s.checkStore();
    } catch (e) {
      await s.close();
      throw e;
    }
    await s.reconcile();
    // At least every second (a tiny max age must not become a busy loop), at most hourly.
    s.purgeTimer = setInterval(() => { void s.purgeStaleUploads().catch(() => {}); },
      Math.max(1000, Math.min(s.uploadMaxAgeMs, 3600_000)));
    s.purgeTimer.unref();
    const every = opts.gcIntervalMs ?? 3600_000;
    if (every > 0) {
      s.gcTimer = setInterval(() => { void s.gc().catch(() => {}); }, every);
      s.gcTimer.unref();
    }
    return s;
  }

  /**
   * Opens the index of `root` for reading what a collection would do, while a server may
   * be using it: no reconciliation (which would take the server's blob in mid-commit for
   * an orphan), no timers.
   */
  static async inspect(root: string, opts: StorageOptions = {}): Promise<Storage> {
    return Storage.make(root, { ...opts, gcIntervalMs: 0 });
  }

  private static async make(root: string, opts: StorageOptions): Promise<Storage> {
    const store = await remoteStore(opts);
    let index: Index;
    try {
      index = await openIndex({ ...opts, sqlitePath: new Layout(root).dbPath });
    } catch (e) {
      store?.close();
      throw e;
    }
    return new Storage(root, opts, store, index);
  }

  private closed = false;

  /** Stops the timers, writes the last pull times, closes the index and the store. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.purgeTimer) clearInterval(this.purgeTimer);
    if (this.gcTimer) clearInterval(this.gcTimer);
    // The store last, whatever happened to the rest.
    try { await this.quota.close(); await this.index.close(); } finally { this.store.close(); }
  }

  /** A collection asked for and not yet started, per kind (see gc()). */
  private readonly gcWaiting: Record<'dry' | 'real', { graceMs?: number; report: Promise<GcReport> } | undefined> = { dry: undefined, real: undefined };

  private oneAtATime<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.exclusive.then(fn, fn);
    this.exclusive = run.catch(() => {});
    return run;
  }

  // ---------------------------------------------------------------- garbage collection and quota (gc.ts, quota.ts)

  /**
   * Collects garbage now (see gc.ts); with dryRun, reports what would go. A call while a
   * collection of its kind waits its turn joins that one rather than queue another: it
   * has not started, so it will see everything the caller saw. Collections asked for in
   * a burst (a script, a fuzz, impatient operators) are thus at most one running and one
   * waiting per kind, and none waits longer than the one running and its own.
   */
  gc(opts: { dryRun?: boolean; graceMs?: number } = {}): Promise<GcReport> {
    const kind = opts.dryRun ? 'dry' : 'real';
    const waiting = this.gcWaiting[kind];
    if (waiting && waiting.graceMs === opts.graceMs) return waiting.report;
    const entry = { graceMs: opts.graceMs, report: undefined as unknown as Promise<GcReport> };
    this.gcWaiting[kind] = entry;
    entry.report = this.oneAtATime(async () => {
      if (this.gcWaiting[kind] === entry) this.gcWaiting[kind] = undefined;
      // A dry run only reads: it needs no turn among replicas.
      const release = opts.dryRun ? undefined : await collectorTurn(this.index);
      let report: GcReport;
      try {
        report = await collectGarbage(this.core, { graceMs: opts.graceMs ?? this.opts.gcGraceMs ?? 3600_000, dryRun: opts.dryRun });
      } finally {
        await release?.();
      }
      if (!report.dryRun) {
        const t = this.gcTotals;
        t.runs++;
        t.freedBytes += report.bytes;
        t.freedBlobs += report.blobs;
        t.freedManifests += report.manifests;
        t.last = report;
      }
      this.opts.onGc?.(report);
      return report;
    });
    return entry.report;
  }

  /**
   * A build stored image `manifest` in `repo`: enforces the cache quota, if one is set,
   * never evicting that image.
   */
  async builtImageStored(repo: string, manifest: string): Promise<Eviction | undefined> {
    const max = this.opts.cacheMaxBytes;
    if (max === undefined) return undefined;
    return this.oneAtATime(async () => {
      // Another replica collecting or evicting now: the quota is enforced again after the next build.
      const release = await collectorTurn(this.index).catch((err: unknown) => { if (err instanceof CollectionRunning) return undefined; throw err; });
      if (!release) return undefined;
      const e = await this.quota.enforce(max, { repo, manifest }).finally(release);
      if (e.images.length) {
        const t = this.gcTotals;
        t.evictions += e.images.length;
        t.evictedBytes += e.bytes;
        this.opts.onEvict?.(e);
      }
      return e;
    });
  }

  /** A client pulled manifest `digest` of `repo`: the quota evicts what is pulled least. */
  notePulled(repo: string, digest: string): void { this.quota.pulled(repo, digest); }
  /** Bytes that only built images use (what --cache-max-bytes bounds). */
  cacheUsage(): Promise<number> { return this.quota.usage(); }
  /**
   * Marks work in progress that links blobs before a manifest references them (a
   * build): GC and the quota spare whatever is created or linked until it is released.
   */
  hold(): () => void { return this.core.hold(); }
  /** Tells storage whether requests are in flight: garbage collection slows down for them. */
  set busy(probe: () => boolean) { this.core.busy = probe; }

  /**
   * Brings index and blob store back into agreement after a crash (reconcile.ts). A
   * local disk is reconciled at open, before any request: at run time it could take a
   * blob published but whose row is not yet written for an orphan. A remote store, which
   * may take long to list, in the background with a grace period instead; so is any
   * store of an index other processes share (replicas over PostgreSQL): they may be in
   * mid-commit at any moment, on the shared store and in a shared tmp/.
   */
  async reconcile(): Promise<{ rowsDropped: number; filesRemoved: number; uploadsPurged: number }> {
    let blobs: Reconciled = { rowsDropped: 0, filesRemoved: 0 };
    const shared = this.index.shared;
    if (this.store.remote || shared) {
      void (async () => {
        try {
          this.opts.onReconcile?.(await reconcileBlobs(this.core, 3600_000));
          await this.purgeStaleUploads();
        } catch (e) {
          // Cut short by close(): the next start does it again.
          if (!this.closed) this.opts.onReconcile?.(e as Error);
        }
      })();
    } else {
      blobs = await reconcileBlobs(this.core, 0);
    }
    if (shared) await removeOlder(this.layout.tmpDir, 3600_000);
    else {
      await fs.rm(this.layout.tmpDir, { recursive: true, force: true });
      await fs.mkdir(this.layout.tmpDir, { recursive: true });
    }
    const uploadsPurged = this.store.remote || shared ? 0 : await this.purgeStaleUploads();
    return { ...blobs, uploadsPurged };
  }

  /**
   * A store that answers but refuses us (no such bucket, wrong credentials) is a mistake
   * in the settings: said at start, not as an internal error at each request. One that
   * does not answer may come back: the server starts, answers 503 and is not ready.
   */
  private async checkStore(): Promise<void> {
    try {
      await this.store.ping();
    } catch (e) {
      if (e instanceof StorageUnavailable) return;
      const status = (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      const why = status === 404 ? 'the bucket does not exist (nixreg does not create it)'
        : status === 403 ? 'access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket\'s policy'
        : `${(e as Error).name}: ${(e as Error).message}`;
      throw new Error(`the blob store ${this.store.description} cannot be used: ${why}`);
    }
  }

  purgeStaleUploads(): Promise<number> { return this.uploads.purgeStale(); }

  /** When a write last found the disk or the index full (ms since the epoch), if ever. */
  lastFull(): number | undefined { return this.core.lastFull; }
  /** `err` as StorageFull if it means no space (see StoreCore.noSpace), for writers outside storage. */
  noSpace(err: unknown, what: string): unknown { return this.core.noSpace(err, what); }

  // ---------------------------------------------------------------- blobs (files.ts)

  /** Size of a blob as visible in `repo`, or undefined if not linked there. */
  async blobSize(repo: string, digest: string): Promise<number | undefined> {
    const size = await this.files.size(repo, digest);
    // A client looking at a blob may be about to reference it from a manifest (gc.ts).
    if (size !== undefined) this.core.touch(repo, digest);
    return size;
  }
  /** Where the local disk store keeps a blob (tests and tools look there). */
  blobPath(digest: string): string { return this.layout.blobPath(digest); }
  /** The blob's local file, if the store has one (sendfile sends it without copying). */
  blobFile(digest: string): string | undefined { return this.store.localPath?.(digest); }
  /** The blob, or a range of it, as a stream (BlobMissing, code ENOENT, if the store lost it). */
  openBlob(digest: string, range?: ByteRange): Promise<Readable> { return this.store.open(digest, range); }
  /** A URL that serves the blob for `seconds`, if the store can make one (--s3-redirect). */
  blobUrl(digest: string, seconds: number): Promise<string> | undefined { return this.store.presign?.(digest, seconds); }
  writeBlob(repo: string, source: Readable | Buffer, expected?: string) { return this.files.write(repo, source, expected); }
  commitFile(repo: string, file: string, digest: string, size: number) { return this.files.commit(repo, file, digest, size); }
  mountBlob(repo: string, from: string, digest: string) { return this.files.mount(repo, from, digest); }
  deleteBlob(repo: string, digest: string) { return this.files.delete(repo, digest); }

  // ---------------------------------------------------------------- uploads (uploads.ts)

  /**
   * Starts an upload; with `limits` (per repository, per client, in all), only while the
   * unfinished uploads are under them, checked and recorded atomically (TooManyUploads).
   */
  startUpload(repo: string, client?: string, limits?: UploadCounts): Promise<string> { return this.uploads.start(repo, client, limits); }
  uploadOffset(repo: string, id: string) { return this.uploads.offset(repo, id); }
  appendUpload(repo: string, id: string, source: Readable, start?: number, length?: number) {
    return this.uploads.append(repo, id, source, start, length);
  }
  finishUpload(repo: string, id: string, digest: string) { return this.uploads.finish(repo, id, digest); }
  cancelUpload(repo: string, id: string) { return this.uploads.cancel(repo, id); }

  // ---------------------------------------------------------------- manifests and tags (manifests.ts)

  resolveManifest(repo: string, ref: Reference): Promise<Descriptor | undefined> { return this.manifests.resolve(repo, ref); }
  readManifest(d: Descriptor): Promise<Buffer> { return this.manifests.read(d); }
  putManifest(repo: string, body: Buffer, info: ManifestInfo, tag?: string, digest?: string): Promise<Descriptor> {
    return this.manifests.put(repo, body, info, tag, digest);
  }
  deleteManifest(repo: string, digest: string) { return this.manifests.delete(repo, digest); }
  tag(repo: string, tag: string, digest: string): Promise<void> { return this.manifests.tag(repo, tag, digest); }
  deleteTag(repo: string, tag: string): Promise<boolean> { return this.manifests.deleteTag(repo, tag); }
  listTags(repo: string, last: string, n: number): Promise<string[] | undefined> { return this.manifests.listTags(repo, last, n); }
  /** One page of the manifests whose subject is `subject`, in digest order, without their annotations. */
  referrers(repo: string, subject: string, page: ReferrersPage): Promise<ReferrerRow[]> { return this.manifests.referrers(repo, subject, page); }
  /** A referrer's annotations as JSON (megabytes, possibly): read only for the page being answered. */
  referrerAnnotations(repo: string, digest: string): Promise<Buffer | undefined> { return this.manifests.referrerAnnotations(repo, digest); }
  catalog(last: string, n: number): Promise<string[]> { return this.index.listRepos(last, n); }
  async repositoryExists(repo: string): Promise<boolean> { return await this.index.repository(repo) !== undefined; }

  /** What storage holds in memory and in flight, for operators and the bounds' tests. */
  async stats() {
    return {
      trackedRepositories: this.core.trackedRepositories,
      cachedReferences: this.manifests.cachedReferences,
      liveUploads: this.uploads.liveCount,
      openUploads: await this.index.uploadCount(),
      gc: { ...this.gcTotals },
    };
  }

  // ---------------------------------------------------------------- the image builder's facade (src/build)
  // What src/build needs of storage beyond blobs, manifests and tags: its build records,
  // the layers it may reuse, and where its scratch files, GC roots and logs go. The builder
  // uses these and never the index or the layout itself.

  /** The record of `repo`'s image built for `hash`, evicted or not. */
  getBuild(repo: string, hash: string): Promise<BuildRow | undefined> { return this.index.getBuild(repo, hash); }
  /** Records a finished build (it counts as pulled now). */
  putBuild(b: Omit<BuildRow, 'evicted_at'>): Promise<void> { return this.index.putBuild(b); }
  /** Whether any image was ever built in `repo`. */
  hasBuilds(repo: string): Promise<boolean> { return this.index.hasBuilds(repo); }
  /** The manifest digest `tag` names in `repo`, without reading the manifest. */
  tagged(repo: string, tag: string): Promise<string | undefined> { return this.index.resolveTag(repo, tag); }
  /** A layer built before with the same contents key, if its blob is still stored. */
  getLayer(key: string): Promise<LayerRow | undefined> { return this.index.getLayer(key); }
  putLayer(key: string, layer: LayerRow): Promise<void> { return this.index.putLayer(key, layer); }
  /** Links a stored blob into `repo`; false if the blob is not stored. */
  linkBlob(repo: string, digest: string): Promise<boolean> { return this.index.linkBlob(repo, digest); }
  /** Waits until this process alone, of all on the index, holds `key`; resolves to its release (Index.lease; one process: at once). */
  async lease(key: string, signal?: AbortSignal, waiting?: () => void): Promise<() => Promise<void>> {
    if (this.index.lease) return this.index.lease(key, signal, waiting);
    signal?.throwIfAborted();
    return async () => {};
  }
  /** The data directory: tells stores in one process apart. */ get root(): string { return this.layout.root; }
  /** Scratch files of writes, on the blobs' file system (committed with commitFile). */
  get tmpDir(): string { return this.layout.tmpDir; }
  /** Where builds keep the GC roots of the closures they read. */ get gcrootsDir(): string { return this.layout.gcrootsDir; }
  /** Where build logs go: the directory, and the file of the build `id`. */
  get logsDir(): string { return this.layout.logsDir; }
  logPath(id: string): string { return this.layout.logPath(id); }
  /** Where replicas share the index: every replica's build jobs (index/job-store.ts). */ get jobStore(): JobStore | undefined { return this.index.jobs; }
}

/** The rows of the builder's facade, so that src/build need not import the index. */
export type { BuildRow, LayerRow, JobRecord, JobStore, LogChunk, StoredJob };
