// Build-on-pull behind the ImageSource seam (image-source.ts). Tags of an
// expression-backed repository: `latest` (evaluate now, build if new) and hash tags (the
// image's store path hash: served from storage without Nix when built, else built if the
// expression still yields it). Digests are plain storage. Builds run as jobs (jobs.ts):
// a pull waits for one at most --pull-wait, POST /nixreg/builds starts one ahead, and
// --prebuild starts them when the images directory changes (watch.ts).
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { opendirSync, realpathSync } from 'node:fs';
import type { Storage } from '../blobs/storage.js';
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import { Builder, type BuilderOptions, type Evaluation } from './builder.js';
import { BuildQueueFull, NoImageExpression, StillBuilding, TagNotServed } from './errors.js';
import type { BuildLogHandle, ImageSource, NixStatus } from './image-source.js';
import { JobsFull, type Job, type JobView } from './jobs.js';
import { HASH_TAG, nixProcessCount, probeProcessCount } from './nix.js';
import type { BuiltImage } from './types.js';
import { ImagesWatcher, listImages } from './watch.js';

export interface SourceOptions extends BuilderOptions {
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
  readonly builder: Builder;
  readonly watcher: ImagesWatcher | undefined;

  private readonly images: string;
  private readonly pullWaitMs: number;
  private readonly prebuildOn: boolean;
  /** A prebuild pass running, and whether another change asks for one more after it. */
  private prebuilding: Promise<void> | undefined;
  private prebuildAgain = false;
  private closed = false;

  constructor(private readonly storage: Storage, opts: SourceOptions) {
    this.builder = new Builder(storage, opts);
    this.images = opts.images;
    this.pullWaitMs = opts.pullWaitMs ?? 25_000;
    this.prebuildOn = !!opts.prebuild;
    if (opts.watch ?? true) {
      let dir = opts.images;
      try { dir = realpathSync(dir); } catch { /* not there yet: watched as named */ }
      this.watcher = new ImagesWatcher(dir, {
        log: opts.log,
        onChange: (path, key) => this.builder.invalidate(path, key),
        onSettled: this.prebuildOn ? () => this.prebuild() : undefined,
      });
    }
    if (this.prebuildOn) void (this.watcher?.ready ?? Promise.resolve()).then(() => this.prebuild());
  }

  owns(repo: string): boolean {
    return this.builder.file(repo) !== undefined;
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
    const b = this.builder;
    if (HASH_TAG.test(tag)) {
      const done = b.lookup(repo, tag);
      if (done) return done;
      const running = b.jobs.find(repo, tag);
      if (running) { w.job = running; return running.done; }
      // No job yet: distinct hash tags of one repository share its one evaluation, so a
      // flood of made-up tags costs one nix-instantiate, and no job each.
      const ev = await b.evaluate(repo);
      this.checkHashTag(repo, tag, ev);
      w.job = this.startJob(repo, tag, (job) => b.ensureBuilt(ev, job));
      return w.job.done;
    }
    if (tag !== 'latest') {
      throw new TagNotServed(
        `${repo} is built from a Nix expression: its tags are latest and the hashes of built images, not ${tag}`, { tag });
    }
    // The common pull: evaluated a moment ago and built long ago. No job for that.
    const ev = b.cachedEvaluation(repo);
    const done = ev && b.lookup(repo, ev.hash);
    if (done) return this.tagLatest(repo, done);
    w.job = this.startJob(repo, 'latest', (job) => this.buildLatest(repo, job));
    return w.job.done;
  }

  private async buildLatest(repo: string, job: Job): Promise<BuiltImage> {
    const ev = await this.builder.evaluate(repo, job);
    return this.tagLatest(repo, await this.builder.ensureBuilt(ev, job));
  }

  private tagLatest(repo: string, built: BuiltImage): BuiltImage {
    if (this.storage.index.resolveTag(repo, 'latest') !== built.manifest.digest) this.storage.tag(repo, 'latest', built.manifest.digest);
    return built;
  }

  private checkHashTag(repo: string, tag: string, ev: Evaluation): void {
    if (tag === ev.hash || tag === ev.outHash) return;
    const evicted = this.storage.index.getBuild(repo, tag)?.evicted_at != null;
    const current = ev.outHash ?? ev.hash;
    throw new TagNotServed(evicted
      ? `image ${repo}:${tag} was evicted from the cache of built images, and ${repo} now evaluates to ${current}, so it cannot be rebuilt; pull ${repo}:latest or ${repo}:${current}`
      : `image ${repo}:${tag} was never built here and ${repo} now evaluates to ${current}; pull ${repo}:latest or ${repo}:${ev.hash}`,
    { hash: tag, current: ev.hash, ...(evicted ? { evicted: true } : {}) });
  }

  private startJob(repo: string, tag: string, work: (job: Job) => Promise<BuiltImage>): Job {
    try {
      return this.builder.jobs.start(repo, tag, work, (e) => (e instanceof Error ? e.message : String(e)));
    } catch (e) {
      if (e instanceof JobsFull) throw new BuildQueueFull(`cannot start building ${repo}:${tag} now: ${e.message}; try again shortly`);
      throw e;
    }
  }

  startBuild(repo: string, tag: string): JobView {
    if (!this.owns(repo)) throw new NoImageExpression(`no image expression for ${repo}`, { name: repo });
    const b = this.builder;
    let job: Job;
    if (HASH_TAG.test(tag)) {
      job = this.startJob(repo, tag, async (j) => {
        const done = b.lookup(repo, tag);
        if (done) return done;
        const ev = await b.evaluate(repo, j);
        this.checkHashTag(repo, tag, ev);
        return b.ensureBuilt(ev, j);
      });
    } else if (tag === 'latest') {
      job = this.startJob(repo, 'latest', (j) => this.buildLatest(repo, j));
    } else {
      throw new TagNotServed(`${repo} is built from a Nix expression: its tags are latest and the hashes of built images, not ${tag}`, { tag });
    }
    // Asked for by name: listed even if there was nothing to build.
    job.keep = true;
    return job.view();
  }

  /**
   * --prebuild: evaluates every image and builds those whose evaluation is new, one
   * image at a time, so that pulls keep the rest of the build slots. A change during a
   * pass asks for one more pass after it.
   */
  prebuild(): Promise<void> {
    if (this.prebuilding) { this.prebuildAgain = true; return this.prebuilding; }
    const log = this.builder.log;
    this.prebuilding = (async () => {
      do {
        this.prebuildAgain = false;
        const names = listImages(this.images);
        let built = 0;
        for (const repo of names) {
          if (this.closed || this.prebuildAgain) break;
          try {
            // Not every .nix file is an image (a shared lib.nix): those fail here quietly.
            const ev = await this.builder.evaluate(repo);
            if (this.builder.lookup(repo, ev.hash)) continue;
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

  builds(): JobView[] {
    return this.builder.jobs.list().map((j) => j.view());
  }

  build(id: string): JobView | undefined {
    return this.builder.jobs.get(id)?.view();
  }

  buildLog(id: string): BuildLogHandle | undefined {
    const job = this.builder.jobs.get(id);
    if (!job) return undefined;
    const publicUrl = this.builder.publicUrl;
    return {
      path: job.logPath,
      repo: job.repo,
      finished: () => job.logClosed,
      changed: (ms) => new Promise<void>((r) => {
        if (job.logClosed) { r(); return; }
        const done = () => { clearTimeout(t); job.events.off('data', done); job.events.off('end', done); r(); };
        const t = setTimeout(done, ms);
        job.events.once('data', done);
        job.events.once('end', done);
      }),
      describe: () => job.describe(publicUrl),
    };
  }

  stats(): Record<string, unknown> {
    return {
      ...this.builder.stats(),
      imagesChanges: this.watcher?.changes ?? null,
      nixProcesses: nixProcessCount(),
      // Whether Nix can build here (nix-health.ts), and the Nix processes that finding out took.
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
