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
import type { ManifestRow, NewManifest, ReferrerRow, ReferrersPage } from './index/index.js';

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

  /**
   * Resolves a tag or digest in `repo` to a descriptor, through the per-repo cache. Not
   * through it when the index is shared (replicas over PostgreSQL): another process may
   * have moved or deleted the tag, or deleted the manifest, and this one's generations
   * know nothing of it; so every resolve asks the index then (one lookup). Bodies stay
   * cached by digest either way: content-addressed, they never go stale.
   */
  async resolve(repo: string, ref: Reference): Promise<Descriptor | undefined> {
    const { index } = this.core;
    if (index.shared) return describe(await index.lookup(repo, ref.digest ? { digest: ref.digest } : { tag: ref.tag! }));
    const key = `${repo}\0${this.core.generation(repo)}\0${ref.tag ?? ref.digest}`;
    const hit = this.refCache.get(key);
    if (hit) return hit;
    // A write while the lookup is out bumps the generation: this entry, keyed by the one
    // before, is then never read.
    const d = describe(await index.lookup(repo, ref.digest ? { digest: ref.digest } : { tag: ref.tag! }));
    if (d) this.refCache.set(key, d);
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
    // Checked once up front, so that a bad push writes nothing, and again by the index in
    // the step that records the manifest, so that a concurrent delete or sweep cannot
    // slip between (Index.putManifest).
    const [blobs, manifests] = await Promise.all([
      Promise.all(info.blobs.map((b) => index.linkedBlobSize(repo, b))),
      Promise.all(info.manifests.map((m) => index.lookup(repo, { digest: m }))),
    ]);
    const missing = [...info.blobs.filter((_, i) => blobs[i] === undefined), ...info.manifests.filter((_, i) => !manifests[i])];
    if (missing.length) throw new MissingReferences(missing);
    await locks.run(digest, async () => {
      const fresh = await index.blobSize(digest) === undefined;
      try {
        if (fresh) {
          const pending = await store.write(digest, body);
          try { await pending.publish(); } finally { await pending.discard(); }
        }
        const gone = await index.putManifest(repo, { ...info, digest, size: body.length }, info, tag);
        if (gone.length) throw new MissingReferences(gone);
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
      const r = await this.core.index.deleteManifest(repo, digest);
      if (r.orphaned) await this.core.store.delete(digest);
      return r.deleted;
    });
    if (deleted) this.core.bump(repo);
    return deleted;
  }

  async tag(repo: string, tag: string, digest: string): Promise<void> {
    try {
      await this.core.index.putTag(repo, tag, digest);
    } catch (err) {
      throw this.core.noSpace(err, `tag ${tag}`);
    }
    this.core.bump(repo);
  }

  async deleteTag(repo: string, tag: string): Promise<boolean> {
    const r = await this.core.index.deleteTag(repo, tag);
    if (r) this.core.bump(repo);
    return r;
  }

  listTags(repo: string, last: string, n: number): Promise<string[] | undefined> {
    return this.core.index.listTags(repo, last, n);
  }

  referrers(repo: string, subject: string, page: ReferrersPage): Promise<ReferrerRow[]> {
    return this.core.index.referrers(repo, subject, page);
  }

  referrerAnnotations(repo: string, digest: string): Promise<Buffer | undefined> {
    return this.core.index.referrerAnnotations(repo, digest);
  }

  get cachedReferences(): number { return this.refCache.size; }
}

function describe(row: ManifestRow | undefined): Descriptor | undefined {
  return row && { digest: row.digest, mediaType: row.media_type, size: row.size };
}
