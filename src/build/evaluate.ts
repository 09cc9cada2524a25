// Evaluation, the second stage of a pull: origin → Evaluation (what to realise, the hash
// tag it will have, the validated spec; spec.ts). eval.nix is run by the Nix adapter
// (nix/nix.ts) once for all concurrent callers of one origin, and the result is reused
// while the origin is unchanged for --eval-ttl (the watcher drops it sooner, invalidate());
// a failure is remembered for --negative-ttl. What Nix says is put in the user's terms:
// their files, never the host's paths, an unknown package with its near names.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { StorageFull } from '../blobs/errors.js';
import type { Storage } from '../blobs/storage.js';
import { EvaluationFailed, FlakeOutputMissing, NixUnavailable, NoImageExpression, UnknownPackages } from './errors.js';
import type { Job } from './jobs/jobs.js';
import { NixError, evaluateImage, hashPart, type EvalJSON } from './nix/nix.js';
import { diagnose, type NixHealth } from './nix/nix-health.js';
import { closest, type Origin } from './origins/origins.js';
import { hideImagesDir, imagesDirForms } from './origins/resolve.js';
import { Semaphore } from './semaphore.js';
import { platformOf, validateSpec } from './spec.js';
import type { ImageSpec } from './types.js';

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

export interface EvaluatorOptions {
  images: string;
  /** An evaluation is reused this long while its origin is unchanged. */
  evalTtlMs: number;
  /** A failed evaluation is answered from memory this long. */
  negativeTtlMs: number;
  /** Kill an evaluation after this long (the build timeout). */
  timeoutMs: number;
  /** Evaluations running at once (large package sets take much memory). */
  concurrency: number;
  nixEnv?: NodeJS.ProcessEnv | undefined;
  log?: Logger | undefined;
}

interface EvalEntry { path: string; key: string; expires: number; value: Promise<Evaluation>; result?: Evaluation }

export class Evaluator {
  /** Evaluations started (each one nix-instantiate); for tests and metrics. */
  evaluationsStarted = 0;
  /** By evaluation slot: bounded, since image files may come and go under --images. */
  private readonly evals = new LRUCache<string, EvalEntry>({ max: 10_000 });
  private readonly sem: Semaphore;

  constructor(private readonly storage: Storage, private readonly health: NixHealth, private readonly o: EvaluatorOptions) {
    this.sem = new Semaphore(o.concurrency);
  }

  /**
   * The file `path` under the images directory changed (to the version `key`, if it
   * still exists): any cached evaluation may be stale, since an image file may import
   * any file there, and the next pull of each image evaluates again. Spared are only
   * evaluations of that very file that already read that very version: the change is
   * often seen after the pull that it prompted has evaluated it.
   */
  invalidate(path: string, key: string | undefined): void {
    const stale = [...this.evals.entries()].filter(([, e]) => !(e.path === path && e.key === key)).map(([slot]) => slot);
    for (const slot of stale) this.evals.delete(slot);
  }

  /**
   * Evaluates `repo` from `origin`, reusing a recent evaluation (or failure) of the same
   * origin as it is now; concurrent callers share one nix-instantiate. `job`, if any,
   * hears that it is evaluating.
   */
  evaluate(repo: string, origin: Origin | undefined, job?: Job): Promise<Evaluation> {
    if (!origin) return Promise.reject(new NoImageExpression(`no image expression for ${repo}`, { name: repo }));
    const hit = this.evals.get(origin.slot);
    if (hit && hit.key === origin.key && Date.now() < hit.expires) return hit.value;
    if (job) {
      job.evaluated = true;
      job.progress.enter('evaluating');
      job.line(`evaluating ${origin.name}`);
    }
    const entry: EvalEntry = { path: origin.path ?? '', key: origin.key, expires: Infinity, value: this.run(repo, origin) };
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
  cached(origin: Origin | undefined): Evaluation | undefined {
    const hit = origin && this.evals.get(origin.slot);
    if (!origin || !hit?.result || Date.now() >= hit.expires) return undefined;
    return origin.key === hit.key ? hit.result : undefined;
  }

  private async run(repo: string, origin: Origin): Promise<Evaluation> {
    this.evaluationsStarted++;
    let raw: EvalJSON;
    try {
      raw = await this.sem.run(() => evaluateImage(origin.args, {
        env: this.o.nixEnv, timeoutMs: this.o.timeoutMs, flakes: origin.flakes, userDirs: imagesDirForms(this.o.images),
      }));
    } catch (e) {
      const full = outOfSpace(this.storage, e, `evaluate the image ${repo}`);
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
}

/**
 * A failure for lack of space, as StorageFull: our own writes (layers, config,
 * manifests, the index, GC roots) say so by their error code, Nix and the builders it
 * runs only in their output.
 */
export function outOfSpace(storage: Storage, e: unknown, what: string): StorageFull | undefined {
  const nix = e instanceof NixError ? /No space left on device|Disk quota exceeded/.exec(e.stderr)?.[0] : undefined;
  const full = storage.noSpace(nix ? { code: nix.startsWith('No') ? 'ENOSPC' : 'EDQUOT' } : e, what);
  // Said in the terms of the build, whichever write of it met the full disk.
  return full instanceof StorageFull ? new StorageFull(what, full.reason) : undefined;
}
