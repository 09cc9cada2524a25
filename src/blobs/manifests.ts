// Manifests and tags: storing manifest bodies byte for byte (as blobs) with the rows
// that make them visible in a repository, resolving tags and digests through a
// per-repository cache, and the listings (tags, catalog, referrers).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { LRUCache } from 'lru-cache';
import type { Descriptor } from '../oci/descriptor.js';
import { digestOf } from '../oci/digest.js';
import type { Reference } from '../oci/reference.js';
import type { StoreCore } from './core.js';
import { MissingReferences } from './errors.js';
import type { NewManifest, ReferrerRow, ReferrersPage } from './index.js';

/** What a manifest being stored says about itself (see src/oci/manifest.ts). */
export type ManifestInfo = Omit<NewManifest, 'digest' | 'size'> & { blobs: string[]; manifests: string[] };

export class Manifests {
  /**
   * (repository, generation, reference) → descriptor. The generation (core.ts) makes
   * invalidation per repository and O(1), and no entry of one repository can ever
   * answer for another.
   */
  private readonly refCache = new LRUCache<string, Descriptor>({ max: 50_000 });
  /** Manifest bodies by digest: content-addressed, so an entry is never stale. */
  private readonly bodyCache: LRUCache<string, Buffer>;

  constructor(private readonly core: StoreCore, cacheBytes: number) {
    this.bodyCache = new LRUCache<string, Buffer>({ maxSize: cacheBytes, sizeCalculation: (b) => b.length || 1 });
  }

  /** Resolves a tag or digest in `repo` to a descriptor, through the per-repo cache. */
  resolve(repo: string, ref: Reference): Descriptor | undefined {
    const key = `${repo}\0${this.core.generation(repo)}\0${ref.tag ?? ref.digest}`;
    const hit = this.refCache.get(key);
    if (hit) return hit;
    const { index } = this.core;
    const digest = ref.digest ?? index.resolveTag(repo, ref.tag!);
    if (!digest) return undefined;
    const row = index.getManifest(repo, digest);
    if (!row) return undefined;
    const d = { digest: row.digest, mediaType: row.media_type, size: row.size };
    this.refCache.set(key, d);
    return d;
  }

  async read(d: Descriptor): Promise<Buffer> {
    const hit = this.bodyCache.get(d.digest);
    if (hit) return hit;
    const body = await this.core.store.read(d.digest);
    this.bodyCache.set(d.digest, body);
    return body;
  }

  /**
   * Stores a manifest body byte for byte and records it. `blobs` and `manifests` are
   * what it references; each must already be visible in `repo` (MissingReferences).
   */
  async put(repo: string, body: Buffer, info: ManifestInfo, tag?: string, digest = digestOf(body)): Promise<Descriptor> {
    const { index, store, locks } = this.core;
    const checkReferences = () => {
      const missing = [
        ...info.blobs.filter((b) => index.linkedBlobSize(repo, b) === undefined),
        ...info.manifests.filter((m) => !index.getManifest(repo, m)),
      ];
      if (missing.length) throw new MissingReferences(missing);
    };
    // Checked once up front (so a bad push writes nothing) and again in the same
    // synchronous step as the index insert, so a concurrent delete cannot slip between.
    checkReferences();
    await locks.run(digest, async () => {
      const fresh = index.blobSize(digest) === undefined;
      try {
        if (fresh) {
          const pending = await store.write(digest, body);
          try { await pending.publish(); } finally { await pending.discard(); }
        }
        checkReferences();
        index.putManifest(repo, { ...info, digest, size: body.length }, tag);
      } catch (err) {
        // Nothing records the file just written (a reference went away, or the index is
        // full): take it back rather than leave an orphan.
        if (fresh) await store.delete(digest).catch(() => {});
        throw this.core.noSpace(err, 'store this manifest; nothing was kept');
      }
    });
    this.bodyCache.set(digest, body);
    this.core.bump(repo);
    return { digest, mediaType: info.mediaType, size: body.length };
  }

  async delete(repo: string, digest: string): Promise<boolean> {
    const deleted = await this.core.locks.run(digest, async () => {
      const r = this.core.index.deleteManifest(repo, digest);
      if (r.orphaned) await this.core.store.delete(digest);
      return r.deleted;
    });
    if (deleted) this.core.bump(repo);
    return deleted;
  }

  tag(repo: string, tag: string, digest: string): void {
    try {
      this.core.index.putTag(repo, tag, digest);
    } catch (err) {
      throw this.core.noSpace(err, `tag ${tag}`);
    }
    this.core.bump(repo);
  }

  deleteTag(repo: string, tag: string): boolean {
    const r = this.core.index.deleteTag(repo, tag);
    if (r) this.core.bump(repo);
    return r;
  }

  listTags(repo: string, last: string, n: number): string[] | undefined {
    return this.core.index.listTags(repo, last, n);
  }

  referrers(repo: string, subject: string, page: ReferrersPage): ReferrerRow[] {
    return this.core.index.referrers(repo, subject, page);
  }

  referrerAnnotations(repo: string, digest: string): Buffer | undefined {
    return this.core.index.referrerAnnotations(repo, digest);
  }

  get cachedReferences(): number { return this.refCache.size; }
}
