// The top of the build room's pipeline, behind the ImageSource seam (image-source.ts):
// a pull walks down from here, once, through
//   name → origin (origins/) → evaluation (evaluate.ts) → realisation and assembly
//   (builder.ts over nix/, assembly/, ingest/) → record (record.ts),
// and no stage calls back up. This module alone decides which tags a repository has and
// what each costs: `latest` (evaluate now, build if new), hash tags (the image's store
// path hash: served from its record without Nix when built, else built if the expression
// still yields it), the full commits of a pinned package set (immutable: served from
// the record). Digests are plain storage. Builds run as jobs (jobs/): a pull waits for one
// at most --pull-wait, POST /nixreg/builds starts one ahead, and --prebuild starts them
// when the images directory changes (origins/watch.ts).
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { opendirSync, realpathSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Storage } from '../blobs/storage.js';
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import { DEFAULT_COMPRESSION, formatOf, type CompressionSetting } from './assembly/compression.js';
import { Builder } from './builder.js';
import { BuildQueueFull, NoImageExpression, StillBuilding, TagNotServed } from './errors.js';
import { Evaluator, type Evaluation } from './evaluate.js';
import type { BuildLogHandle, ImageSource, NixStatus } from './image-source.js';
import { Jobs, JobsFull, type Job, type JobView } from './jobs/jobs.js';
import { SharedJobs } from './jobs/shared.js';
import { HASH_TAG, nixProcessCount, probeProcessCount } from './nix/nix.js';
import { NixHealth } from './nix/nix-health.js';
import { Origins } from './origins/index.js';
import { COMMIT_TAG } from './origins/origins.js';
import { ImagesWatcher } from './origins/watch.js';
import { Records } from './record.js';
import type { BuiltImage } from './types.js';

export interface SourceOptions {
  /** Directory of image expressions. */
  images: string;
  /** --packages SOURCE: names no image file or flake serves are package lists of this set (origins/origins.ts). */
  packages?: string | undefined;
  /** Kill a realisation after this long (default 10 min). */
  buildTimeoutMs?: number | undefined;
  /** Builds running at once; more wait in a queue (default 2). */
  maxBuilds?: number | undefined;
  /** An evaluation is reused this long while its file is unchanged (default 10 s). */
  evalTtlMs?: number | undefined;
  /** A failed evaluation or build is answered from memory this long (default 30 s). */
  negativeTtlMs?: number | undefined;
  /** Build records and logs kept (default 100). */
  keepLogs?: number | undefined;
  /** How layers are compressed (default gzip -6); an image built otherwise is rebuilt when pulled. */
  compression?: CompressionSetting | undefined;
  /** Environment of Nix processes (tests pass offline settings; users' own apply otherwise). */
  nixEnv?: NodeJS.ProcessEnv | undefined;
  log?: Logger | undefined;
  /** A pull waits this long for a build, then gets StillBuilding (default 25 s; --pull-wait). */
  pullWaitMs?: number | undefined;
  /** Watch the images directory (default on; `nixreg build` turns it off). */
  watch?: boolean | undefined;
  /** After a change under the images directory (and at start), build what changed (--prebuild). */
  prebuild?: boolean | undefined;
}

/** What a request is waiting for, for the words of StillBuilding. */
interface Waiting { job?: Job | undefined; since: number }

export class NixImageSource implements ImageSource {
  /** The stages of the pipeline, in its order. */
  readonly origins: Origins;
  readonly evaluator: Evaluator;
  readonly builder: Builder;
  readonly records: Records;
  readonly jobs: Jobs;
  /** Where the index is shared: every replica's jobs (jobs/shared.ts). */
  private readonly shared: SharedJobs | undefined;
  readonly watcher: ImagesWatcher | undefined;

  private readonly images: string;
  private readonly pullWaitMs: number;
  private readonly prebuildOn: boolean;
  /** A prebuild pass running, and whether another change asks for one more after it. */
  private prebuilding: Promise<void> | undefined;
  private prebuildAgain = false;
  private closed = false;
  private readonly log: Logger | undefined;

  constructor(storage: Storage, opts: SourceOptions) {
    const o = {
      buildTimeoutMs: 600_000, maxBuilds: 2, evalTtlMs: 10_000, negativeTtlMs: 30_000, keepLogs: 100, compression: DEFAULT_COMPRESSION,
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
    } as Required<Omit<SourceOptions, 'log' | 'nixEnv' | 'packages'>> & Pick<SourceOptions, 'log' | 'nixEnv' | 'packages'>;
    const { images, nixEnv, log } = o;
    this.images = images;
    this.log = log;
    this.pullWaitMs = o.pullWaitMs ?? 25_000;
    this.prebuildOn = !!o.prebuild;
    const health = new NixHealth({ env: nixEnv, log });
    // A package-list name pushed to (content, but no image built here) is plain storage.
    this.origins = new Origins({
      images, packages: o.packages, evalTtlMs: o.evalTtlMs, nixEnv, log,
      pushedTo: async (repo) => !await storage.hasBuilds(repo) && await storage.repositoryExists(repo),
    });
    this.evaluator = new Evaluator(storage, health, {
      images, evalTtlMs: o.evalTtlMs, negativeTtlMs: o.negativeTtlMs, timeoutMs: o.buildTimeoutMs, concurrency: Math.max(2, o.maxBuilds), nixEnv, log,
    });
    this.records = new Records(storage, formatOf(o.compression), log);
    const store = storage.jobStore;
    if (store) this.shared = new SharedJobs(store, o.keepLogs ?? 100, storage.logsDir);
    this.jobs = new Jobs(storage, o.keepLogs, this.shared);
    this.builder = new Builder(storage, health, this.records, {
      images, buildTimeoutMs: o.buildTimeoutMs, maxBuilds: o.maxBuilds, negativeTtlMs: o.negativeTtlMs, compression: o.compression, nixEnv, log,
    });
    if (o.watch ?? true) {
      let dir = images;
      try { dir = realpathSync(dir); } catch { /* not there yet: watched as named */ }
      this.watcher = new ImagesWatcher(dir, {
        log,
        onChange: (path, key) => {
          this.evaluator.invalidate(path, key);
          this.origins.changed(path);
        },
        onSettled: () => { void this.settled(); },
      });
    }
    void (this.watcher?.ready ?? Promise.resolve()).then(() => this.settled());
  }

  owns(repo: string): boolean {
    return this.origins.of(repo) !== undefined;
  }

  serves(repo: string): Promise<boolean> {
    return this.origins.serves(repo);
  }

  private listed: { at: number; names: string[] } | undefined;

  names(): string[] {
    // A directory walk: the web page's list asks on every load, the answer is kept a few seconds.
    if (!this.listed || Date.now() - this.listed.at > 5000) this.listed = { at: Date.now(), names: this.origins.names().sort() };
    return this.listed.names;
  }

  async madeFrom(repo: string): Promise<'image file' | 'flake' | 'package list' | undefined> {
    const o = this.origins.of(repo);
    if (o) return o.kind === 'file' ? 'image file' : 'flake';
    return await this.origins.serves(repo) ? 'package list' : undefined;
  }

  async resolve(repo: string, ref: Reference, accepts: (mediaType: string) => boolean): Promise<Descriptor | undefined> {
    const tag = ref.tag;
    if (tag === undefined) return undefined;
    const waiting: Waiting = { since: Date.now() };
    const work = this.image(repo, tag, waiting);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(this.stillBuilding(repo, tag, waiting)), this.pullWaitMs);
    });
    try {
      return pick(await Promise.race([work, timeout]), accepts);
    } finally {
      clearTimeout(timer);
    }
  }

  private stillBuilding(repo: string, tag: string, w: Waiting): StillBuilding {
    const job = w.job;
    if (job) {
      return new StillBuilding(job.describe(this.builder.publicUrl), job.retryAfter(),
        { build: job.url, status: job.status, log: job.logUrl });
    }
    return new StillBuilding(`building ${repo}:${tag}: evaluating its expression to see whether it yields ${tag}, `
      + `${Math.round((Date.now() - w.since) / 1000)} s so far`, 10, { status: 'evaluating' });
  }

  /** The built image for `tag`, building it if needed; `w` learns the job it waits for. */
  async image(repo: string, tag: string, w: Waiting = { since: Date.now() }): Promise<BuiltImage> {
    try {
      return await this.imageFrom(repo, tag, w);
    } catch (e) {
      // A flake at the top of --images without this output: a package list, if any.
      if (!this.origins.retryAsPackageList(repo, e)) throw e;
      return this.imageFrom(repo, tag, w);
    }
  }

  private async imageFrom(repo: string, tag: string, w: Waiting): Promise<BuiltImage> {
    if (HASH_TAG.test(tag)) {
      const done = await this.records.lookup(repo, tag);
      if (done) return done;
      const running = this.jobs.find(repo, tag);
      if (running) { w.job = running; return running.done; }
      // No job yet: distinct hash tags of one repository share its one evaluation, so a
      // flood of made-up tags costs one nix-instantiate, and no job each.
      const ev = await this.evaluator.evaluate(repo, await this.origins.at(repo, 'latest'));
      await this.checkHashTag(repo, tag, ev);
      w.job = this.startJob(repo, tag, (job) => this.builder.ensureBuilt(ev, job));
      return w.job.done;
    }
    this.origins.checkTag(repo, tag);
    // A full commit of a pinned package set is immutable: once built, no git, no Nix.
    const pinned = COMMIT_TAG.test(tag) ? await this.records.lookup(repo, tag) : undefined;
    if (pinned) return pinned;
    // The common pull: evaluated a moment ago and built long ago. No job for that.
    const origin = await this.origins.at(repo, tag);
    const ev = this.evaluator.cached(origin);
    const done = ev && await this.records.lookup(repo, ev.hash);
    if (done) return this.tagged(tag, ev, done);
    w.job = this.startJob(repo, tag, (job) => this.buildTag(repo, tag, job));
    return w.job.done;
  }

  /** name → origin → evaluation → build → record, for `repo:tag` (not a hash tag). */
  private async buildTag(repo: string, tag: string, job: Job): Promise<BuiltImage> {
    const ev = await this.evaluator.evaluate(repo, await this.origins.at(repo, tag), job);
    return this.tagged(tag, ev, await this.builder.ensureBuilt(ev, job));
  }

  /** `latest` moves to the image; a pinned package set's commit names it for good. */
  private async tagged(tag: string, ev: Evaluation, built: BuiltImage): Promise<BuiltImage> {
    if (tag === 'latest') await this.records.tagLatest(ev.repo, built);
    const rev = ev.origin.args.rev;
    if (rev !== undefined) await this.records.alias(ev, rev, built);
    return built;
  }

  private async checkHashTag(repo: string, tag: string, ev: Evaluation): Promise<void> {
    if (tag === ev.hash || tag === ev.outHash) return;
    const evicted = await this.records.evicted(repo, tag);
    const current = ev.outHash ?? ev.hash;
    throw new TagNotServed(evicted
      ? `image ${repo}:${tag} was evicted from the cache of built images, and ${repo} now evaluates to ${current}, so it cannot be rebuilt; pull ${repo}:latest or ${repo}:${current}`
      : `image ${repo}:${tag} was never built here and ${repo} now evaluates to ${current}; pull ${repo}:latest or ${repo}:${ev.hash}`,
    { hash: tag, current: ev.hash, ...(evicted ? { evicted: true } : {}) });
  }

  private startJob(repo: string, tag: string, work: (job: Job) => Promise<BuiltImage>): Job {
    try {
      return this.jobs.start(repo, tag, work, (e) => (e instanceof Error ? e.message : String(e)));
    } catch (e) {
      if (e instanceof JobsFull) throw new BuildQueueFull(`cannot start building ${repo}:${tag} now: ${e.message}; try again shortly`);
      throw e;
    }
  }

  async startBuild(repo: string, tag: string): Promise<JobView> {
    if (!await this.serves(repo)) throw new NoImageExpression(`no image expression for ${repo}`, { name: repo });
    let job: Job;
    if (HASH_TAG.test(tag)) {
      job = this.startJob(repo, tag, async (j) => {
        const done = await this.records.lookup(repo, tag);
        if (done) return done;
        const ev = await this.evaluator.evaluate(repo, await this.origins.at(repo, 'latest'), j);
        await this.checkHashTag(repo, tag, ev);
        return this.builder.ensureBuilt(ev, j);
      });
    } else {
      this.origins.checkTag(repo, tag);
      job = this.startJob(repo, tag, (j) => this.buildTag(repo, tag, j));
    }
    // Asked for by name: listed even if there was nothing to build.
    job.keep = true;
    return job.view();
  }

  /** After start and after changes: learn what the images directory holds, then prebuild. */
  private async settled(): Promise<void> {
    await this.origins.settled();
    if (this.prebuildOn) await this.prebuild();
  }

  /**
   * --prebuild: evaluates every image and builds those whose evaluation is new, one
   * image at a time, so that pulls keep the rest of the build slots. A change during a
   * pass asks for one more pass after it.
   */
  prebuild(): Promise<void> {
    if (this.prebuilding) { this.prebuildAgain = true; return this.prebuilding; }
    const log = this.log;
    this.prebuilding = (async () => {
      do {
        this.prebuildAgain = false;
        const names = this.origins.names();
        let built = 0;
        for (const repo of names) {
          if (this.closed || this.prebuildAgain) break;
          try {
            // Not every .nix file is an image (a shared lib.nix): those fail here quietly.
            const ev = await this.evaluator.evaluate(repo, this.origins.find(repo));
            if (await this.records.lookup(repo, ev.hash)) continue;
            await this.image(repo, 'latest');
            built++;
          } catch (e) {
            log?.debug({ repo, error: (e as Error).message }, 'prebuild: skipped');
          }
        }
        log?.info({ images: names.length, built }, 'prebuild pass done');
      } while (this.prebuildAgain && !this.closed);
    })().finally(() => { this.prebuilding = undefined; });
    return this.prebuilding;
  }

  standingTags(): string[] {
    return ['latest'];
  }

  async builds(): Promise<JobView[]> {
    return this.shared ? this.shared.views(this.jobs) : this.jobs.list().map((j) => j.view());
  }

  async build(id: string): Promise<JobView | undefined> {
    return this.jobs.get(id)?.view() ?? await this.shared?.view(id);
  }

  async buildLog(id: string): Promise<BuildLogHandle | undefined> {
    return this.jobs.get(id)?.logHandle(this.builder.publicUrl) ?? await this.shared?.handle(id, this.builder.publicUrl);
  }

  stats(): Record<string, unknown> {
    return {
      buildsStarted: this.builder.buildsStarted,
      evaluationsStarted: this.evaluator.evaluationsStarted,
      ...this.builder.stats(),
      jobs: this.jobs.runningCount,
      imagesChanges: this.watcher?.changes ?? null,
      nixProcesses: nixProcessCount(),
      // Whether Nix can build here (nix/nix-health.ts), and the Nix processes that finding out took.
      nix: this.builder.health.status(),
      nixProbeProcesses: probeProcessCount(),
      // Threads that compress layers, as libuv read them at start-up (src/main.cts sets
      // them); null means libuv's default of 4, i.e. the pool was not sized.
      threadPool: process.env.UV_THREADPOOL_SIZE ?? null,
    };
  }

  onBuildFinished(listener: (result: 'succeeded' | 'failed', seconds: number) => void): void {
    this.builder.buildListeners.add(listener);
  }

  nixReadiness(): NixStatus | undefined {
    if (!hasEntries(this.images)) return undefined;
    const health = this.builder.health;
    // Re-probes only a failure older than its recheck interval (else the cached verdict):
    // a registry taken out of service gets no pulls, so only this can find Nix fixed.
    health.ready().catch(() => {});
    return health.status();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.shared?.close();
    await this.watcher?.close();
  }
}

/** Whether `dir` exists and holds anything: reads one entry, not the whole listing. */
function hasEntries(dir: string): boolean {
  try {
    const d = opendirSync(dir);
    try { return d.readSync() !== null; } finally { d.closeSync(); }
  } catch { return false; }
}

/** OCI by default; the second encoding for a client whose Accept excludes the first. */
function pick(b: BuiltImage, accepts: (mediaType: string) => boolean): Descriptor {
  if (!accepts(b.manifest.mediaType) && b.alternate && accepts(b.alternate.mediaType)) return b.alternate;
  return b.manifest;
}
