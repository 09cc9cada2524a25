// The queries of garbage collection and the cache quota over the SQLite index (what
// index.ts's last two sections promise): each a synchronous step, so that the sweep's
// transaction cannot interleave with any request's write (gc.ts's header says why).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type Database from 'better-sqlite3';
import type { BlobUse, BuildStamp, ManifestStamp, RepoKey, RepoSnapshot, RepoWrites, SweepResult, SweepStep, WritesSince } from './index.js';

type StampRow = Omit<ManifestStamp, 'by_digest'> & { by_digest: number };
const stamp = (r: StampRow): ManifestStamp => ({ ...r, by_digest: r.by_digest !== 0 });

export class SqliteGc {
  private readonly q;

  constructor(private readonly db: Database.Database) {
    this.q = {
      repositories: db.prepare<[], RepoKey>('SELECT id, name FROM repositories'),
      manifests: db.prepare<[number, number], StampRow>(
        'SELECT digest, media_type, subject, created_at, by_digest FROM manifests WHERE repo_id = ? AND created_at >= ?'),
      tagged: db.prepare<[number], { digest: string }>('SELECT DISTINCT digest FROM tags WHERE repo_id = ?'),
      tagsSince: db.prepare<[number, number], { digest: string }>('SELECT digest FROM tags WHERE repo_id = ? AND updated_at >= ?'),
      builds: db.prepare<[string], BuildStamp>('SELECT manifest, alt_manifest, evicted_at FROM builds WHERE repo = ?'),
      buildsSince: db.prepare<[string, number], { manifest: string; alt_manifest: string | null }>(
        'SELECT manifest, alt_manifest FROM builds WHERE repo = ? AND created_at >= ? AND evicted_at IS NULL'),
      oldManifests: db.prepare<[number, number], { digest: string }>('SELECT digest FROM manifests WHERE repo_id = ? AND created_at < ?'),
      oldLinks: db.prepare<[number, number], { digest: string }>('SELECT digest FROM repo_blobs WHERE repo_id = ? AND linked_at < ?'),
      dropManifest: db.prepare(`DELETE FROM manifests WHERE repo_id = ? AND digest = ? AND created_at < ?
        AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = manifests.repo_id AND t.digest = manifests.digest)`),
      dropLink: db.prepare('DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ? AND linked_at < ?'),
      isTagged: db.prepare<[number, string], { n: number }>('SELECT count(*) AS n FROM tags WHERE repo_id = ? AND digest = ?'),
      unused: db.prepare<[number], { digest: string }>(
        `SELECT digest FROM blobs b WHERE created_at < ?
           AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
           AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)`),
      inUse: db.prepare<[string, string], { n: number }>(
        'SELECT (SELECT count(*) FROM repo_blobs WHERE digest = ?) + (SELECT count(*) FROM manifests WHERE digest = ?) AS n'),
      youngLayer: db.prepare<[string, number], { n: number }>('SELECT count(*) AS n FROM layers WHERE digest = ? AND created_at >= ?'),
      dropLayers: db.prepare('DELETE FROM layers WHERE digest = ?'),
      size: db.prepare<[string], { size: number }>('SELECT size FROM blobs WHERE digest = ?'),
      dropBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
      blobUses: db.prepare<[number, number, string, number], BlobUse>(
        `SELECT digest, size, (SELECT count(*) FROM repo_blobs l WHERE l.digest = b.digest) AS links,
                (SELECT count(*) FROM manifests m WHERE m.digest = b.digest) AS manifests,
                (SELECT count(*) FROM layers y WHERE y.digest = b.digest AND y.created_at >= ?) AS young
           FROM blobs b WHERE created_at < ? AND digest > ? ORDER BY digest LIMIT ?`),
      pulled: db.prepare(`UPDATE builds SET last_pulled = max(coalesce(last_pulled, 0), ?)
        WHERE repo = ? AND (manifest = ? OR alt_manifest = ?) AND evicted_at IS NULL`),
      usage: db.prepare<[], { n: number }>(`
        WITH built AS (SELECT r.id FROM repositories r WHERE r.name IN (SELECT repo FROM builds))
        SELECT total(b.size) AS n FROM blobs b
         WHERE (EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.repo_id IN built)
             OR EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest AND m.repo_id IN built)
             OR EXISTS (SELECT 1 FROM layers y WHERE y.digest = b.digest))
           AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.repo_id NOT IN built)
           AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest AND m.repo_id NOT IN built)`),
      evictionOrder: db.prepare<[], { repo: string; manifest: string }>(
        `SELECT repo, manifest FROM builds WHERE evicted_at IS NULL
          GROUP BY repo, manifest ORDER BY max(coalesce(last_pulled, created_at)) ASC, repo, manifest`),
      altsOf: db.prepare<[string, string], { alt_manifest: string | null }>(
        'SELECT alt_manifest FROM builds WHERE repo = ? AND manifest = ? AND evicted_at IS NULL'),
      evict: db.prepare('UPDATE builds SET evicted_at = ? WHERE repo = ? AND manifest = ? AND evicted_at IS NULL'),
      named: db.prepare<[string, string, string], { n: number }>(
        'SELECT count(*) AS n FROM builds WHERE repo = ? AND evicted_at IS NULL AND (manifest = ? OR alt_manifest = ?)'),
      dropTags: db.prepare('DELETE FROM tags WHERE repo_id = ? AND digest = ?'),
      dropManifestRow: db.prepare('DELETE FROM manifests WHERE repo_id = ? AND digest = ?'),
    };
  }

  repositories(): RepoKey[] { return this.q.repositories.all(); }

  snapshot(repo: RepoKey): RepoSnapshot {
    const asOf = Date.now();
    return {
      asOf,
      manifests: this.q.manifests.all(repo.id, Number.MIN_SAFE_INTEGER).map(stamp),
      tagged: this.q.tagged.all(repo.id).map((r) => r.digest),
      builds: this.q.builds.all(repo.name),
    };
  }

  writes(repo: RepoKey, since: WritesSince): RepoWrites {
    const asOf = Date.now();
    return {
      asOf,
      manifests: this.q.manifests.all(repo.id, since.manifests).map(stamp),
      tags: this.q.tagsSince.all(repo.id, since.others).map((r) => r.digest),
      builds: this.q.buildsSince.all(repo.name, since.others).flatMap((b) => (b.alt_manifest ? [b.manifest, b.alt_manifest] : [b.manifest])),
    };
  }

  candidates(repo: RepoKey, cutoff: number): { manifests: string[]; links: string[] } {
    return {
      manifests: this.q.oldManifests.all(repo.id, cutoff).map((r) => r.digest),
      links: this.q.oldLinks.all(repo.id, cutoff).map((r) => r.digest),
    };
  }

  /** One synchronous transaction: no write can come between the mark's catching up and the removals. */
  sweepStep(repo: RepoKey, step: SweepStep): SweepResult {
    return this.db.transaction((): SweepResult => {
      const { mark } = step;
      const writes = this.writes(repo, mark.wants());
      const missing = mark.takeIn(writes);
      if (missing.length > step.maxReads) return { outcome: 'more' };
      const read = mark.readNow(missing);
      if (read !== 'read') return { outcome: read };
      mark.caughtUp(writes.asOf);
      let manifests = 0;
      let links = 0;
      for (const d of step.manifests) {
        if (!mark.keepsManifest(d) && this.q.dropManifest.run(repo.id, d, step.cutoff).changes) manifests++;
      }
      for (const d of step.links) {
        if (!mark.keepsLink(d) && this.q.dropLink.run(repo.id, d, step.cutoff).changes) links++;
      }
      return { outcome: 'swept', manifests, links };
    })();
  }

  isTagged(repo: RepoKey, digest: string): boolean { return this.q.isTagged.get(repo.id, digest)!.n > 0; }

  unusedBlobs(cutoff: number): string[] { return this.q.unused.all(cutoff).map((r) => r.digest); }

  dropUnused(digests: string[], cutoff: number): { digest: string; size: number }[] {
    return this.db.transaction(() => {
      const out: { digest: string; size: number }[] = [];
      for (const d of digests) {
        if (this.q.inUse.get(d, d)!.n > 0 || this.q.youngLayer.get(d, cutoff)!.n > 0) continue;
        const size = this.q.size.get(d)?.size;
        if (size === undefined) continue;
        this.q.dropLayers.run(d);
        this.q.dropBlob.run(d);
        out.push({ digest: d, size });
      }
      return out;
    })();
  }

  blobUses(cutoff: number, after: string, limit: number): BlobUse[] { return this.q.blobUses.all(cutoff, cutoff, after, limit); }

  notePulls(pulls: { repo: string; digest: string; at: number }[]): void {
    this.db.transaction(() => {
      for (const p of pulls) this.q.pulled.run(p.at, p.repo, p.digest, p.digest);
    })();
  }

  builtUsage(): number { return this.q.usage.get()!.n; }

  evictionOrder(): { repo: string; manifest: string }[] { return this.q.evictionOrder.all(); }

  evictBuild(repo: string, id: number | undefined, manifest: string): void {
    this.db.transaction(() => {
      const rows = this.q.altsOf.all(repo, manifest);
      this.q.evict.run(Date.now(), repo, manifest);
      if (id === undefined) return;
      for (const d of new Set([manifest, ...rows.map((r) => r.alt_manifest).filter((a): a is string => a !== null)])) {
        // Another build on record may name the same manifest (an ingested archive is
        // filed under two hashes): it goes with the last of them.
        if (this.q.named.get(repo, d, d)!.n) continue;
        this.q.dropTags.run(id, d);
        this.q.dropManifestRow.run(id, d);
      }
    })();
  }
}
