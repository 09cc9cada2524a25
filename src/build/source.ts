// Build-on-pull behind the ImageSource seam (image-source.ts). Tags of an
// expression-backed repository: `latest` (evaluate now, build if new) and hash tags (the
// image's store path hash: served from storage without Nix when built, else built if the
// expression still yields it). Digests are plain storage.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import type { Storage } from '../blobs/storage.js';
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import { Builder, type BuilderOptions } from './builder.js';
import { TagNotServed } from './errors.js';
import type { ImageSource } from './image-source.js';
import type { BuildRecord } from './logs.js';
import { HASH_TAG, nixProcessCount, probeProcessCount } from './nix.js';
import type { BuiltImage } from './types.js';

export class NixImageSource implements ImageSource {
  readonly builder: Builder;

  constructor(private readonly storage: Storage, opts: BuilderOptions) {
    this.builder = new Builder(storage, opts);
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
}

/** OCI by default; the second encoding for a client whose Accept excludes the first. */
function pick(b: BuiltImage, accepts: (mediaType: string) => boolean): Descriptor {
  if (!accepts(b.manifest.mediaType) && b.alternate && accepts(b.alternate.mediaType)) return b.alternate;
  return b.manifest;
}
