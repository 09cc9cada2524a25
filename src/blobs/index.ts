// The SQLite index (better-sqlite3, WAL). Synchronous on purpose: each call is a few
// microseconds, and a transaction can never interleave with another request's.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import Database from 'better-sqlite3';
import { MIGRATIONS, SCHEMA, SCHEMA_VERSION } from './schema.js';

export interface ManifestRow {
  digest: string;
  media_type: string;
  size: number;
  artifact_type: string | null;
  subject: string | null;
}

/** A referrer as a listing needs it before its annotations are read (referrerAnnotations). */
export interface ReferrerRow {
  digest: string;
  media_type: string;
  size: number;
  artifact_type: string | null;
  /** Bytes of its annotations' JSON; null: it has none. */
  annotations_bytes: number | null;
}

export interface NewManifest {
  digest: string;
  mediaType: string;
  size: number;
  artifactType?: string | undefined;
  subject?: string | undefined;
  annotations?: Record<string, string> | undefined;
  /** Pushed by a client by digest, not by tag (a garbage-collection root; see schema.ts). */
  byDigest?: boolean | undefined;
}

/** Which referrers to list: those after digest `after`, at most `limit`, of one type if given. */
export interface ReferrersPage {
  after: string;
  limit: number;
  artifactType?: string | undefined;
}

export interface LayerRow {
  digest: string;
  diff_id: string;
  size: number;
}

const now = () => Date.now();

/** One transaction of Index.moveAnnotations: at most this many rows and bytes (one row may be more). */
const MOVE_ROWS = 256;
const MOVE_BYTES = 16 * 1024 * 1024;

export class Index {
  readonly db: Database.Database;
  private s;

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
    // the last transactions, and reconciliation then drops rows-without-files.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) throw new Error(`index schema ${version} is newer than this nixreg (${SCHEMA_VERSION})`);
    this.db.transaction(() => {
      // A new database reports version 0 and has no tables yet: nothing to migrate.
      const fresh = version === 0;
      for (let v = version; !fresh && v < SCHEMA_VERSION; v++) this.db.exec(MIGRATIONS[v]!.before);
      this.db.exec(SCHEMA);
      for (let v = version; !fresh && v < SCHEMA_VERSION; v++) {
        for (const [table, column, type] of MIGRATIONS[v]!.columns ?? []) {
          const has = this.db.prepare(`SELECT 1 FROM pragma_table_info('${table}') WHERE name = ?`).get(column);
          if (!has) this.db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${type}`);
        }
        this.db.exec(MIGRATIONS[v]!.after);
      }
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    })();
    this.moveAnnotations();
    const db = this.db;
    this.s = {
      getBlob: db.prepare<[string], { size: number }>('SELECT size FROM blobs WHERE digest = ?'),
      insertBlob: db.prepare('INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?, ?, ?)'),
      deleteBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
      blobInUse: db.prepare<[string, string, string], { n: number }>(
        `SELECT (SELECT count(*) FROM repo_blobs WHERE digest = ?) + (SELECT count(*) FROM manifests WHERE digest = ?)
              + (SELECT count(*) FROM layers WHERE digest = ?) AS n`),
      allBlobs: db.prepare<[], { digest: string; size: number }>('SELECT digest, size FROM blobs'),
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
      getUpload: db.prepare<[string], { repo: string; started_at: number; updated_at: number; staged: string | null; claimed_by: string | null }>(
        'SELECT repo, started_at, updated_at, staged, claimed_by FROM uploads WHERE id = ?'),
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
      allUploads: db.prepare<[], { id: string; updated_at: number; staged: string | null; claimed_until: number | null }>(
        'SELECT id, updated_at, staged, claimed_until FROM uploads'),
      getLayer: db.prepare<[string], LayerRow>(
        'SELECT l.digest, l.diff_id, l.size FROM layers l JOIN blobs b ON b.digest = l.digest WHERE l.key = ?'),
      putLayer: db.prepare('INSERT OR REPLACE INTO layers (key, digest, diff_id, size, created_at) VALUES (?, ?, ?, ?, ?)'),
    };
  }

  close() { this.db.close(); }

  /**
   * Schema 4 → 5 (schema.ts): annotations in manifests rows move to referrer_annotations
   * (only referrers'; nothing reads the others) and leave NULL behind. A batch of at most
   * MOVE_ROWS rows and MOVE_BYTES bytes per transaction, so that the write-ahead log and
   * memory hold no more than a batch however much there is; a crash part way keeps what
   * was moved. Runs at every open of an index made before schema 5, where the rows left
   * to move are indexed (manifests_unmoved): nothing, at once, once they are moved.
   */
  private moveAnnotations(): void {
    const db = this.db;
    if (!db.prepare(`SELECT 1 FROM pragma_index_list('manifests') WHERE name = 'manifests_unmoved'`).get()) return;
    // octet_length reads the size from the record header, not the text (SQLite >= 3.43).
    const next = db.prepare<[], { repo_id: number; digest: string; bytes: number }>(
      `SELECT repo_id, digest, octet_length(annotations) AS bytes FROM manifests INDEXED BY manifests_unmoved
        WHERE annotations IS NOT NULL LIMIT ${MOVE_ROWS}`);
    const copy = db.prepare(`INSERT INTO referrer_annotations (repo_id, digest, bytes, json)
      SELECT repo_id, digest, octet_length(annotations), annotations FROM manifests
       WHERE repo_id = ? AND digest = ? AND subject IS NOT NULL ON CONFLICT (repo_id, digest) DO NOTHING`);
    const clear = db.prepare('UPDATE manifests SET annotations = NULL WHERE repo_id = ? AND digest = ?');
    for (let rows = next.all(); rows.length > 0; rows = next.all()) {
      let bytes = 0;
      let n = 0;
      while (n < rows.length && (n === 0 || bytes + rows[n]!.bytes <= MOVE_BYTES)) bytes += rows[n++]!.bytes;
      db.transaction(() => {
        for (const r of rows.slice(0, n)) { copy.run(r.repo_id, r.digest); clear.run(r.repo_id, r.digest); }
      })();
    }
  }

  blobSize(digest: string): number | undefined { return this.s.getBlob.get(digest)?.size; }
  allBlobs() { return this.s.allBlobs.all(); }
  /** Blobs stored and their bytes: one scan of the table, so for scrapes, not for requests. */
  totals(): { blobs: number; bytes: number } {
    const r = this.db.prepare('SELECT count(*) AS n, total(size) AS bytes FROM blobs').get() as { n: number; bytes: number };
    return { blobs: r.n, bytes: r.bytes };
  }
  /** Throws unless the database is open and answers (readiness). */
  ping(): void { this.db.prepare('SELECT 1').get(); }

  repoId(name: string): number | undefined { return this.s.repoId.get(name)?.id; }
  ensureRepo(name: string): number {
    this.s.insertRepo.run(name, now());
    return this.s.repoId.get(name)!.id;
  }
  listRepos(last: string, n: number): string[] { return this.s.listRepos.all(last, n).map((r) => r.name); }

  /** Records a durable blob file and links it into a repository, atomically. */
  addBlob(repo: string, digest: string, size: number): void {
    this.db.transaction(() => {
      this.s.insertBlob.run(digest, size, now());
      this.s.link.run(this.ensureRepo(repo), digest, now());
    })();
  }
  /** Links an already-stored blob; false if the blob is not stored. */
  linkBlob(repo: string, digest: string): boolean {
    return this.db.transaction(() => {
      if (!this.s.getBlob.get(digest)) return false;
      this.s.link.run(this.ensureRepo(repo), digest, now());
      return true;
    })();
  }
  linkedBlobSize(repo: string, digest: string): number | undefined { return this.s.linkedSize.get(repo, digest)?.size; }

  /**
   * Removes a link. Returns true when the blob is then used by nothing, in which case its
   * row is gone too and the caller must remove the file (under the digest's lock).
   */
  unlinkBlob(repo: string, digest: string): { removed: boolean; orphaned: boolean } {
    return this.db.transaction(() => {
      const id = this.repoId(repo);
      if (id === undefined) return { removed: false, orphaned: false };
      const removed = this.s.unlink.run(id, digest).changes > 0;
      return { removed, orphaned: removed && this.dropBlobIfUnused(digest) };
    })();
  }
  /** Deletes the row of a blob nothing uses; the caller removes the file. */
  dropBlobIfUnused(digest: string): boolean {
    if (this.s.blobInUse.get(digest, digest, digest)!.n > 0) return false;
    return this.s.deleteBlob.run(digest).changes > 0;
  }
  forgetBlob(digest: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM tags WHERE digest = ?').run(digest);
      this.db.prepare('DELETE FROM manifests WHERE digest = ?').run(digest);
      this.db.prepare('DELETE FROM repo_blobs WHERE digest = ?').run(digest);
      this.db.prepare('DELETE FROM layers WHERE digest = ?').run(digest);
      this.s.deleteBlob.run(digest);
    })();
  }

  getManifest(repo: string, digest: string): ManifestRow | undefined { return this.s.getManifest.get(repo, digest); }
  /** Records a manifest whose body file is already durably stored, and optionally tags it. */
  putManifest(repo: string, m: NewManifest, tag?: string): void {
    this.db.transaction(() => {
      const id = this.ensureRepo(repo);
      this.s.insertBlob.run(m.digest, m.size, now());
      this.s.insertManifest.run(id, m.digest, m.mediaType, m.size, m.artifactType ?? null, m.subject ?? null, now(), m.byDigest ? 1 : 0);
      if (m.subject !== undefined && m.annotations !== undefined) {
        const json = JSON.stringify(m.annotations);
        this.s.insertAnnotations.run(id, m.digest, Buffer.byteLength(json), json);
      }
      if (tag !== undefined) this.s.putTag.run(id, tag, m.digest, now());
    })();
  }
  /** Deletes a manifest and (by cascade) its tags; returns the tags it had. */
  deleteManifest(repo: string, digest: string): { deleted: boolean; tags: string[]; orphaned: boolean } {
    return this.db.transaction(() => {
      const id = this.repoId(repo);
      if (id === undefined) return { deleted: false, tags: [], orphaned: false };
      const tags = this.s.tagsOf.all(id, digest).map((t) => t.name);
      const deleted = this.s.deleteManifest.run(id, digest).changes > 0;
      return { deleted, tags, orphaned: deleted && this.dropBlobIfUnused(digest) };
    })();
  }
  resolveTag(repo: string, tag: string): string | undefined { return this.s.getTag.get(repo, tag)?.digest; }
  putTag(repo: string, tag: string, digest: string): void {
    this.s.putTag.run(this.ensureRepo(repo), tag, digest, now());
  }
  deleteTag(repo: string, tag: string): boolean {
    const id = this.repoId(repo);
    return id !== undefined && this.s.deleteTag.run(id, tag).changes > 0;
  }
  listTags(repo: string, last: string, n: number): string[] | undefined {
    const id = this.repoId(repo);
    if (id === undefined) return undefined;
    return this.s.listTags.all(id, last, n).map((t) => t.name);
  }
  /** A page of referrers without their annotations, which may be megabytes each. */
  referrers(repo: string, subject: string, page: ReferrersPage): ReferrerRow[] {
    const id = this.repoId(repo);
    if (id === undefined) return [];
    return page.artifactType === undefined
      ? this.s.referrers.all(id, subject, page.after, page.limit)
      : this.s.referrersOfType.all(id, subject, page.after, page.artifactType, page.limit);
  }
  /** The annotations of referrer `digest` in `repo`, as JSON (UTF-8); undefined if it has none. */
  referrerAnnotations(repo: string, digest: string): Buffer | undefined {
    const id = this.repoId(repo);
    return id === undefined ? undefined : this.s.annotations.get(id, digest)?.json;
  }

  createUpload(id: string, repo: string, client: string): void {
    const t = now();
    this.s.insertUpload.run(id, repo, client, t, t);
  }
  /** Unfinished uploads of a repository, of a client, and in all. */
  openUploads(repo: string, client: string): { repo: number; client: number; total: number } {
    return {
      repo: this.s.uploadsOfRepo.get(repo)!.n,
      client: this.s.uploadsOfClient.get(client)!.n,
      total: this.uploadCount(),
    };
  }
  uploadCount(): number { return this.s.uploadCount.get()!.n; }
  getUpload(id: string) { return this.s.getUpload.get(id); }
  /** The upload was used now; `staged` (JSON, store/blob-store.ts Staged): where its bytes stand. */
  touchUpload(id: string, staged?: string) { this.s.touchUpload.run(now(), staged ?? null, id); }
  /**
   * Claims upload `id` for `owner` until `until` (ms since the epoch): false while another
   * owner's claim runs. A chunk or finish holds it, so that two processes sharing the
   * index never write one upload at once; a claim of a process that died runs out.
   */
  claimUpload(id: string, owner: string, until: number): boolean { return this.s.claimUpload.run(owner, until, id, now(), owner).changes > 0; }
  /** Takes the claim of `from` (a process known to be gone), unless it changed meanwhile. */
  takeOverClaim(id: string, from: string, owner: string, until: number): boolean { return this.s.takeOverClaim.run(owner, until, id, from).changes > 0; }
  extendClaim(id: string, owner: string, until: number): void { this.s.extendClaim.run(until, id, owner); }
  releaseUpload(id: string, owner: string): void { this.s.releaseUpload.run(id, owner); }
  deleteUpload(id: string) { this.s.deleteUpload.run(id); }
  allUploads() { return this.s.allUploads.all(); }

  getLayer(key: string): LayerRow | undefined { return this.s.getLayer.get(key); }
  putLayer(key: string, l: LayerRow): void { this.s.putLayer.run(key, l.digest, l.diff_id, l.size, now()); }

  getBuild(repo: string, hash: string): BuildRow | undefined {
    return this.db.prepare<[string, string], BuildRow>(
      `SELECT repo, hash, manifest, media_type, size, alt_manifest, alt_media_type, alt_size, store_path, evicted_at, layer_format
         FROM builds WHERE repo = ? AND hash = ?`).get(repo, hash);
  }
  /** Whether `repo` holds images built here (not only pushed ones). */
  hasBuilds(repo: string): boolean {
    return this.db.prepare<[string], { one: number }>('SELECT 1 AS one FROM builds WHERE repo = ? LIMIT 1').get(repo) !== undefined;
  }
  /** Records a finished build; it counts as pulled now (the pull that asked for it). */
  putBuild(b: Omit<BuildRow, 'evicted_at'>): void {
    const t = now();
    this.db.prepare(`INSERT OR REPLACE INTO builds
      (repo, hash, manifest, media_type, size, alt_manifest, alt_media_type, alt_size, store_path, created_at, last_pulled, layer_format)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(b.repo, b.hash, b.manifest, b.media_type, b.size,
      b.alt_manifest, b.alt_media_type, b.alt_size, b.store_path, t, t, b.layer_format);
  }
}

/** One image built from an expression (see the builds table). */
export interface BuildRow {
  repo: string;
  hash: string;
  manifest: string;
  media_type: string;
  size: number;
  alt_manifest: string | null;
  alt_media_type: string | null;
  alt_size: number | null;
  store_path: string;
  /** When the cache quota evicted it (its manifests are gone); null while it is stored. */
  evicted_at: number | null;
  /** How its layers were compressed (gzip-6, zstd-3, none); null: before the choice, gzip-6. */
  layer_format: string | null;
}
