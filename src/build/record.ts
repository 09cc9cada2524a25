// Record, the last stage of a pull: what was built, filed in storage so that the next
// pull of the same hash needs no Nix. A build record maps (repository, hash) to the
// stored manifests, the store path and the layer format; the image is tagged by its hash,
// `latest` moves to it, a pinned package set's commit names it for good. Reading records
// is the first thing every pull does (lookup()), so the common pull of something built
// long ago ends here. Storage is reached only through its builder's facade.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import type { Logger } from 'pino';
import type { Storage } from '../blobs/storage.js';
import { LEGACY_FORMAT } from './assembly/compression.js';
import type { Evaluation } from './evaluate.js';
import { hashPart } from './nix/nix.js';
import type { BuiltImage } from './types.js';

export class Records {
  /** `format`: the layer format of this process's builds (assembly/compression.ts), recorded with each. */
  constructor(private readonly storage: Storage, private readonly format: string, private readonly log?: Logger | undefined) {}

  /** An image already built for `hash`, from the index alone (no Nix). */
  async lookup(repo: string, hash: string): Promise<BuiltImage | undefined> {
    const row = await this.storage.getBuild(repo, hash);
    // Evicted by the cache quota: as if never built (image() says so if it cannot be rebuilt).
    // Built under another --layer-compression: built again (from the store, Nix only realises).
    if (!row || row.evicted_at !== null || (row.layer_format ?? LEGACY_FORMAT) !== this.format) return undefined;
    const [manifest, alternate] = await Promise.all([
      this.storage.resolveManifest(repo, { digest: row.manifest }),
      row.alt_manifest ? this.storage.resolveManifest(repo, { digest: row.alt_manifest }) : undefined,
    ]);
    if (!manifest) return undefined;
    // The row of an ingested archive may be filed under the evaluation's hash too; its tag
    // is always the hash part of the store path it records.
    return { hash: hashPart(row.store_path), manifest, alternate };
  }

  /** Whether the image of `repo` once built for `hash` was evicted by the cache quota. */
  async evicted(repo: string, hash: string): Promise<boolean> {
    return (await this.storage.getBuild(repo, hash))?.evicted_at != null;
  }

  /** Files a finished build of `ev` (whose image is the store path `storePath`) and tags it by hash. */
  async record(ev: Evaluation, built: BuiltImage, storePath: string): Promise<void> {
    await this.storage.putBuild(buildRow(ev.repo, built.hash, storePath, built, this.format));
    // An ingested archive is tagged by its own output hash; the evaluation's hash maps
    // to it too so that `latest` finds it without asking Nix again.
    if (built.hash !== ev.hash) await this.storage.putBuild(buildRow(ev.repo, ev.hash, storePath, built, this.format));
    await this.storage.tag(ev.repo, built.hash, built.manifest.digest);
  }

  /**
   * Files `built` also under `alias` (a full git commit of a pinned package set), so
   * that the alias is served from the index alone, and tags it: commits are immutable.
   */
  async alias(ev: Evaluation, alias: string, built: BuiltImage): Promise<void> {
    if ((await this.storage.getBuild(ev.repo, alias))?.manifest === built.manifest.digest) return;
    const storePath = built.hash === ev.hash ? ev.raw.imagePath : ev.raw.contents[0]!.out;
    await this.storage.putBuild(buildRow(ev.repo, alias, storePath, built, this.format));
    await this.storage.tag(ev.repo, alias, built.manifest.digest);
  }

  /** `latest` of `repo` moves to `built` (written only if it moves). */
  async tagLatest(repo: string, built: BuiltImage): Promise<void> {
    if (await this.storage.tagged(repo, 'latest') !== built.manifest.digest) await this.storage.tag(repo, 'latest', built.manifest.digest);
  }

  /** Over the cache quota, older built images make room; a failure there fails no build. */
  async enforceQuota(repo: string, manifest: string): Promise<void> {
    try {
      const e = await this.storage.builtImageStored(repo, manifest);
      if (e?.images.length) this.log?.info({ evicted: e.images, bytes: e.bytes, usage: e.after, limit: e.limit }, 'cache quota: evicted the least recently pulled images');
      // Only the image just built is left, and it alone is over the limit.
      if (e && e.after > e.limit) this.log?.warn({ usage: e.after, limit: e.limit, repo }, 'cache quota: the newest image alone exceeds --cache-max-bytes');
    } catch (err) {
      this.log?.warn({ err, repo }, 'cache quota: eviction failed');
    }
  }
}

function buildRow(repo: string, hash: string, storePath: string, built: BuiltImage, layerFormat: string) {
  const { manifest: m, alternate: a } = built;
  return {
    repo, hash, manifest: m.digest, media_type: m.mediaType, size: m.size,
    alt_manifest: a?.digest ?? null, alt_media_type: a?.mediaType ?? null, alt_size: a?.size ?? null, store_path: storePath, layer_format: layerFormat,
  };
}
