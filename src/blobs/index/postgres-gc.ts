// The queries of garbage collection and the cache quota over the PostgreSQL index (what
// index.ts's last two sections promise), across replicas (gc.ts's header):
//  - a sweep step is one transaction that first takes the repository's row FOR UPDATE:
//    it waits for every write to the repository in flight (each holds the row FOR SHARE
//    from before it stamps its rows until it commits), and holds off the next ones until
//    it commits. Its statements (READ COMMITTED) then see every write stamped before it,
//    and every later write is stamped after its clock reading (asOf);
//  - a snapshot and the writes since a time are read the same way, holding the row FOR
//    UPDATE for the moment of their reads, so that `asOf` is true of them too: without the
//    lock, a write stamped before asOf could commit after the reads and never be seen;
//  - blob rows are dropped only after they are locked FOR UPDATE (links wait for that).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type { BlobUse, BuildStamp, ManifestStamp, RepoKey, RepoSnapshot, RepoWrites, SweepResult, SweepStep, WritesSince } from './index.js';
import type { PgPool, Tx } from './postgres-pool.js';
import { NOW_MS } from './postgres-schema.js';

export class PostgresGc {
  constructor(private readonly pool: PgPool) {}

  repositories(): Promise<RepoKey[]> { return this.pool.query<RepoKey>('SELECT id, name FROM repositories ORDER BY id'); }

  /** Holds the repository's row FOR UPDATE and reads the database's clock after it. */
  private async lock(t: Tx, repo: RepoKey): Promise<number> {
    await t.query('SELECT 1 FROM repositories WHERE id = $1 FOR UPDATE', [repo.id]);
    return (await t.query<{ now: number }>(`SELECT ${NOW_MS} AS now`)).rows[0]!.now;
  }

  private async manifestsSince(t: Tx, repo: RepoKey, since: number): Promise<ManifestStamp[]> {
    return (await t.query<ManifestStamp>(`SELECT digest, media_type, subject, created_at, by_digest FROM manifests
      WHERE repo_id = $1 AND created_at >= $2`, [repo.id, since])).rows;
  }

  snapshot(repo: RepoKey): Promise<RepoSnapshot> {
    return this.pool.tx(async (t) => {
      const asOf = await this.lock(t, repo);
      return {
        asOf,
        manifests: await this.manifestsSince(t, repo, Number.MIN_SAFE_INTEGER),
        tagged: (await t.query<{ digest: string }>('SELECT DISTINCT digest FROM tags WHERE repo_id = $1', [repo.id])).rows.map((r) => r.digest),
        builds: (await t.query<BuildStamp>('SELECT manifest, alt_manifest, evicted_at FROM builds WHERE repo = $1', [repo.name])).rows,
      };
    });
  }

  private async writesIn(t: Tx, repo: RepoKey, since: WritesSince, asOf: number): Promise<RepoWrites> {
    const builds = await t.query<{ manifest: string; alt_manifest: string | null }>(
      'SELECT manifest, alt_manifest FROM builds WHERE repo = $1 AND created_at >= $2 AND evicted_at IS NULL', [repo.name, since.others]);
    return {
      asOf,
      manifests: await this.manifestsSince(t, repo, since.manifests),
      tags: (await t.query<{ digest: string }>('SELECT digest FROM tags WHERE repo_id = $1 AND updated_at >= $2', [repo.id, since.others]))
        .rows.map((r) => r.digest),
      builds: builds.rows.flatMap((b) => (b.alt_manifest ? [b.manifest, b.alt_manifest] : [b.manifest])),
    };
  }

  writes(repo: RepoKey, since: WritesSince): Promise<RepoWrites> {
    return this.pool.tx(async (t) => this.writesIn(t, repo, since, await this.lock(t, repo)));
  }

  async candidates(repo: RepoKey, cutoff: number): Promise<{ manifests: string[]; links: string[] }> {
    const [manifests, links] = await Promise.all([
      this.pool.query<{ digest: string }>('SELECT digest FROM manifests WHERE repo_id = $1 AND created_at < $2', [repo.id, cutoff]),
      this.pool.query<{ digest: string }>('SELECT digest FROM repo_blobs WHERE repo_id = $1 AND linked_at < $2', [repo.id, cutoff]),
    ]);
    return { manifests: manifests.map((r) => r.digest), links: links.map((r) => r.digest) };
  }

  /**
   * One transaction holding the repository's row FOR UPDATE: no write to the repository
   * can come between the mark's catching up and the removals. Bodies the writes need are
   * read here: locally and at once where the store allows, else awaited (a remote store);
   * pushes to this one repository wait meanwhile, up to the deadline of a statement.
   */
  sweepStep(repo: RepoKey, step: SweepStep): Promise<SweepResult> {
    return this.pool.tx(async (t): Promise<SweepResult> => {
      const { mark } = step;
      const asOf = await this.lock(t, repo);
      const missing = mark.takeIn(await this.writesIn(t, repo, mark.wants(), asOf));
      if (missing.length) {
        const now = missing.length <= step.maxReads ? mark.readNow(missing) : 'more';
        if (now !== 'read' && !await mark.read(missing)) return { outcome: 'unreadable' };
      }
      mark.caughtUp(asOf);
      const manifests = step.manifests.filter((d) => !mark.keepsManifest(d));
      const links = step.links.filter((d) => !mark.keepsLink(d));
      const m = manifests.length ? await t.query(`DELETE FROM manifests WHERE repo_id = $1 AND digest = ANY($2::text[]) AND created_at < $3
        AND NOT EXISTS (SELECT 1 FROM tags g WHERE g.repo_id = manifests.repo_id AND g.digest = manifests.digest)`,
      [repo.id, manifests, step.cutoff]) : { rowCount: 0 };
      const l = links.length ? await t.query('DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = ANY($2::text[]) AND linked_at < $3',
        [repo.id, links, step.cutoff]) : { rowCount: 0 };
      return { outcome: 'swept', manifests: m.rowCount ?? 0, links: l.rowCount ?? 0 };
    });
  }

  async isTagged(repo: RepoKey, digest: string): Promise<boolean> {
    return (await this.pool.query('SELECT 1 FROM tags WHERE repo_id = $1 AND digest = $2 LIMIT 1', [repo.id, digest])).length > 0;
  }

  async unusedBlobs(cutoff: number): Promise<string[]> {
    return (await this.pool.query<{ digest: string }>(`SELECT digest FROM blobs b WHERE created_at < $1
        AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
        AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest) ORDER BY digest`, [cutoff])).map((r) => r.digest);
  }

  dropUnused(digests: string[], cutoff: number): Promise<{ digest: string; size: number }[]> {
    if (!digests.length) return Promise.resolve([]);
    return this.pool.tx(async (t) => {
      // Locked in digest order (two collections, or a delete, never wait on each other in a cycle);
      // the statement after sees every link committed before the locks.
      await t.query('SELECT 1 FROM blobs WHERE digest = ANY($1::text[]) ORDER BY digest FOR UPDATE', [digests]);
      const gone = await t.query<{ digest: string; size: number }>(`
        WITH gone AS (
          SELECT b.digest FROM blobs b WHERE b.digest = ANY($1::text[])
             AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
             AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)
             AND NOT EXISTS (SELECT 1 FROM layers y WHERE y.digest = b.digest AND y.created_at >= $2)),
        layers_gone AS (DELETE FROM layers WHERE digest IN (SELECT digest FROM gone) RETURNING 1)
        SELECT digest FROM gone`, [digests, cutoff]);
      if (!gone.rowCount) return [];
      const names = gone.rows.map((r) => r.digest);
      return (await t.query<{ digest: string; size: number }>('DELETE FROM blobs WHERE digest = ANY($1::text[]) RETURNING digest, size', [names])).rows;
    });
  }

  async blobUses(cutoff: number, after: string, limit: number): Promise<BlobUse[]> {
    return this.pool.query<BlobUse>(`SELECT digest, size, (SELECT count(*) FROM repo_blobs l WHERE l.digest = b.digest) AS links,
        (SELECT count(*) FROM manifests m WHERE m.digest = b.digest) AS manifests,
        (SELECT count(*) FROM layers y WHERE y.digest = b.digest AND y.created_at >= $1) AS young
      FROM blobs b WHERE created_at < $1 AND digest > $2 ORDER BY digest LIMIT $3`, [cutoff, after, limit]);
  }

  async notePulls(pulls: { repo: string; digest: string; at: number }[]): Promise<void> {
    if (!pulls.length) return;
    // One statement; a build pulled by both its manifests takes the later time.
    await this.pool.query(`UPDATE builds b SET last_pulled = greatest(coalesce(b.last_pulled, 0), x.at)
      FROM (SELECT c.repo, c.hash, max(u.at) AS at FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(repo, digest, at)
              JOIN builds c ON c.repo = u.repo AND (c.manifest = u.digest OR c.alt_manifest = u.digest)
             WHERE c.evicted_at IS NULL GROUP BY c.repo, c.hash) x
      WHERE b.repo = x.repo AND b.hash = x.hash`, [pulls.map((p) => p.repo), pulls.map((p) => p.digest), pulls.map((p) => Math.round(p.at))]);
  }

  async builtUsage(): Promise<number> {
    return (await this.pool.query<{ n: number }>(`
      WITH built AS (SELECT r.id FROM repositories r WHERE r.name IN (SELECT repo FROM builds))
      SELECT coalesce(sum(b.size), 0) AS n FROM blobs b
       WHERE (EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.repo_id IN (SELECT id FROM built))
           OR EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest AND m.repo_id IN (SELECT id FROM built))
           OR EXISTS (SELECT 1 FROM layers y WHERE y.digest = b.digest))
         AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest AND l.repo_id NOT IN (SELECT id FROM built))
         AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest AND m.repo_id NOT IN (SELECT id FROM built))`))[0]!.n;
  }

  evictionOrder(): Promise<{ repo: string; manifest: string }[]> {
    return this.pool.query<{ repo: string; manifest: string }>(`SELECT repo, manifest FROM builds WHERE evicted_at IS NULL
      GROUP BY repo, manifest ORDER BY max(coalesce(last_pulled, created_at)) ASC, repo, manifest`);
  }

  evictBuild(repo: string, manifest: string): Promise<void> {
    return this.pool.tx(async (t) => {
      const rows = (await t.query<{ alt_manifest: string | null }>(
        'SELECT alt_manifest FROM builds WHERE repo = $1 AND manifest = $2 AND evicted_at IS NULL FOR UPDATE', [repo, manifest])).rows;
      await t.query(`UPDATE builds SET evicted_at = ${NOW_MS} WHERE repo = $1 AND manifest = $2 AND evicted_at IS NULL`, [repo, manifest]);
      const id = (await t.query<{ id: number }>('SELECT id FROM repositories WHERE name = $1', [repo])).rows[0]?.id;
      if (id === undefined) return;
      for (const d of new Set([manifest, ...rows.map((r) => r.alt_manifest).filter((a): a is string => a !== null)])) {
        // Another build on record may name the same manifest (an ingested archive is
        // filed under two hashes): it goes with the last of them.
        const named = await t.query('SELECT 1 FROM builds WHERE repo = $1 AND evicted_at IS NULL AND (manifest = $2 OR alt_manifest = $2) LIMIT 1',
          [repo, d]);
        if (named.rowCount) continue;
        await t.query('DELETE FROM tags WHERE repo_id = $1 AND digest = $2', [id, d]);
        await t.query('DELETE FROM manifests WHERE repo_id = $1 AND digest = $2', [id, d]);
      }
    });
  }
}
