// The embedded index: SQLite (better-sqlite3, WAL) in the data directory, the default.
// One process writes it (`nixreg gc` beside a server only reads, see gc-command.ts), so
// `shared` is false. Every call runs synchronously inside and returns a settled promise:
// a query is a few microseconds, and a transaction can never interleave with another
// request's, which is how each atomic method of index.ts is atomic here. The schema and
// its migrations are sqlite-schema.ts; the queries of GC and the cache quota sqlite-gc.ts.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type Database from 'better-sqlite3';
import type {
  BlobUse, BuildRow, Index, LayerRow, ManifestRow, NewManifest, References, ReferrerRow, ReferrersPage,
  RepoKey, RepoSnapshot, RepoWrites, SweepResult, SweepStep, UploadCounts, UploadListing, UploadRow, WritesSince,
} from './index.js';
import { SqliteGc } from './sqlite-gc.js';
import { openDatabase } from './sqlite-schema.js';

const now = () => Date.now();

function statements(db: Database.Database) {
  return {
    getBlob: db.prepare<[string], { size: number }>('SELECT size FROM blobs WHERE digest = ?'),
    insertBlob: db.prepare('INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?, ?, ?)'),
    deleteBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
    blobInUse: db.prepare<[string, string, string], { n: number }>(
      `SELECT (SELECT count(*) FROM repo_blobs WHERE digest = ?) + (SELECT count(*) FROM manifests WHERE digest = ?)
            + (SELECT count(*) FROM layers WHERE digest = ?) AS n`),
    blobsAfter: db.prepare<[string, number], { digest: string; created_at: number }>(
      'SELECT digest, created_at FROM blobs WHERE digest > ? ORDER BY digest LIMIT ?'),
    totals: db.prepare<[], { n: number; bytes: number }>('SELECT count(*) AS n, total(size) AS bytes FROM blobs'),
    repoId: db.prepare<[string], { id: number }>('SELECT id FROM repositories WHERE name = ?'),
    insertRepo: db.prepare('INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?, ?)'),
    listRepos: db.prepare<[string, number], { name: string }>(
      `SELECT name FROM repositories r WHERE name > ?
         AND (EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) OR EXISTS (SELECT 1 FROM repo_blobs b WHERE b.repo_id = r.id))
       ORDER BY name LIMIT ?`),
    link: db.prepare(`INSERT INTO repo_blobs (repo_id, digest, linked_at) VALUES (?, ?, ?)
      ON CONFLICT (repo_id, digest) DO UPDATE SET linked_at = excluded.linked_at`),
    unlink: db.prepare('DELETE FROM repo_blobs WHERE repo_id = ? AND digest = ?'),
    linkedSize: db.prepare<[string, string], { size: number }>(
      `SELECT b.size FROM repo_blobs l JOIN repositories r ON r.id = l.repo_id JOIN blobs b ON b.digest = l.digest
        WHERE r.name = ? AND l.digest = ?`),
    getManifest: db.prepare<[string, string], ManifestRow>(
      `SELECT m.digest, m.media_type, m.size, m.artifact_type, m.subject FROM manifests m
         JOIN repositories r ON r.id = m.repo_id WHERE r.name = ? AND m.digest = ?`),
    // A pull by tag: the tag and its manifest in one lookup.
    getTagged: db.prepare<[string, string], ManifestRow>(
      `SELECT m.digest, m.media_type, m.size, m.artifact_type, m.subject FROM tags t
         JOIN repositories r ON r.id = t.repo_id JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
        WHERE r.name = ? AND t.name = ?`),
    insertManifest: db.prepare(
      // Not INSERT OR REPLACE: a replace is a delete, and the delete would cascade to tags.
      `INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, created_at, by_digest)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (repo_id, digest) DO UPDATE SET media_type = excluded.media_type, size = excluded.size,
         artifact_type = excluded.artifact_type, subject = excluded.subject,
         by_digest = max(by_digest, excluded.by_digest), created_at = excluded.created_at`),
    // The same digest is the same content, so the same annotations: a re-push writes nothing.
    insertAnnotations: db.prepare(`INSERT INTO referrer_annotations (repo_id, digest, bytes, json) VALUES (?, ?, ?, ?)
       ON CONFLICT (repo_id, digest) DO NOTHING`),
    deleteManifest: db.prepare('DELETE FROM manifests WHERE repo_id = ? AND digest = ?'),
    getTag: db.prepare<[string, string], { digest: string }>(
      'SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.name = ? AND t.name = ?'),
    putTag: db.prepare(`INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?, ?, ?, ?)
      ON CONFLICT (repo_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at`),
    deleteTag: db.prepare('DELETE FROM tags WHERE repo_id = ? AND name = ?'),
    tagsOf: db.prepare<[number, string], { name: string }>('SELECT name FROM tags WHERE repo_id = ? AND digest = ?'),
    listTags: db.prepare<[number, string, number], { name: string }>(
      'SELECT name FROM tags WHERE repo_id = ? AND name > ? ORDER BY name LIMIT ?'),
    // INDEXED BY: without statistics SQLite prefers scanning the whole repository in
    // primary-key order (no lookups), which costs every manifest of it per page.
    referrers: db.prepare<[number, string, string, number], ReferrerRow>(
      `SELECT m.digest, m.media_type, m.size, m.artifact_type, a.bytes AS annotations_bytes FROM manifests m INDEXED BY manifests_referrers
        LEFT JOIN referrer_annotations a ON a.repo_id = m.repo_id AND a.digest = m.digest
        WHERE m.repo_id = ? AND m.subject = ? AND m.digest > ? ORDER BY m.digest LIMIT ?`),
    referrersOfType: db.prepare<[number, string, string, string, number], ReferrerRow>(
      `SELECT m.digest, m.media_type, m.size, m.artifact_type, a.bytes AS annotations_bytes FROM manifests m INDEXED BY manifests_referrers
        LEFT JOIN referrer_annotations a ON a.repo_id = m.repo_id AND a.digest = m.digest
        WHERE m.repo_id = ? AND m.subject = ? AND m.digest > ? AND m.artifact_type = ? ORDER BY m.digest LIMIT ?`),
    // As bytes: the answer is bytes, and megabytes need not be decoded and encoded again.
    annotations: db.prepare<[number, string], { json: Buffer }>(
      'SELECT CAST(json AS BLOB) AS json FROM referrer_annotations WHERE repo_id = ? AND digest = ?'),
    insertUpload: db.prepare('INSERT INTO uploads (id, repo, client, started_at, updated_at) VALUES (?, ?, ?, ?, ?)'),
    getUpload: db.prepare<[string], UploadRow>('SELECT repo, started_at, updated_at, staged, claimed_by FROM uploads WHERE id = ?'),
    uploadsOfRepo: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM uploads WHERE repo = ?'),
    uploadsOfClient: db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM uploads WHERE client = ?'),
    uploadCount: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM uploads'),
    touchUpload: db.prepare('UPDATE uploads SET updated_at = ?, staged = coalesce(?, staged) WHERE id = ?'),
    claimUpload: db.prepare(`UPDATE uploads SET claimed_by = ?, claimed_until = ?
      WHERE id = ? AND (claimed_until IS NULL OR claimed_until < ? OR claimed_by = ?)`),
    takeOverClaim: db.prepare('UPDATE uploads SET claimed_by = ?, claimed_until = ? WHERE id = ? AND claimed_by = ?'),
    extendClaim: db.prepare('UPDATE uploads SET claimed_until = ? WHERE id = ? AND claimed_by = ?'),
    releaseUpload: db.prepare('UPDATE uploads SET claimed_until = NULL WHERE id = ? AND claimed_by = ?'),
    deleteUpload: db.prepare('DELETE FROM uploads WHERE id = ?'),
    allUploads: db.prepare<[], UploadListing>('SELECT id, updated_at, staged, claimed_until FROM uploads'),
    getLayer: db.prepare<[string], LayerRow>(
      'SELECT l.digest, l.diff_id, l.size FROM layers l JOIN blobs b ON b.digest = l.digest WHERE l.key = ?'),
    putLayer: db.prepare('INSERT OR REPLACE INTO layers (key, digest, diff_id, size, created_at) VALUES (?, ?, ?, ?, ?)'),
    getBuild: db.prepare<[string, string], BuildRow>(
      `SELECT repo, hash, manifest, media_type, size, alt_manifest, alt_media_type, alt_size, store_path, evicted_at, layer_format
         FROM builds WHERE repo = ? AND hash = ?`),
    hasBuilds: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM builds WHERE repo = ? LIMIT 1'),
    putBuild: db.prepare(`INSERT OR REPLACE INTO builds
      (repo, hash, manifest, media_type, size, alt_manifest, alt_media_type, alt_size, store_path, created_at, last_pulled, layer_format)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
  };
}

export class SqliteIndex implements Index {
  readonly shared = false;
  readonly description: string;
  /** The database, for sqlite-gc.ts and for tests that build an old schema. Nothing outside src/blobs/index/ uses it. */
  readonly db: Database.Database;
  private readonly s: ReturnType<typeof statements>;
  private readonly gc: SqliteGc;

  constructor(path: string) {
    this.description = path;
    this.db = openDatabase(path);
    this.s = statements(this.db);
    this.gc = new SqliteGc(this.db);
  }

  async close(): Promise<void> { this.db.close(); }
  async ping(): Promise<void> { this.db.prepare('SELECT 1').get(); }

  private repoId(name: string): number | undefined { return this.s.repoId.get(name)?.id; }
  private ensureRepo(name: string): number {
    this.s.insertRepo.run(name, now());
    return this.s.repoId.get(name)!.id;
  }
  /** Deletes the row of a blob nothing uses; the caller removes the file. Within the caller's transaction. */
  private dropBlobIfUnused(digest: string): boolean {
    if (this.s.blobInUse.get(digest, digest, digest)!.n > 0) return false;
    return this.s.deleteBlob.run(digest).changes > 0;
  }

  async blobSize(digest: string) { return this.s.getBlob.get(digest)?.size; }
  async addBlob(repo: string, digest: string, size: number): Promise<void> {
    this.db.transaction(() => {
      this.s.insertBlob.run(digest, size, now());
      this.s.link.run(this.ensureRepo(repo), digest, now());
    })();
  }
  async linkBlob(repo: string, digest: string): Promise<boolean> {
    return this.db.transaction(() => {
      if (!this.s.getBlob.get(digest)) return false;
      this.s.link.run(this.ensureRepo(repo), digest, now());
      return true;
    })();
  }
  async linkedBlobSize(repo: string, digest: string) { return this.s.linkedSize.get(repo, digest)?.size; }
  async unlinkBlob(repo: string, digest: string): Promise<{ removed: boolean; orphaned: boolean }> {
    return this.db.transaction(() => {
      const id = this.repoId(repo);
      if (id === undefined) return { removed: false, orphaned: false };
      const removed = this.s.unlink.run(id, digest).changes > 0;
      return { removed, orphaned: removed && this.dropBlobIfUnused(digest) };
    })();
  }
  async forgetBlob(digest: string): Promise<void> {
    this.db.transaction(() => {
      for (const table of ['tags', 'manifests', 'repo_blobs', 'layers']) this.db.prepare(`DELETE FROM ${table} WHERE digest = ?`).run(digest);
      this.s.deleteBlob.run(digest);
    })();
  }
  async blobsAfter(after: string, limit: number) { return this.s.blobsAfter.all(after, limit); }
  async totals() {
    const r = this.s.totals.get()!;
    return { blobs: r.n, bytes: r.bytes };
  }

  async repository(name: string): Promise<RepoKey | undefined> {
    const id = this.repoId(name);
    return id === undefined ? undefined : { id, name };
  }
  async listRepos(last: string, n: number) { return this.s.listRepos.all(last, n).map((r) => r.name); }
  async repositories() { return this.gc.repositories(); }

  async lookup(repo: string, ref: { tag: string } | { digest: string }): Promise<ManifestRow | undefined> {
    return 'tag' in ref ? this.s.getTagged.get(repo, ref.tag) : this.s.getManifest.get(repo, ref.digest);
  }
  async resolveTag(repo: string, tag: string) { return this.s.getTag.get(repo, tag)?.digest; }
  async putManifest(repo: string, m: NewManifest, refs: References, tag?: string): Promise<string[]> {
    return this.db.transaction(() => {
      const missing = [
        ...refs.blobs.filter((b) => this.s.linkedSize.get(repo, b) === undefined),
        ...refs.manifests.filter((d) => !this.s.getManifest.get(repo, d)),
      ];
      if (missing.length) return missing;
      const id = this.ensureRepo(repo);
      this.s.insertBlob.run(m.digest, m.size, now());
      this.s.insertManifest.run(id, m.digest, m.mediaType, m.size, m.artifactType ?? null, m.subject ?? null, now(), m.byDigest ? 1 : 0);
      if (m.subject !== undefined && m.annotations !== undefined) {
        const json = JSON.stringify(m.annotations);
        this.s.insertAnnotations.run(id, m.digest, Buffer.byteLength(json), json);
      }
      if (tag !== undefined) this.s.putTag.run(id, tag, m.digest, now());
      return [];
    })();
  }
  async deleteManifest(repo: string, digest: string): Promise<{ deleted: boolean; tags: string[]; orphaned: boolean }> {
    return this.db.transaction(() => {
      const id = this.repoId(repo);
      if (id === undefined) return { deleted: false, tags: [], orphaned: false };
      const tags = this.s.tagsOf.all(id, digest).map((t) => t.name);
      const deleted = this.s.deleteManifest.run(id, digest).changes > 0;
      return { deleted, tags, orphaned: deleted && this.dropBlobIfUnused(digest) };
    })();
  }
  async putTag(repo: string, tag: string, digest: string): Promise<void> {
    this.s.putTag.run(this.ensureRepo(repo), tag, digest, now());
  }
  async deleteTag(repo: string, tag: string): Promise<boolean> {
    const id = this.repoId(repo);
    return id !== undefined && this.s.deleteTag.run(id, tag).changes > 0;
  }
  async listTags(repo: string, last: string, n: number): Promise<string[] | undefined> {
    const id = this.repoId(repo);
    if (id === undefined) return undefined;
    return this.s.listTags.all(id, last, n).map((t) => t.name);
  }
  async tagTimes(repo: string, tags: string[]): Promise<{ tag: string; updated: number; pulled: number | null }[]> {
    return this.db.prepare<[string, string], { tag: string; updated: number; pulled: number | null }>(`SELECT t.name AS tag,
        t.updated_at AS updated, (SELECT max(b.last_pulled) FROM builds b WHERE b.repo = r.name AND (b.manifest = t.digest OR b.alt_manifest = t.digest)) AS pulled
      FROM repositories r JOIN tags t ON t.repo_id = r.id WHERE r.name = ? AND t.name IN (SELECT value FROM json_each(?))`)
      .all(repo, JSON.stringify(tags));
  }
  async repoChanges(repos: string[]): Promise<{ repo: string; changed: number }[]> {
    return this.db.prepare<[string], { repo: string; changed: number }>(`SELECT name AS repo, max(
        coalesce((SELECT max(updated_at) FROM tags WHERE repo_id = r.id), 0), coalesce((SELECT max(created_at) FROM manifests WHERE repo_id = r.id), 0)) AS changed
      FROM repositories r WHERE name IN (SELECT value FROM json_each(?))`).all(JSON.stringify(repos)).filter((x) => x.changed > 0);
  }
  async referrers(repo: string, subject: string, page: ReferrersPage): Promise<ReferrerRow[]> {
    const id = this.repoId(repo);
    if (id === undefined) return [];
    return page.artifactType === undefined
      ? this.s.referrers.all(id, subject, page.after, page.limit)
      : this.s.referrersOfType.all(id, subject, page.after, page.artifactType, page.limit);
  }
  async referrerAnnotations(repo: string, digest: string): Promise<Buffer | undefined> {
    const id = this.repoId(repo);
    return id === undefined ? undefined : this.s.annotations.get(id, digest)?.json;
  }

  async createUpload(id: string, repo: string, client: string, limits?: UploadCounts): Promise<UploadCounts | undefined> {
    return this.db.transaction(() => {
      if (limits) {
        const open = this.counts(repo, client);
        if (open.repo >= limits.repo || open.client >= limits.client || open.total >= limits.total) return open;
      }
      const t = now();
      this.s.insertUpload.run(id, repo, client, t, t);
      return undefined;
    })();
  }
  private counts(repo: string, client: string): UploadCounts {
    return { repo: this.s.uploadsOfRepo.get(repo)!.n, client: this.s.uploadsOfClient.get(client)!.n, total: this.s.uploadCount.get()!.n };
  }
  async openUploads(repo: string, client: string) { return this.counts(repo, client); }
  async uploadCount() { return this.s.uploadCount.get()!.n; }
  async getUpload(id: string) { return this.s.getUpload.get(id); }
  async touchUpload(id: string, staged?: string) { this.s.touchUpload.run(now(), staged ?? null, id); }
  async claimUpload(id: string, owner: string, until: number) { return this.s.claimUpload.run(owner, until, id, now(), owner).changes > 0; }
  async takeOverClaim(id: string, from: string, owner: string, until: number) { return this.s.takeOverClaim.run(owner, until, id, from).changes > 0; }
  async extendClaim(id: string, owner: string, until: number) { this.s.extendClaim.run(until, id, owner); }
  async releaseUpload(id: string, owner: string) { this.s.releaseUpload.run(id, owner); }
  async deleteUpload(id: string) { this.s.deleteUpload.run(id); }
  async allUploads() { return this.s.allUploads.all(); }

  async getLayer(key: string) { return this.s.getLayer.get(key); }
  async putLayer(key: string, l: LayerRow) { this.s.putLayer.run(key, l.digest, l.diff_id, l.size, now()); }
  async getBuild(repo: string, hash: string) { return this.s.getBuild.get(repo, hash); }
  async hasBuilds(repo: string) { return this.s.hasBuilds.get(repo) !== undefined; }
  async putBuild(b: Omit<BuildRow, 'evicted_at'>): Promise<void> {
    const t = now();
    this.s.putBuild.run(b.repo, b.hash, b.manifest, b.media_type, b.size, b.alt_manifest, b.alt_media_type, b.alt_size,
      b.store_path, t, t, b.layer_format);
  }

  async notePulls(pulls: { repo: string; digest: string; at: number }[]) { this.gc.notePulls(pulls); }
  async builtUsage() { return this.gc.builtUsage(); }
  async evictionOrder() { return this.gc.evictionOrder(); }
  async evictBuild(repo: string, manifest: string) { this.gc.evictBuild(repo, this.repoId(repo), manifest); }

  async repoSnapshot(repo: RepoKey): Promise<RepoSnapshot> { return this.gc.snapshot(repo); }
  async repoWrites(repo: RepoKey, since: WritesSince): Promise<RepoWrites> { return this.gc.writes(repo, since); }
  async sweepCandidates(repo: RepoKey, cutoff: number) { return this.gc.candidates(repo, cutoff); }
  async sweepStep(repo: RepoKey, step: SweepStep): Promise<SweepResult> { return this.gc.sweepStep(repo, step); }
  async isTagged(repo: RepoKey, digest: string) { return this.gc.isTagged(repo, digest); }
  async unusedBlobs(cutoff: number) { return this.gc.unusedBlobs(cutoff); }
  async dropUnusedBlobs(digests: string[], cutoff: number) { return this.gc.dropUnused(digests, cutoff); }
  async blobUses(cutoff: number, after: string, limit: number): Promise<BlobUse[]> { return this.gc.blobUses(cutoff, after, limit); }
}
