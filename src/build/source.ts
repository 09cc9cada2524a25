// Build-on-pull behind the ImageSource seam (image-source.ts). Tags of an
// expression-backed repository: `latest` (evaluate now, build if new) and hash tags (the
// image's store path hash: served from storage without Nix when built, else built if the
// expression still yields it). Digests are plain storage. Builds run as jobs (jobs.ts):
// a pull waits for one at most --pull-wait, POST /nixreg/builds starts one ahead, and
// --prebuild starts them when the images directory changes (watch.ts).
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { opendirSync, realpathSync } from 'node:fs';
import { LRUCache } from 'lru-cache';
import type { Storage } from '../blobs/storage.js';
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import { Builder, type BuilderOptions, type Evaluation } from './builder.js';
import { BuildQueueFull, FlakeOutputMissing, NoImageExpression, StillBuilding, TagNotServed } from './errors.js';
import type { BuildLogHandle, ImageSource, NixStatus } from './image-source.js';
import { JobsFull, type Job, type JobView } from './jobs/jobs.js';
import { HASH_TAG, evaluateImage, nixProcessCount, probeProcessCount } from './nix/nix.js';
import { COMMIT_TAG, PackageSource, UnknownRevision, packagesOrigin, type Origin } from './origins/origins.js';
import { resolveTopFlake } from './origins/resolve.js';
import type { BuiltImage } from './types.js';
import { ImagesWatcher, hasFlake, listImages } from './origins/watch.js';

export interface SourceOptions extends BuilderOptions {
  /** --packages SOURCE: names no image file or flake serves are package lists of this set (origins.ts). */
  packages?: string | undefined;
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
  private readonly packages: PackageSource | undefined;
  private readonly evalTtlMs: number;
  private readonly nixEnv: NodeJS.ProcessEnv | undefined;
  /** One-segment names the top-level flake turned out not to have (until the next change). */
  private readonly flakeMissing = new LRUCache<string, true>({ max: 10_000 });
  /** The top-level flake's output names, as of the flake.nix version `key`. */
  private flakeNames: { key: string; names: Set<string> } | undefined;

  constructor(private readonly storage: Storage, opts: SourceOptions) {
    this.builder = new Builder(storage, opts);
    this.images = opts.images;
    this.packages = opts.packages !== undefined ? PackageSource.parse(opts.packages, opts.nixEnv) : undefined;
    this.evalTtlMs = opts.evalTtlMs ?? 10_000;
    this.nixEnv = opts.nixEnv;
    this.pullWaitMs = opts.pullWaitMs ?? 25_000;
    this.prebuildOn = !!opts.prebuild;
    if (opts.watch ?? true) {
      let dir = opts.images;
      try { dir = realpathSync(dir); } catch { /* not there yet: watched as named */ }
      this.watcher = new ImagesWatcher(dir, {
        log: opts.log,
        onChange: (path, key) => {
          this.builder.invalidate(path, key);
          this.flakeMissing.clear();
          // Seen at once, so that the next pull finds a new flake; a removed one when settled.
          if (path.endsWith('/flake.nix')) this.builder.flakes = true;
        },
        onSettled: () => { void this.settled(); },
      });
    }
    void (this.watcher?.ready ?? Promise.resolve()).then(() => this.settled());
  }

  owns(repo: string): boolean {
    return this.originOf(repo) !== undefined;
  }

  serves(repo: string): boolean {
    return this.owns(repo) || this.unclaimedPackageList(repo);
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
      if (!(e instanceof FlakeOutputMissing) || !this.packages || this.flakeMissing.has(repo)) throw e;
      this.flakeMissing.set(repo, true);
      return this.imageFrom(repo, tag, w);
    }
  }

  private async imageFrom(repo: string, tag: string, w: Waiting): Promise<BuiltImage> {
    const b = this.builder;
    if (HASH_TAG.test(tag)) {
      const done = b.lookup(repo, tag);
      if (done) return done;
      const running = b.jobs.find(repo, tag);
      if (running) { w.job = running; return running.done; }
      // No job yet: distinct hash tags of one repository share its one evaluation, so a
      // flood of made-up tags costs one nix-instantiate, and no job each.
      const ev = await b.evaluate(repo, undefined, await this.originAt(repo, 'latest'));
      this.checkHashTag(repo, tag, ev);
      w.job = this.startJob(repo, tag, (job) => b.ensureBuilt(ev, job));
      return w.job.done;
    }
    this.checkTag(repo, tag);
    // A full commit of a pinned package set is immutable: once built, no git, no Nix.
    const pinned = COMMIT_TAG.test(tag) ? b.lookup(repo, tag) : undefined;
    if (pinned) return pinned;
    // The common pull: evaluated a moment ago and built long ago. No job for that.
    const origin = await this.originAt(repo, tag);
    const ev = b.cachedEvaluation(repo, origin);
    const done = ev && b.lookup(repo, ev.hash);
    if (done) return this.tagged(repo, tag, ev, done);
    w.job = this.startJob(repo, tag, (job) => this.buildTag(repo, tag, job));
    return w.job.done;
  }

  private async buildTag(repo: string, tag: string, job: Job): Promise<BuiltImage> {
    const ev = await this.builder.evaluate(repo, job, await this.originAt(repo, tag));
    return this.tagged(repo, tag, ev, await this.builder.ensureBuilt(ev, job));
  }

  /** `latest` moves to the image; a pinned package set's commit names it for good. */
  private tagged(repo: string, tag: string, ev: Evaluation, built: BuiltImage): BuiltImage {
    if (tag === 'latest') this.tagLatest(repo, built);
    const rev = ev.origin.args.rev;
    if (rev !== undefined) this.builder.recordAlias(ev, rev, built);
    return built;
  }

  /** Where `repo` comes from under --images: its image file, else a flake output not known to be missing. */
  private originOf(repo: string): Origin | undefined {
    const o = this.builder.origin(repo);
    if (o?.kind !== 'flake' || o.args.attr === 'default') return o;
    if (this.flakeMissing.has(repo)) return undefined;
    const known = this.flakeNames;
    return !known || known.key !== o.key || known.names.has(repo) ? o : undefined;
  }

  /**
   * Whether `repo`, a name no image file or flake serves (the caller has looked), is a
   * package list: --packages is on and nobody pushed to it.
   */
  private unclaimedPackageList(repo: string): boolean {
    if (!this.packages) return false;
    // A repository pushed to (content, but no image built here) is plain storage.
    return this.storage.index.hasBuilds(repo) || !this.storage.repositoryExists(repo);
  }

  /** What `repo:tag` is built from now (for a pinned package set, at the commit the tag names). */
  private async originAt(repo: string, tag: string): Promise<Origin> {
    const o = this.originOf(repo);
    if (o) return o;
    if (!this.unclaimedPackageList(repo)) throw new NoImageExpression(`no image expression for ${repo}`, { name: repo });
    return packagesOrigin(repo, this.packages!, await this.revision(tag));
  }

  private checkTag(repo: string, tag: string): void {
    if (tag === 'latest') return;
    const expression = this.originOf(repo) !== undefined;
    if (expression || !this.packages?.pinned) {
      // Where the package set lives is the operator's business, not the client's.
      throw new TagNotServed(expression
        ? `${repo} is built from a Nix expression: its tags are latest and the hashes of built images, not ${tag}`
        : `${repo} is a package list: its tags are latest and the hashes of built images, not ${tag} `
          + '(tags pin a package set only when it is a git repository)', { tag });
    }
  }

  /** The commit a tag names in a pinned package set (refs listed within --eval-ttl); undefined for other sets. */
  private async revision(tag: string): Promise<string | undefined> {
    const src = this.packages!;
    try {
      return await src.revision(tag, this.evalTtlMs);
    } catch (e) {
      if (e instanceof UnknownRevision) {
        throw new TagNotServed(`the package set has no branch, tag or commit ${tag}`, { tag });
      }
      throw e;
    }
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
    if (!this.serves(repo)) throw new NoImageExpression(`no image expression for ${repo}`, { name: repo });
    const b = this.builder;
    let job: Job;
    if (HASH_TAG.test(tag)) {
      job = this.startJob(repo, tag, async (j) => {
        const done = b.lookup(repo, tag);
        if (done) return done;
        const ev = await b.evaluate(repo, j, await this.originAt(repo, 'latest'));
        this.checkHashTag(repo, tag, ev);
        return b.ensureBuilt(ev, j);
      });
    } else {
      this.checkTag(repo, tag);
      job = this.startJob(repo, tag, (j) => this.buildTag(repo, tag, j));
    }
    // Asked for by name: listed even if there was nothing to build.
    job.keep = true;
    return job.view();
  }

  /** After start and after changes: learn the top-level flake's outputs, then prebuild. */
  private async settled(): Promise<void> {
    this.builder.flakes = hasFlake(this.images);
    await this.readFlakeNames();
    if (this.prebuildOn) await this.prebuild();
  }

  /**
   * The output names of `<images>/flake.nix`, so that a one-segment name it does not
   * have is a package list, or a plain repository one may push to. Until they are known
   * every one-segment name is the flake's.
   */
  private async readFlakeNames(): Promise<void> {
    const top = resolveTopFlake(this.images);
    if (!top) { this.flakeNames = undefined; return; }
    try {
      const r = await evaluateImage({ flake: top.dir, list: '1' }, { env: this.nixEnv, timeoutMs: 120_000, flakes: true });
      this.flakeNames = { key: top.key, names: new Set(r.outputs ?? []) };
    } catch (e) {
      this.builder.log?.warn({ error: (e as Error).message.slice(0, 2000) }, 'cannot list the outputs of flake.nix in --images');
    }
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
        const names = [...new Set([...listImages(this.images), ...(this.flakeNames?.names ?? [])])];
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
    return this.builder.jobs.get(id)?.logHandle(this.builder.publicUrl);
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
