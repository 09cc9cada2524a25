// The index in PostgreSQL (--database postgres://…): one database shared by any number
// of replicas, so `shared` is true. Each atomic method of index.ts is one transaction on
// one pooled connection (postgres-pool.ts: deadlines, retries, IndexUnavailable); a
// lookup is one statement. The schema and its migrations are postgres-schema.ts; GC's
// and the cache quota's queries postgres-gc.ts.
//
// Replicas agree through the database alone:
//  - Every write to a repository takes the repository's row FOR SHARE first and stamps
//    its rows with the database's clock after that (NOW_MS); a sweep step holds the row
//    FOR UPDATE (gc.ts's header says why that is enough).
//  - A blob row that may be deleted (a manifest's delete, GC) is locked FOR UPDATE
//    before it is found unused, and a writer that needs it to stay (a link) holds it
//    FOR KEY SHARE, which the first waits for: a link can never be made to a blob row
//    being dropped, nor a row dropped under a link being made.
//  - Upload claims run on the database's clock: whether a claim still runs is decided by
//    the database's clock, and a replica's `until` is moved onto that clock by the offset
//    between the two (measured at open and every minute; 0 when within the measurement's
//    error), so replicas whose clocks differ agree on whose claim runs.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type {
  BlobUse, BuildRow, Index, LayerRow, ManifestRow, NewManifest, References, ReferrerRow, ReferrersPage,
  RepoKey, RepoSnapshot, RepoWrites, SweepResult, SweepStep, UploadCounts, UploadListing, UploadRow, WritesSince,
} from './index.js';
import { PgPool, type PgOptions, type Tx } from './postgres-pool.js';
import { PostgresGc } from './postgres-gc.js';
import { PgLocks } from './postgres-locks.js';
import { PostgresJobs } from './postgres-jobs.js';
import { NOW_MS, migrate } from './postgres-schema.js';

/** Key of the advisory lock that starts of uploads under limits take (bigint key space; "nixreg" + 3). */
const UPLOADS_LOCK = 0x6e69787265670003n;
const COUNT_UPLOADS = `SELECT (SELECT count(*) FROM uploads WHERE repo = $1) AS repo, (SELECT count(*) FROM uploads WHERE client = $2) AS client,
  (SELECT count(*) FROM uploads) AS total`;

const MANIFEST_COLS = 'm.digest, m.media_type, m.size, m.artifact_type, m.subject';

/** The repository's id, its row held FOR SHARE until the transaction ends; created if missing. */
export async function shareRepo(t: Tx, name: string): Promise<number> {
  for (;;) {
    const r = await t.query<{ id: number }>('SELECT id FROM repositories WHERE name = $1 FOR SHARE', [name]);
    if (r.rows[0]) return r.rows[0].id;
    // Our own new row needs no lock: nobody sees it before we commit. A concurrent insert
    // of the same name makes this one wait for it and do nothing; the select then sees it.
    const i = await t.query<{ id: number }>(
      `INSERT INTO repositories (name, created_at) VALUES ($1, ${NOW_MS}) ON CONFLICT (name) DO NOTHING RETURNING id`, [name]);
    if (i.rows[0]) return i.rows[0].id;
  }
}

/** The repository's id, or undefined, without locking it (for deletes: they cannot hide anything from a sweep). */
async function repoIdOf(t: Tx, name: string): Promise<number | undefined> {
  return (await t.query<{ id: number }>('SELECT id FROM repositories WHERE name = $1', [name])).rows[0]?.id;
}

/**
 * Deletes blob `digest`'s row if nothing uses it (no link, manifest row or cached
 * layer); true if it did. Locks the row first, so that the check in the statement after
 * sees every link committed before the lock and none can be made until we commit.
 */
export async function dropBlobIfUnused(t: Tx, digest: string): Promise<boolean> {
  const locked = await t.query('SELECT 1 FROM blobs WHERE digest = $1 FOR UPDATE', [digest]);
  if (!locked.rowCount) return false;
  const r = await t.query(`DELETE FROM blobs b WHERE digest = $1
      AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
      AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)
      AND NOT EXISTS (SELECT 1 FROM layers y WHERE y.digest = b.digest)`, [digest]);
  return (r.rowCount ?? 0) > 0;
}

/** How often the offset between this process's clock and the database's is measured again. */
const CLOCK_EVERY_MS = 60_000;

export class PostgresIndex implements Index {
  readonly shared = true;
  readonly description: string;
  readonly pool: PgPool;
  private readonly gc: PostgresGc;
  private readonly locks: PgLocks;
  readonly jobs: PostgresJobs;

  /** The database's clock less this process's (ms): what a time of ours is on the database's clock. */
  private offset = 0;
  private readonly clockTimer: NodeJS.Timeout;

  private constructor(pool: PgPool) {
    this.pool = pool;
    this.description = pool.description;
    this.gc = new PostgresGc(pool);
    this.locks = new PgLocks(pool);
    this.jobs = new PostgresJobs(pool);
    this.clockTimer = setInterval(() => { this.measureClock().catch(() => {}); }, CLOCK_EVERY_MS);
    this.clockTimer.unref();
  }

  /** Measures the offset; within the round trip's error it is taken as 0 (the clocks agree). */
  private async measureClock(): Promise<void> {
    const t0 = Date.now();
    const [r] = await this.pool.query<{ now: number }>(`SELECT ${NOW_MS} AS now`);
    const t1 = Date.now();
    const offset = r!.now - (t0 + t1) / 2;
    this.offset = Math.abs(offset) <= (t1 - t0) / 2 + 2 ? 0 : Math.round(offset);
  }
  /** A time of this process's clock on the database's. */
  private ours(t: number): number { return Math.round(t + this.offset); }

  /** Connects, and migrates the schema (once, whoever else starts at the same moment). */
  static async open(o: PgOptions): Promise<PostgresIndex> {
    const pool = new PgPool(o);
    try {
      await pool.withClient((c) => migrate(c));
    } catch (e) {
      await pool.close();
      throw pool.unavailable(e);
    }
    const index = new PostgresIndex(pool);
    await index.measureClock().catch(() => {});
    return index;
  }

  private closed = false;
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.clockTimer);
    await this.locks.close();
    await this.pool.close();
  }

  /** Runs `fn` holding `digest`'s lock among every process sharing the index (postgres-locks.ts). */
  withDigestLock<T>(digest: string, fn: () => Promise<T>): Promise<T> { return this.locks.withDigest(digest, fn); }
  /** One collection at a time among replicas: a release, or undefined while another replica collects. */
  collectorLock(onLost?: () => void): Promise<(() => Promise<void>) | undefined> { return this.locks.collector(onLost); }
  lease(key: string, signal?: AbortSignal, waiting?: () => void): Promise<() => Promise<void>> { return this.locks.lease(key, signal, waiting); }
  async ping(): Promise<void> { await this.pool.query('SELECT 1'); }

  private async one<R extends object>(name: string, text: string, values: unknown[]): Promise<R | undefined> {
    return (await this.pool.named<R>(name, text, values))[0];
  }

  // ------------------------------------------------------------------ blobs and links

  async blobSize(digest: string) {
    return (await this.one<{ size: number }>('blobSize', 'SELECT size FROM blobs WHERE digest = $1', [digest]))?.size;
  }
  async addBlob(repo: string, digest: string, size: number): Promise<void> {
    await this.pool.tx(async (t) => {
      const id = await shareRepo(t, repo);
      // DO UPDATE, not DO NOTHING: it locks the row, so a collection cannot drop it
      // between this statement and the link's.
      await t.query(`INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, ${NOW_MS})
        ON CONFLICT (digest) DO UPDATE SET size = blobs.size`, [digest, size]);
      await t.query(`INSERT INTO repo_blobs (repo_id, digest, linked_at) VALUES ($1, $2, ${NOW_MS})
        ON CONFLICT (repo_id, digest) DO UPDATE SET linked_at = excluded.linked_at`, [id, digest]);
    });
  }
  async linkBlob(repo: string, digest: string): Promise<boolean> {
    return this.pool.tx(async (t) => {
      // The blob first: a refused link must not create the repository.
      if (!(await t.query('SELECT 1 FROM blobs WHERE digest = $1 FOR KEY SHARE', [digest])).rowCount) return false;
      const id = await shareRepo(t, repo);
      await t.query(`INSERT INTO repo_blobs (repo_id, digest, linked_at) VALUES ($1, $2, ${NOW_MS})
        ON CONFLICT (repo_id, digest) DO UPDATE SET linked_at = excluded.linked_at`, [id, digest]);
      return true;
    });
  }
  async linkedBlobSize(repo: string, digest: string) {
    return (await this.one<{ size: number }>('linkedBlobSize', `SELECT b.size FROM repo_blobs l
      JOIN repositories r ON r.id = l.repo_id JOIN blobs b ON b.digest = l.digest WHERE r.name = $1 AND l.digest = $2`, [repo, digest]))?.size;
  }
  async unlinkBlob(repo: string, digest: string): Promise<{ removed: boolean; orphaned: boolean }> {
    return this.pool.tx(async (t) => {
      const id = await repoIdOf(t, repo);
      if (id === undefined) return { removed: false, orphaned: false };
      const removed = ((await t.query('DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2', [id, digest])).rowCount ?? 0) > 0;
      return { removed, orphaned: removed && await dropBlobIfUnused(t, digest) };
    });
  }
  async forgetBlob(digest: string): Promise<void> {
    await this.pool.tx(async (t) => {
      await t.query('SELECT 1 FROM blobs WHERE digest = $1 FOR UPDATE', [digest]);
      for (const table of ['tags', 'manifests', 'repo_blobs', 'layers', 'blobs']) await t.query(`DELETE FROM ${table} WHERE digest = $1`, [digest]);
    });
  }
  async blobsAfter(after: string, limit: number) {
    return this.pool.query<{ digest: string; created_at: number }>(
      'SELECT digest, created_at FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2', [after, limit]);
  }
  async totals() {
    const r = (await this.pool.query<{ n: number; bytes: number }>('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM blobs'))[0]!;
    return { blobs: r.n, bytes: r.bytes };
  }

  // ------------------------------------------------------------------ repositories

  async repository(name: string): Promise<RepoKey | undefined> {
    return this.one<RepoKey>('repository', 'SELECT id, name FROM repositories WHERE name = $1', [name]);
  }
  async listRepos(last: string, n: number) {
    return (await this.pool.query<{ name: string }>(`SELECT name FROM repositories r WHERE name > $1
        AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) OR EXISTS (SELECT 1 FROM repo_blobs b WHERE b.repo_id = r.id))
      ORDER BY name LIMIT $2`, [last, n])).map((r) => r.name);
  }
  async repositories() { return this.gc.repositories(); }

  // ------------------------------------------------------------------ manifests and tags

  async lookup(repo: string, ref: { tag: string } | { digest: string }): Promise<ManifestRow | undefined> {
    return 'tag' in ref
      ? this.one<ManifestRow>('lookupTag', `SELECT ${MANIFEST_COLS} FROM tags t JOIN repositories r ON r.id = t.repo_id
          JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest WHERE r.name = $1 AND t.name = $2`, [repo, ref.tag])
      : this.one<ManifestRow>('lookupDigest', `SELECT ${MANIFEST_COLS} FROM manifests m JOIN repositories r ON r.id = m.repo_id
          WHERE r.name = $1 AND m.digest = $2`, [repo, ref.digest]);
  }
  async resolveTag(repo: string, tag: string) {
    return (await this.one<{ digest: string }>('resolveTag',
      'SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.name = $1 AND t.name = $2', [repo, tag]))?.digest;
  }
  async putManifest(repo: string, m: NewManifest, refs: References, tag?: string): Promise<string[]> {
    return this.pool.tx(async (t) => {
      let id = (await t.query<{ id: number }>('SELECT id FROM repositories WHERE name = $1 FOR SHARE', [repo])).rows[0]?.id;
      // No repository: every reference is missing, and nothing may be written (not even its row).
      if (id === undefined && (refs.blobs.length || refs.manifests.length)) return [...refs.blobs, ...refs.manifests];
      if (id !== undefined && (refs.blobs.length || refs.manifests.length)) {
        // The repository's row is held FOR SHARE: no sweep step can remove these until we commit.
        const missing = await t.query<{ d: string }>(`
          SELECT d FROM (SELECT d, n FROM unnest($2::text[]) WITH ORDINALITY AS x(d, n)
                          WHERE NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.repo_id = $1 AND l.digest = x.d)
                         UNION ALL
                         SELECT d, n + 1000000000 FROM unnest($3::text[]) WITH ORDINALITY AS y(d, n)
                          WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = $1 AND m.digest = y.d)) z ORDER BY n`,
        [id, refs.blobs, refs.manifests]);
        if (missing.rowCount) return missing.rows.map((r) => r.d);
      }
      id ??= await shareRepo(t, repo);
      await t.query(`INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, ${NOW_MS})
        ON CONFLICT (digest) DO UPDATE SET size = blobs.size`, [m.digest, m.size]);
      // Not a delete and insert: the delete would cascade to the manifest's tags.
      await t.query(`INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, created_at, by_digest)
        VALUES ($1, $2, $3, $4, $5, $6, ${NOW_MS}, $7)
        ON CONFLICT (repo_id, digest) DO UPDATE SET media_type = excluded.media_type, size = excluded.size,
          artifact_type = excluded.artifact_type, subject = excluded.subject,
          by_digest = manifests.by_digest OR excluded.by_digest, created_at = excluded.created_at`,
      [id, m.digest, m.mediaType, m.size, m.artifactType ?? null, m.subject ?? null, !!m.byDigest]);
      if (m.subject !== undefined && m.annotations !== undefined) {
        const json = JSON.stringify(m.annotations);
        await t.query(`INSERT INTO referrer_annotations (repo_id, digest, bytes, json) VALUES ($1, $2, $3, $4)
          ON CONFLICT (repo_id, digest) DO NOTHING`, [id, m.digest, Buffer.byteLength(json), json]);
      }
      if (tag !== undefined) await this.upsertTag(t, id, tag, m.digest);
      return [];
    });
  }
  private async upsertTag(t: Tx, id: number, tag: string, digest: string): Promise<void> {
    await t.query(`INSERT INTO tags (repo_id, name, digest, updated_at) VALUES ($1, $2, $3, ${NOW_MS})
      ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at`, [id, tag, digest]);
  }
  async deleteManifest(repo: string, digest: string): Promise<{ deleted: boolean; tags: string[]; orphaned: boolean }> {
    return this.pool.tx(async (t) => {
      const id = await repoIdOf(t, repo);
      if (id === undefined) return { deleted: false, tags: [], orphaned: false };
      const tags = (await t.query<{ name: string }>('SELECT name FROM tags WHERE repo_id = $1 AND digest = $2 ORDER BY name', [id, digest]))
        .rows.map((r) => r.name);
      const deleted = ((await t.query('DELETE FROM manifests WHERE repo_id = $1 AND digest = $2', [id, digest])).rowCount ?? 0) > 0;
      return { deleted, tags, orphaned: deleted && await dropBlobIfUnused(t, digest) };
    });
  }
  async putTag(repo: string, tag: string, digest: string): Promise<void> {
    await this.pool.tx(async (t) => this.upsertTag(t, await shareRepo(t, repo), tag, digest));
  }
  async deleteTag(repo: string, tag: string): Promise<boolean> {
    const r = await this.pool.query<{ one: number }>(
      'DELETE FROM tags t USING repositories r WHERE r.id = t.repo_id AND r.name = $1 AND t.name = $2 RETURNING 1 AS one', [repo, tag]);
    return r.length > 0;
  }
  async listTags(repo: string, last: string, n: number): Promise<string[] | undefined> {
    const r = await this.pool.query<{ name: string | null }>(`SELECT t.name FROM repositories r
      LEFT JOIN LATERAL (SELECT name FROM tags WHERE repo_id = r.id AND name > $2 ORDER BY name LIMIT $3) t ON true
      WHERE r.name = $1`, [repo, last, n]);
    if (!r.length) return undefined;
    return r.filter((x) => x.name !== null).map((x) => x.name!);
  }
  async tagTimes(repo: string, tags: string[]): Promise<{ tag: string; updated: number; pulled: number | null }[]> {
    return this.pool.query(`SELECT t.name AS tag, t.updated_at::float8 AS updated, (SELECT max(b.last_pulled)::float8 FROM builds b WHERE b.repo = r.name
        AND (b.manifest = t.digest OR b.alt_manifest = t.digest)) AS pulled FROM repositories r JOIN tags t ON t.repo_id = r.id WHERE r.name = $1 AND t.name = ANY($2::text[])`, [repo, tags]);
  }
  async repoChanges(repos: string[]): Promise<{ repo: string; changed: number }[]> {
    return this.pool.query(`SELECT * FROM (SELECT name AS repo, greatest((SELECT max(updated_at) FROM tags WHERE repo_id = r.id),
      (SELECT max(created_at) FROM manifests WHERE repo_id = r.id))::float8 AS changed FROM repositories r WHERE name = ANY($1::text[])) x WHERE changed IS NOT NULL`, [repos]);
  }
  async referrers(repo: string, subject: string, page: ReferrersPage): Promise<ReferrerRow[]> {
    return this.pool.query<ReferrerRow>(`SELECT m.digest, m.media_type, m.size, m.artifact_type, a.bytes AS annotations_bytes
        FROM manifests m JOIN repositories r ON r.id = m.repo_id
        LEFT JOIN referrer_annotations a ON a.repo_id = m.repo_id AND a.digest = m.digest
       WHERE r.name = $1 AND m.subject = $2 AND m.digest > $3 AND ($4::text IS NULL OR m.artifact_type = $4)
       ORDER BY m.digest LIMIT $5`, [repo, subject, page.after, page.artifactType ?? null, page.limit]);
  }
  async referrerAnnotations(repo: string, digest: string): Promise<Buffer | undefined> {
    // As bytes: the answer is bytes, and megabytes need not be decoded and encoded again.
    return (await this.one<{ json: Buffer }>('annotations', `SELECT convert_to(a.json, 'UTF8') AS json FROM referrer_annotations a
      JOIN repositories r ON r.id = a.repo_id WHERE r.name = $1 AND a.digest = $2`, [repo, digest]))?.json;
  }

  // ------------------------------------------------------------------ uploads

  async createUpload(id: string, repo: string, client: string, limits?: UploadCounts): Promise<UploadCounts | undefined> {
    const insert = `INSERT INTO uploads (id, repo, client, started_at, updated_at) VALUES ($1, $2, $3, ${NOW_MS}, ${NOW_MS})`;
    if (!limits) {
      await this.pool.query(insert, [id, repo, client]);
      return undefined;
    }
    return this.pool.tx(async (t) => {
      // Every start with limits, on every replica, counts and inserts one after the other:
      // two cannot both take the last free slot. Held for two statements.
      await t.query('SELECT pg_advisory_xact_lock($1)', [UPLOADS_LOCK.toString()]);
      const open = (await t.query<UploadCounts>(COUNT_UPLOADS, [repo, client])).rows[0]!;
      if (open.repo >= limits.repo || open.client >= limits.client || open.total >= limits.total) return open;
      await t.query(insert, [id, repo, client]);
      return undefined;
    });
  }
  async openUploads(repo: string, client: string) { return (await this.pool.query<UploadCounts>(COUNT_UPLOADS, [repo, client]))[0]!; }
  async uploadCount() { return (await this.pool.query<{ n: number }>('SELECT count(*) AS n FROM uploads'))[0]!.n; }
  async getUpload(id: string) {
    return this.one<UploadRow>('getUpload', 'SELECT repo, started_at, updated_at, staged, claimed_by FROM uploads WHERE id = $1', [id]);
  }
  async touchUpload(id: string, staged?: string) {
    await this.pool.named('touchUpload', `UPDATE uploads SET updated_at = ${NOW_MS}, staged = coalesce($2, staged) WHERE id = $1`,
      [id, staged ?? null]);
  }
  async claimUpload(id: string, owner: string, until: number) {
    return (await this.pool.named('claimUpload', `UPDATE uploads SET claimed_by = $2, claimed_until = $3
      WHERE id = $1 AND (claimed_until IS NULL OR claimed_until < ${NOW_MS} OR claimed_by = $2) RETURNING 1`,
    [id, owner, this.ours(until)])).length > 0;
  }
  async takeOverClaim(id: string, from: string, owner: string, until: number) {
    return (await this.pool.query('UPDATE uploads SET claimed_by = $3, claimed_until = $4 WHERE id = $1 AND claimed_by = $2 RETURNING 1',
      [id, from, owner, this.ours(until)])).length > 0;
  }
  async extendClaim(id: string, owner: string, until: number) {
    await this.pool.named('extendClaim', 'UPDATE uploads SET claimed_until = $3 WHERE id = $1 AND claimed_by = $2', [id, owner, this.ours(until)]);
  }
  async releaseUpload(id: string, owner: string) {
    await this.pool.named('releaseUpload', 'UPDATE uploads SET claimed_until = NULL WHERE id = $1 AND claimed_by = $2', [id, owner]);
  }
  async deleteUpload(id: string) { await this.pool.query('DELETE FROM uploads WHERE id = $1', [id]); }
  async allUploads() {
    // Claims back on this process's clock, which its caller compares them with.
    return (await this.pool.query<UploadListing>('SELECT id, updated_at, staged, claimed_until FROM uploads'))
      .map((u) => ({ ...u, claimed_until: u.claimed_until === null ? null : u.claimed_until - this.offset }));
  }

  // ------------------------------------------------------------------ build-on-pull

  async getLayer(key: string) {
    return this.one<LayerRow>('getLayer', 'SELECT l.digest, l.diff_id, l.size FROM layers l JOIN blobs b ON b.digest = l.digest WHERE l.key = $1', [key]);
  }
  async putLayer(key: string, l: LayerRow) {
    await this.pool.query(`INSERT INTO layers (key, digest, diff_id, size, created_at) VALUES ($1, $2, $3, $4, ${NOW_MS})
      ON CONFLICT (key) DO UPDATE SET digest = excluded.digest, diff_id = excluded.diff_id, size = excluded.size,
        created_at = excluded.created_at`, [key, l.digest, l.diff_id, l.size]);
  }
  async getBuild(repo: string, hash: string) {
    return this.one<BuildRow>('getBuild', `SELECT repo, hash, manifest, media_type, size, alt_manifest, alt_media_type, alt_size,
      store_path, evicted_at, layer_format FROM builds WHERE repo = $1 AND hash = $2`, [repo, hash]);
  }
  async hasBuilds(repo: string) {
    return (await this.one('hasBuilds', 'SELECT 1 AS one FROM builds WHERE repo = $1 LIMIT 1', [repo])) !== undefined;
  }
  async putBuild(b: Omit<BuildRow, 'evicted_at'>): Promise<void> {
    await this.pool.tx(async (t) => {
      // A write to the repository like any other: a sweep step must see it or wait for it.
      await shareRepo(t, b.repo);
      await t.query(`INSERT INTO builds (repo, hash, manifest, media_type, size, alt_manifest, alt_media_type, alt_size, store_path,
          created_at, last_pulled, evicted_at, layer_format)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, ${NOW_MS}, ${NOW_MS}, NULL, $10)
        ON CONFLICT (repo, hash) DO UPDATE SET manifest = excluded.manifest, media_type = excluded.media_type, size = excluded.size,
          alt_manifest = excluded.alt_manifest, alt_media_type = excluded.alt_media_type, alt_size = excluded.alt_size,
          store_path = excluded.store_path, created_at = excluded.created_at, last_pulled = excluded.last_pulled,
          evicted_at = NULL, layer_format = excluded.layer_format`,
      [b.repo, b.hash, b.manifest, b.media_type, b.size, b.alt_manifest, b.alt_media_type, b.alt_size, b.store_path, b.layer_format]);
    });
  }

  // ------------------------------------------------------------------ the cache quota and garbage collection (postgres-gc.ts)

  async notePulls(pulls: { repo: string; digest: string; at: number }[]) { await this.gc.notePulls(pulls); }
  async builtUsage() { return this.gc.builtUsage(); }
  async evictionOrder() { return this.gc.evictionOrder(); }
  async evictBuild(repo: string, manifest: string) { await this.gc.evictBuild(repo, manifest); }
  async repoSnapshot(repo: RepoKey): Promise<RepoSnapshot> { return this.gc.snapshot(repo); }
  async repoWrites(repo: RepoKey, since: WritesSince): Promise<RepoWrites> { return this.gc.writes(repo, since); }
  async sweepCandidates(repo: RepoKey, cutoff: number) { return this.gc.candidates(repo, cutoff); }
  async sweepStep(repo: RepoKey, step: SweepStep): Promise<SweepResult> { return this.gc.sweepStep(repo, step); }
  async isTagged(repo: RepoKey, digest: string) { return this.gc.isTagged(repo, digest); }
  async unusedBlobs(cutoff: number) { return this.gc.unusedBlobs(cutoff); }
  async dropUnusedBlobs(digests: string[], cutoff: number) { return this.gc.dropUnused(digests, cutoff); }
  async blobUses(cutoff: number, after: string, limit: number): Promise<BlobUse[]> { return this.gc.blobUses(cutoff, after, limit); }
}
