// Realisation and assembly, the stages between an evaluation and its record: the
// evaluation's derivations realised under GC roots (bounded concurrency, the build
// timeout) → the closure → assembled into layers (assembly/) or, for an image archive,
// ingested (ingest/) → recorded (record.ts). Any number of concurrent callers for the
// same image share one build; failures are remembered briefly. Each build runs for a
// job (jobs/), whose log and progress it writes. It never goes back up the pipeline:
// what to build comes in as an Evaluation.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { promises as fs, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { makeDir } from '../blobs/core.js';
import type { StorageFull } from '../blobs/errors.js';
import type { Storage } from '../blobs/storage.js';
import { assembleImage } from './assembly/assemble.js';
import type { CompressionSetting } from './assembly/compression.js';
import { BuildError, BuildFailed, NixUnavailable } from './errors.js';
import { outOfSpace, type Evaluation } from './evaluate.js';
import { ingestImageOutput, isImageOutput } from './ingest/ingest.js';
import type { Job } from './jobs/jobs.js';
import { warnIfUntied } from './nix/child.js';
import { NixError, closureOf, outputsOf, realise, realiseProgress } from './nix/nix.js';
import { diagnose, sandboxHint, type NixHealth } from './nix/nix-health.js';
import { ownRootsDir, removeDeadRoots } from './nix/roots.js';
import { hideImagesDir } from './origins/resolve.js';
import type { Records } from './record.js';
import { Semaphore } from './semaphore.js';
import type { BuiltImage } from './types.js';

export interface BuilderOptions {
  images: string;
  /** Kill a realisation (and the assembly after it) after this long. */
  buildTimeoutMs: number;
  /** Builds running at once; more wait in a queue. */
  maxBuilds: number;
  /** A failed build is answered from memory this long. */
  negativeTtlMs: number;
  compression: CompressionSetting;
  nixEnv?: NodeJS.ProcessEnv | undefined;
  log?: Logger | undefined;
}

interface Flight { done: Promise<BuiltImage>; job: Job }
interface Failure { key: string; expires: number; error: BuildError }

export class Builder {
  /** Pipelines started (each realises and assembles once); for tests and metrics. */
  buildsStarted = 0;
  /** Told of each build as it ends, with its seconds (metrics; image-source.ts). */
  readonly buildListeners = new Set<(result: 'succeeded' | 'failed', seconds: number) => void>();
  /** Base of log URLs in error messages (set once the server knows its address). */
  publicUrl = '';
  private readonly inflight = new Map<string, Flight>();
  private readonly failures = new Map<string, Failure>();
  private readonly sem: Semaphore;
  /** Where this process's builds keep their GC roots (nix/roots.ts). */
  private readonly rootsDir: string;
  /** Builds of this process holding roots under rootsDir. */
  private rooted = 0;

  /** `health`: whether Nix can build here at all; builds wait for its verdict. */
  constructor(
    private readonly storage: Storage, readonly health: NixHealth, private readonly records: Records, private readonly o: BuilderOptions,
  ) {
    this.sem = new Semaphore(Math.max(1, o.maxBuilds));
    this.rootsDir = ownRootsDir(storage.gcrootsDir);
    warnIfUntied(o.log);
    // Roots of builds that a crash (kill -9) cut short would pin their closures forever.
    void removeDeadRoots(storage.gcrootsDir, o.log);
  }

  /**
   * The built image of an evaluation: from storage, or built now for `job` (once for all
   * callers: a job that finds the build under way joins it, its progress and its log).
   */
  async ensureBuilt(ev: Evaluation, job: Job): Promise<BuiltImage> {
    const done = await this.records.lookup(ev.repo, ev.hash);
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
    const done = await this.records.lookup(ev.repo, ev.hash);
    if (done) return done;
    // Replicas on one index build an image once: the others wait here for the lease, then
    // find the record; if the builder dies, its lease goes with it and one of them builds.
    // Bounded by the holder's own timeout, with room for it to store what it built.
    const bound = 2 * this.o.buildTimeoutMs + 60_000;
    const release = await this.storage.lease(`build\0${ev.repo}\0${ev.hash}`, AbortSignal.timeout(bound),
      () => job.line(`another replica is building ${ev.repo}:${ev.hash}; waiting for it`)).catch((e: unknown) => {
      if ((e as Error).name !== 'TimeoutError') throw e;
      throw new BuildFailed(`building ${ev.repo} failed: another replica's build of ${ev.hash} held it for over ${Math.round(bound / 1000)} s`, {});
    });
    try {
      const theirs = await this.records.lookup(ev.repo, ev.hash);
      if (theirs) { job.line(`built by another replica: ${theirs.manifest.digest}`); return theirs; }
      return await this.buildHere(ev, job);
    } finally { await release(); }
  }

  private async buildHere(ev: Evaluation, job: Job): Promise<BuiltImage> {
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
      await this.records.record(ev, built, built.hash === ev.hash ? raw.imagePath : outs[0]!);
      await this.records.enforceQuota(ev.repo, built.manifest.digest);
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

  private buildError(ev: Evaluation, e: unknown, job: Job): BuildError | StorageFull {
    const url = `${this.publicUrl}${job.logUrl}`;
    const full = outOfSpace(this.storage, e, `build the image ${ev.repo}; build log: ${url}`);
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

  /** Builds waiting for a slot, and builds under way. */
  stats() {
    return { queued: this.sem.queued, inflight: this.inflight.size };
  }
}
