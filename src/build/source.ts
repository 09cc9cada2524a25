// Build-on-pull behind the ImageSource seam (image-source.ts). Tags of an
// expression-backed repository: `latest` (evaluate now, build if new) and hash tags (the
// image's store path hash: served from storage without Nix when built, else built if the
// expression still yields it). Digests are plain storage.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { opendirSync } from 'node:fs';
import type { Storage } from '../blobs/storage.js';
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import { Builder, type BuilderOptions } from './builder.js';
import { TagNotServed } from './errors.js';
import type { ImageSource, NixStatus } from './image-source.js';
import type { BuildRecord } from './logs.js';
import { HASH_TAG, nixProcessCount, probeProcessCount } from './nix.js';
import type { BuiltImage } from './types.js';

export class NixImageSource implements ImageSource {
  readonly builder: Builder;

  private readonly images: string;

  constructor(private readonly storage: Storage, opts: BuilderOptions) {
    this.builder = new Builder(storage, opts);
    this.images = opts.images;
  }

  owns(repo: string): boolean {
    return this.builder.file(repo) !== undefined;
  }

  async resolve(repo: string, ref: Reference, accepts: (mediaType: string) => boolean): Promise<Descriptor | undefined> {
    const tag = ref.tag;
    if (tag === undefined) return undefined;
    return pick(await this.image(repo, tag), accepts);
  }

  /** The built image for `tag`, building it if needed. */
  async image(repo: string, tag: string): Promise<BuiltImage> {
    const b = this.builder;
    if (HASH_TAG.test(tag)) {
      const done = b.lookup(repo, tag);
      if (done) return done;
      const ev = await b.evaluate(repo);
      if (tag !== ev.hash && tag !== ev.outHash) {
        const evicted = this.storage.index.getBuild(repo, tag)?.evicted_at != null;
        const current = ev.outHash ?? ev.hash;
        throw new TagNotServed(evicted
          ? `image ${repo}:${tag} was evicted from the cache of built images, and ${repo} now evaluates to ${current}, so it cannot be rebuilt; pull ${repo}:latest or ${repo}:${current}`
          : `image ${repo}:${tag} was never built here and ${repo} now evaluates to ${current}; pull ${repo}:latest or ${repo}:${ev.hash}`,
        { hash: tag, current: ev.hash, ...(evicted ? { evicted: true } : {}) });
      }
      return b.ensureBuilt(ev);
    }
    if (tag !== 'latest') {
      throw new TagNotServed(
        `${repo} is built from a Nix expression: its tags are latest and the hashes of built images, not ${tag}`, { tag });
    }
    const ev = await b.evaluate(repo);
    const built = await b.ensureBuilt(ev);
    if (this.storage.index.resolveTag(repo, 'latest') !== built.manifest.digest) this.storage.tag(repo, 'latest', built.manifest.digest);
    return built;
  }

  standingTags(): string[] {
    return ['latest'];
  }

  builds(): BuildRecord[] {
    return this.builder.logs.list();
  }

  buildLogPath(id: string): string | undefined {
    return this.builder.logs.logPath(id);
  }

  stats(): Record<string, unknown> {
    return {
      ...this.builder.stats(),
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
