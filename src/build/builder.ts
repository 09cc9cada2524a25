// The build pipeline: image file → evaluation (cached briefly, single-flight) →
// realisation under GC roots (bounded concurrency, timeout) → closure → assembly or
// ingestion → recorded and tagged by hash. Any number of concurrent requests for the
// same image share one evaluation and one build; failures are remembered briefly.
// Each build runs for a job (jobs.ts), whose log and progress it writes.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { promises as fs, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { makeDir } from '../blobs/core.js';
import { StorageFull } from '../blobs/errors.js';
import type { Storage } from '../blobs/storage.js';
import { assembleImage } from './assembly/assemble.js';
import { BuildError, BuildFailed, EvaluationFailed, FlakeOutputMissing, NixUnavailable, NoImageExpression, UnknownPackages } from './errors.js';
import { ingestImageOutput, isImageOutput } from './ingest/ingest.js';
import { warnIfUntied } from './nix/child.js';
import { DEFAULT_COMPRESSION, formatOf, LEGACY_FORMAT, type CompressionSetting } from './assembly/compression.js';
import { Jobs, type Job } from './jobs/jobs.js';
import { NixError, closureOf, evaluateImage, hashPart, outputsOf, realise, realiseProgress, type EvalJSON } from './nix/nix.js';
import { closest, fileOrigin, flakeOrigin, type Origin } from './origins/origins.js';
import { NixHealth, diagnose, sandboxHint } from './nix/nix-health.js';
import { hideImagesDir, imagesDirForms, resolveFlake, resolveImageFile, type ImageFile } from './origins/resolve.js';
import { ownRootsDir, removeDeadRoots } from './nix/roots.js';
import { Semaphore } from './semaphore.js';
import { platformOf, validateSpec } from './spec.js';
import type { BuiltImage, ImageSpec } from './types.js';

export interface BuilderOptions {
  /** Directory of image expressions. */
  images: string;
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
}

/** An evaluated image: what to build and the tag it will have. */
export interface Evaluation {
  repo: string;
  origin: Origin;
  /** Hash part of the image's identity path (eval.nix); the hash tag. */
  hash: string;
  /** For a bare derivation: the hash part of its own output, the tag if it is an image archive. */
  outHash?: string | undefined;
  raw: EvalJSON;
  spec: Omit<ImageSpec, 'contents'>;
}

interface EvalEntry { path: string; key: string; expires: number; value: Promise<Evaluation>; result?: Evaluation }
interface Flight { done: Promise<BuiltImage>; job: Job }
interface Failure { key: string; expires: number; error: BuildError }

export class Builder {
  readonly jobs: Jobs;
  /** Pipelines started (each realises and assembles once); for tests and metrics. */
  buildsStarted = 0;
  evaluationsStarted = 0;
  /** Told of each build as it ends, with its seconds (metrics; image-source.ts). */
  readonly buildListeners = new Set<(result: 'succeeded' | 'failed', seconds: number) => void>();
  /** Base of log URLs in error messages (set once the server knows its address). */
  publicUrl = '';
  /** Whether Nix can build here at all; builds wait for its verdict. */
  readonly health: NixHealth;
  /** By repository: bounded, since image files may come and go under --images. */
  private readonly evals = new LRUCache<string, EvalEntry>({ max: 10_000 });
  private readonly inflight = new Map<string, Flight>();
  private readonly failures = new Map<string, Failure>();
  private readonly sem: Semaphore;
  /** Evaluations of large package sets take much memory: bounded like builds. */
  private readonly evalSem: Semaphore;
  private readonly o: Required<Omit<BuilderOptions, 'log' | 'nixEnv'>> & Pick<BuilderOptions, 'log' | 'nixEnv'>;
  /** Where this process's builds keep their GC roots (roots.ts). */
  private readonly rootsDir: string;
  /** Builds of this process holding roots under rootsDir. */
  private rooted = 0;
  /** The layer format of this process's builds (compression.ts), recorded with each. */
  private readonly format: string;

  constructor(readonly storage: Storage, opts: BuilderOptions) {
    this.o = {
      buildTimeoutMs: 600_000, maxBuilds: 2, evalTtlMs: 10_000, negativeTtlMs: 30_000, keepLogs: 100, compression: DEFAULT_COMPRESSION,
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
    } as typeof this.o;
    this.format = formatOf(this.o.compression);
    this.sem = new Semaphore(Math.max(1, this.o.maxBuilds));
    this.evalSem = new Semaphore(Math.max(2, this.o.maxBuilds));
    this.jobs = new Jobs(storage.layout, this.o.keepLogs);
    this.health = new NixHealth({ env: this.o.nixEnv, log: this.o.log });
    this.rootsDir = ownRootsDir(storage.layout.gcrootsDir);
    warnIfUntied(this.o.log);
    // Roots of builds that a crash (kill -9) cut short would pin their closures forever.
    void removeDeadRoots(storage.layout.gcrootsDir, this.o.log);
  }

  /**
   * The file `path` under the images directory changed (to the version `key`, if it
   * still exists): any cached evaluation may be stale, since an image file may import
   * any file there, and the next pull of each image evaluates again. Spared are only
   * evaluations of that very file that already read that very version: the change is
   * often seen after the pull that it prompted has evaluated it.
   */
  invalidate(path: string, key: string | undefined): void {
    const stale = [...this.evals.entries()].filter(([, e]) => !(e.path === path && e.key === key)).map(([repo]) => repo);
    for (const repo of stale) this.evals.delete(repo);
  }

  /** The image file of `repo`, if an expression backs it. */
  file(repo: string): ImageFile | undefined {
    return resolveImageFile(this.o.images, repo);
  }

  /** What `repo` is built from under --images: its image file, else a flake's output. */
  origin(repo: string): Origin | undefined {
    const file = this.file(repo);
    if (file) return fileOrigin(repo, file);
    // Most images directories hold no flake: a plain repository's pull looks for none.
    const flake = this.flakes ? resolveFlake(this.o.images, repo) : undefined;
    return flake && flakeOrigin(repo, flake);
  }

  /** Whether --images holds a flake.nix anywhere (the source keeps it current, watch.ts). */
  flakes = true;

  /**
   * Evaluates `repo` (from `origin`, by default its file or flake), reusing a recent
   * evaluation (or failure) of the same origin as it is now; concurrent callers share
   * one nix-instantiate.
   */
  evaluate(repo: string, job?: Job, origin = this.origin(repo)): Promise<Evaluation> {
    if (!origin) return Promise.reject(new NoImageExpression(`no image expression for ${repo}`, { name: repo }));
    const hit = this.evals.get(origin.slot);
    if (hit && hit.key === origin.key && Date.now() < hit.expires) return hit.value;
    if (job) {
      job.evaluated = true;
      job.progress.enter('evaluating');
      job.line(`evaluating ${origin.name}`);
    }
    const entry: EvalEntry = { path: origin.path ?? '', key: origin.key, expires: Infinity, value: this.runEval(repo, origin) };
    this.evals.set(origin.slot, entry);
    entry.value.then(
      (ev) => { entry.result = ev; entry.expires = Date.now() + this.o.evalTtlMs; },
      // An environment problem is re-checked as often as the health check re-probes; a
      // full disk at the next request (space may be freed any moment).
      (e: unknown) => {
        entry.expires = Date.now() + (e instanceof StorageFull ? 0 : e instanceof NixUnavailable ? this.health.recheckMs : this.o.negativeTtlMs);
      },
    );
    return entry.value;
  }

  /** The evaluation that evaluate() would reuse now, if it has ended well. */
  cachedEvaluation(repo: string, origin = this.origin(repo)): Evaluation | undefined {
    const hit = origin && this.evals.get(origin.slot);
    if (!origin || !hit?.result || Date.now() >= hit.expires) return undefined;
    return origin.key === hit.key ? hit.result : undefined;
  }

  get log(): Logger | undefined { return this.o.log; }

  private async runEval(repo: string, origin: Origin): Promise<Evaluation> {
    this.evaluationsStarted++;
    let raw: EvalJSON;
    try {
      raw = await this.evalSem.run(() => evaluateImage(origin.args, { env: this.o.nixEnv, timeoutMs: this.o.buildTimeoutMs, flakes: origin.flakes, userDirs: imagesDirForms(this.o.images) }));
    } catch (e) {
      const full = this.outOfSpace(e, `evaluate the image ${repo}`);
      if (full) throw full;
      const unavailable = diagnose(e);
      if (unavailable) { this.health.lost(unavailable); throw unavailable; }
      const msg = origin.hide(hideImagesDir(e instanceof NixError ? e.message : String(e), this.o.images));
      this.o.log?.info({ repo, origin: origin.name, error: msg }, 'evaluation failed');
      throw new EvaluationFailed(`evaluating ${repo} failed:\n${msg}`, origin.kind === 'file' ? { file: origin.name } : { origin: origin.name });
    }
    if (raw.missing?.output !== undefined) {
      throw new FlakeOutputMissing(`${origin.name.replace(/#.*$/, '')} has no output packages.<system>.${raw.missing.output} or legacyPackages.<system>.${raw.missing.output}`, { output: raw.missing.output });
    }
    if (raw.missing?.packages) {
      const unknown = raw.missing.packages.map((m) => {
        if (m.part === 'shell') return 'shell (it adds the shell packages only as the first component)';
        const near = closest(m.part.split('.').pop()!, m.near);
        return `${m.part}${near.length ? ` (did you mean ${near.join(', ')}?)` : ''}`;
      });
      throw new UnknownPackages(`${repo} is a package list, and the package set has no ${unknown.join('; no ')}`,
        { unknown: raw.missing.packages.map((m) => m.part) });
    }
    const spec = validateSpec(repo, raw);
    const plat = platformOf(raw.system);
    return {
      repo, origin, raw,
      hash: hashPart(raw.imagePath),
      outHash: raw.kind === 'derivation' ? hashPart(raw.contents[0]!.out) : undefined,
      spec: { ...spec, architecture: spec.architecture ?? plat.architecture, os: plat.os },
    };
  }

  /** An image already built for `hash`, from the index alone (no Nix). */
  lookup(repo: string, hash: string): BuiltImage | undefined {
    const row = this.storage.index.getBuild(repo, hash);
    // Evicted by the cache quota: as if never built (image() says so if it cannot be rebuilt).
    // Built under another --layer-compression: built again (from the store, Nix only realises).
    if (!row || row.evicted_at !== null || (row.layer_format ?? LEGACY_FORMAT) !== this.format) return undefined;
    const manifest = this.storage.resolveManifest(repo, { digest: row.manifest });
    if (!manifest) return undefined;
    const alternate = row.alt_manifest ? this.storage.resolveManifest(repo, { digest: row.alt_manifest }) : undefined;
    // The row of an ingested archive may be filed under the evaluation's hash too; its tag
    // is always the hash part of the store path it records.
    return { hash: hashPart(row.store_path), manifest, alternate };
  }

  /**
   * The built image of an evaluation: from storage, or built now for `job` (once for all
   * callers: a job that finds the build under way joins it, its progress and its log).
   */
  async ensureBuilt(ev: Evaluation, job: Job): Promise<BuiltImage> {
    const done = this.lookup(ev.repo, ev.hash);
    if (done) return done;
    const key = `${ev.repo}\0${ev.hash}`;
    const failed = this.failures.get(key);
    if (failed && failed.key === ev.origin.key && Date.now() < failed.expires) throw failed.error;
    // A machine where Nix cannot build gets the diagnosis, not a build that fails with a trace.
    if (!this.inflight.has(key)) await this.health.ready();
    job.keep = true;
    const flight = this.inflight.get(key);
    if (flight) { job.join(flight.job); return flight.done; }
    job.progress.enter('queued');
    const p = this.sem.run(() => this.runBuild(ev, job));
    this.inflight.set(key, { done: p, job });
    p.then(() => { this.failures.delete(key); }, (e: unknown) => {
      // An environment problem is the health check's to remember: fixing the machine
      // must not wait for a negative TTL. Nor is a full disk (StorageFull, no BuildError)
      // remembered: space may come back any second.
      if (!(e instanceof BuildError) || e instanceof NixUnavailable) return;
      const now = Date.now();
      if (this.failures.size > 1000) for (const [k, f] of this.failures) if (f.expires <= now) this.failures.delete(k);
      this.failures.set(key, { key: ev.origin.key, expires: now + this.o.negativeTtlMs, error: e });
    }).finally(() => { this.inflight.delete(key); });
    return p;
  }

  private async runBuild(ev: Evaluation, job: Job): Promise<BuiltImage> {
    // Another caller may have finished this image while we queued.
    const done = this.lookup(ev.repo, ev.hash);
    if (done) return done;
    this.buildsStarted++;
    job.buildStarted = Date.now();
    // Layers are linked before the manifest that references them is stored: GC and the
    // cache quota must leave them alone until then.
    const release = this.storage.hold();
    const progress = job.progress;
    const roots = join(this.rootsDir, job.id);
    this.rooted++;
    const started = Date.now();
    const { raw } = ev;
    job.drv = raw.contents[0]?.drv;
    let ok = false;
    try {
      await makeDir(roots);
      progress.enter('building');
      job.line(`image ${ev.repo} from ${ev.origin.name}: ${raw.imagePath}`);
      const drvs = [...new Set([...raw.contents.map((c) => c.drv), ...raw.configRefs])];
      const counter = realiseProgress((done, total) => { progress.paths = { done, total }; });
      await realise(drvs, join(roots, 'root'), {
        env: this.o.nixEnv,
        timeoutMs: this.o.buildTimeoutMs,
        onStderr: (c) => { job.write(c); counter(c); },
      });
      progress.paths.done = progress.paths.total;
      const outs = raw.contents.map((c) => c.out);
      const cfgOuts = [
        ...raw.configRefs.filter((r) => !r.endsWith('.drv')),
        ...await outputsOf(raw.configRefs.filter((r) => r.endsWith('.drv')), { env: this.o.nixEnv }),
      ];
      let built: BuiltImage;
      progress.enter('assembling');
      if (raw.kind === 'derivation' && await isImageOutput(outs[0]!)) {
        job.line(`${outs[0]} is an image archive: ingesting`);
        built = await ingestImageOutput(this.storage, ev.repo, outs[0]!, {
          hash: ev.outHash!, timeoutMs: Math.max(1000, this.o.buildTimeoutMs - (Date.now() - started)), compression: this.o.compression,
        });
      } else {
        const closure = await closureOf([...new Set([...outs, ...cfgOuts])], { env: this.o.nixEnv });
        job.line(`closure: ${closure.length} store paths, ${closure.reduce((n, p) => n + p.narSize, 0)} bytes`);
        built = await assembleImage(this.storage, ev.repo, { ...ev.spec, contents: outs }, closure, ev.hash, undefined,
          AbortSignal.timeout(Math.max(1000, this.o.buildTimeoutMs - (Date.now() - started))), progress, this.o.compression);
      }
      this.record(ev, built, built.hash === ev.hash ? raw.imagePath : outs[0]!);
      await this.enforceQuota(ev.repo, built.manifest.digest);
      ok = true;
      job.line(`stored ${built.manifest.digest} as ${ev.repo}:${built.hash}`);
      this.o.log?.info({ repo: ev.repo, hash: built.hash, digest: built.manifest.digest, ms: Date.now() - started }, 'image built');
      return built;
    } catch (e) {
      const err = this.buildError(ev, e, job);
      err.message = ev.origin.hide(hideImagesDir(err.message, this.o.images));
      this.o.log?.warn({ repo: ev.repo, hash: ev.hash, error: err.message }, 'image build failed');
      throw err;
    } finally {
      release();
      job.buildEnded = Date.now();
      for (const l of this.buildListeners) l(ok ? 'succeeded' : 'failed', (Date.now() - started) / 1000);
      // The layers are stored: the closure may be collected from now on.
      await fs.rm(roots, { recursive: true, force: true });
      // The last build of this process out: its directory goes too (synchronously, so that
      // no build starting meanwhile can have made its own root inside it).
      if (--this.rooted === 0) try { rmdirSync(this.rootsDir); } catch { /* in use again, or gone */ }
    }
  }

  private record(ev: Evaluation, built: BuiltImage, storePath: string): void {
    this.storage.index.putBuild(buildRow(ev.repo, built.hash, storePath, built, this.format));
    // An ingested archive is tagged by its own output hash; the evaluation's hash maps
    // to it too so that `latest` finds it without asking Nix again.
    if (built.hash !== ev.hash) this.storage.index.putBuild(buildRow(ev.repo, ev.hash, storePath, built, this.format));
    this.storage.tag(ev.repo, built.hash, built.manifest.digest);
  }

  /**
   * Files `built` also under `alias` (a full git commit of a pinned package set), so
   * that the alias is served from the index alone, and tags it: commits are immutable.
   */
  recordAlias(ev: Evaluation, alias: string, built: BuiltImage): void {
    if (this.storage.index.getBuild(ev.repo, alias)?.manifest === built.manifest.digest) return;
    const storePath = built.hash === ev.hash ? ev.raw.imagePath : ev.raw.contents[0]!.out;
    this.storage.index.putBuild(buildRow(ev.repo, alias, storePath, built, this.format));
    this.storage.tag(ev.repo, alias, built.manifest.digest);
  }

  /** Over the cache quota, older built images make room; a failure there fails no build. */
  private async enforceQuota(repo: string, manifest: string): Promise<void> {
    try {
      const e = await this.storage.builtImageStored(repo, manifest);
      if (e?.images.length) this.o.log?.info({ evicted: e.images, bytes: e.bytes, usage: e.after, limit: e.limit }, 'cache quota: evicted the least recently pulled images');
      // Only the image just built is left, and it alone is over the limit.
      if (e && e.after > e.limit) this.o.log?.warn({ usage: e.after, limit: e.limit, repo }, 'cache quota: the newest image alone exceeds --cache-max-bytes');
    } catch (err) {
      this.o.log?.warn({ err, repo }, 'cache quota: eviction failed');
    }
  }

  /**
   * A failure for lack of space, as StorageFull: our own writes (layers, config,
   * manifests, the index, GC roots) say so by their error code, Nix and the builders it
   * runs only in their output.
   */
  private outOfSpace(e: unknown, what: string): StorageFull | undefined {
    const nix = e instanceof NixError ? /No space left on device|Disk quota exceeded/.exec(e.stderr)?.[0] : undefined;
    const full = this.storage.noSpace(nix ? { code: nix.startsWith('No') ? 'ENOSPC' : 'EDQUOT' } : e, what);
    // Said in the terms of the build, whichever write of it met the full disk.
    return full instanceof StorageFull ? new StorageFull(what, full.reason) : undefined;
  }

  private buildError(ev: Evaluation, e: unknown, job: Job): BuildError | StorageFull {
    const url = `${this.publicUrl}${job.logUrl}`;
    const full = this.outOfSpace(e, `build the image ${ev.repo}; build log: ${url}`);
    if (full) return full;
    // Nix failing on its own account, not because a builder of the image failed.
    const unavailable = e instanceof NixError && !/builder for '[^']+' failed/.test(e.stderr) ? diagnose(e) : undefined;
    if (unavailable) { this.health.lost(unavailable); return unavailable; }
    if (e instanceof NixError) {
      const failedDrv = /builder for '([^']+\.drv)' failed/.exec(e.stderr)?.[1]
        ?? /derivation '([^']+\.drv)'/.exec(e.stderr)?.[1] ?? ev.raw.contents[0]?.drv;
      job.drv = failedDrv;
      const why = e.timedOut ? e.message : e.message.split('\n')[0]!.replace(/^error: /, '');
      const what = failedDrv && !why.includes(failedDrv) ? `${failedDrv}: ${why}` : why;
      return new BuildFailed(`building ${ev.repo} failed: ${what}${sandboxHint(e.stderr)}; build log: ${url}`, { drv: failedDrv, log: url });
    }
    // Errors that already say what went wrong in the user's terms (a malformed archive,
    // an invalid spec) keep their words; anything else is an assembly fault.
    if (e instanceof BuildError) return new BuildFailed(`${e.message}; build log: ${url}`, e.detail);
    this.o.log?.error({ err: e, repo: ev.repo }, 'image assembly failed');
    return new BuildFailed(`building ${ev.repo} failed: ${(e as Error).message}; build log: ${url}`, { log: url });
  }

  stats() {
    const { buildsStarted, evaluationsStarted } = this;
    return { buildsStarted, evaluationsStarted, queued: this.sem.queued, inflight: this.inflight.size, jobs: this.jobs.runningCount };
  }
}

function buildRow(repo: string, hash: string, storePath: string, built: BuiltImage, layerFormat: string) {
  const { manifest: m, alternate: a } = built;
  return {
    repo, hash, manifest: m.digest, media_type: m.mediaType, size: m.size,
    alt_manifest: a?.digest ?? null, alt_media_type: a?.mediaType ?? null, alt_size: a?.size ?? null, store_path: storePath, layer_format: layerFormat,
  };
}
