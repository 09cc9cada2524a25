// The SQLite schema of the index, its migrations and its opening: the one place that
// says what is recorded (postgres-schema.ts mirrors it for PostgreSQL).
//
// Blob *files* are the truth for content; this index is the truth for what is visible.
// A blob row is written only after its file is durably in place, and removed before its
// file is unlinked, so the index never names a file that is not there (startup
// reconciliation in storage.ts repairs the one window a crash can leave).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import Database from 'better-sqlite3';

export const SCHEMA_VERSION = 6;

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS blobs (
  digest      TEXT PRIMARY KEY,
  size        INTEGER NOT NULL,
  created_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS repositories (
  id          INTEGER PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,
  created_at  INTEGER NOT NULL
);

-- A blob is visible in a repository only through a link: this is what makes
-- cross-repository reads impossible without an explicit mount.
CREATE TABLE IF NOT EXISTS repo_blobs (
  repo_id     INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
  digest      TEXT NOT NULL REFERENCES blobs(digest),
  -- Renewed whenever the link is made again (a re-push, a mount, a build reusing a
  -- layer): garbage collection spares links younger than its grace period, so a client
  -- that has uploaded layers but not yet pushed their manifest keeps them.
  linked_at   INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repo_blobs_digest ON repo_blobs(digest);

-- Manifest bodies are blobs (stored byte for byte in the blob store); this row says the
-- manifest exists in a repository and caches what the API needs without parsing it.
-- Rows stay small (no annotations: see referrer_annotations): this b-tree is searched by
-- whole records, so one row of megabytes would be read whole by every lookup passing it.
-- (An index made before schema 5 has an annotations column here too, NULL: see MIGRATIONS.)
CREATE TABLE IF NOT EXISTS manifests (
  repo_id       INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
  digest        TEXT NOT NULL REFERENCES blobs(digest),
  media_type    TEXT NOT NULL,
  size          INTEGER NOT NULL,
  artifact_type TEXT,
  subject       TEXT,
  created_at    INTEGER NOT NULL,
  -- Pushed by digest (PUT …/manifests/sha256:…) rather than by tag: a root of garbage
  -- collection even untagged, whereas a manifest whose tag moved away is collectable.
  by_digest     INTEGER NOT NULL DEFAULT 1,
  PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;
-- Referrers are listed a page at a time in digest order: the index serves each page directly.
CREATE INDEX IF NOT EXISTS manifests_referrers ON manifests(repo_id, subject, digest) WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS manifests_digest ON manifests(digest);

-- The annotations of a manifest with a subject (a referrer), which its descriptor in a
-- referrers listing carries (distribution-spec): the JSON the index wrote, and its size
-- in bytes, by which a page is cut before any of it is read. Only referrers' (nothing
-- else reads annotations), and apart from manifests: they can be megabytes, and in a
-- rowid table they lie at the leaves, read only for the descriptors of the page being
-- answered. They go with their manifest row (cascade).
CREATE TABLE IF NOT EXISTS referrer_annotations (
  repo_id     INTEGER NOT NULL,
  digest      TEXT NOT NULL,
  bytes       INTEGER NOT NULL,
  json        TEXT NOT NULL,
  FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);
CREATE UNIQUE INDEX IF NOT EXISTS referrer_annotations_key ON referrer_annotations(repo_id, digest);

CREATE TABLE IF NOT EXISTS tags (
  repo_id     INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
  name        TEXT NOT NULL,
  digest      TEXT NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (repo_id, name),
  FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;

-- Unfinished uploads. By repository *name*, not row: starting an upload stores no
-- content, so it must not create a repository (a client inventing names would otherwise
-- grow the repositories table without bound). client is the address the upload counts
-- against (per-client limits). staged: where the upload's bytes stand in the blob store
-- (JSON: the offset, and on S3 the multipart upload, its parts and the tail object), so
-- that any process sharing the index can continue it; NULL: nothing recorded yet.
-- claimed_by/claimed_until: the process writing it now (a chunk or a finish) and until
-- when its claim runs unless renewed (ms since the epoch; NULL: nobody's).
CREATE TABLE IF NOT EXISTS uploads (
  id            TEXT PRIMARY KEY,
  repo          TEXT NOT NULL,
  client        TEXT NOT NULL DEFAULT '',
  started_at    INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL,
  staged        TEXT,
  claimed_by    TEXT,
  claimed_until INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_repo ON uploads(repo);
CREATE INDEX IF NOT EXISTS uploads_client ON uploads(client);

-- Build-on-pull: the layer built for one set of store paths, reused by every image
-- and rebuild that contains the same set. key = hash of the sorted store paths and
-- the layer format version.
CREATE TABLE IF NOT EXISTS layers (
  key         TEXT PRIMARY KEY,
  digest      TEXT NOT NULL REFERENCES blobs(digest),
  diff_id     TEXT NOT NULL,
  size        INTEGER NOT NULL,
  created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Build-on-pull: each image built from an expression, by its hash tag (the hash part of
-- the image's store path), so a request by hash is served without running Nix, and the
-- Docker schema2 encoding can be found for clients that do not accept OCI.
CREATE TABLE IF NOT EXISTS builds (
  repo        TEXT NOT NULL,
  hash        TEXT NOT NULL,
  manifest    TEXT NOT NULL,
  media_type  TEXT NOT NULL,
  size        INTEGER NOT NULL,
  alt_manifest TEXT,
  alt_media_type TEXT,
  alt_size    INTEGER,
  store_path  TEXT NOT NULL,
  created_at  INTEGER NOT NULL,
  -- When a client last pulled this image (batched, see blobs/quota.ts): the cache quota
  -- evicts the images pulled least recently. NULL: never pulled since it was built.
  last_pulled INTEGER,
  -- Set when the quota evicted the image: its manifests and tags are gone, the row stays
  -- so that a pull of its hash tag can say so (or rebuild it).
  evicted_at  INTEGER,
  -- How its layers were compressed (gzip-6, zstd-3, none): a pull under another
  -- --layer-compression rebuilds it. NULL: built before the choice existed (gzip-6).
  layer_format TEXT,
  PRIMARY KEY (repo, hash)
) WITHOUT ROWID;
`;

/**
 * Steps from an older schema, by the version they start from: `before` runs ahead of
 * SCHEMA (to move aside what SCHEMA would otherwise mistake for current), `after` once
 * SCHEMA has created the new tables. All in one transaction.
 */
export const MIGRATIONS: Record<number, { before: string; after: string; columns?: [table: string, column: string, type: string][] }> = {
  // 1 → 2: uploads name their repository instead of holding a repositories row;
  // referrers are indexed in page order.
  1: {
    before: 'ALTER TABLE uploads RENAME TO uploads_v1; DROP INDEX IF EXISTS manifests_subject;',
    after: `INSERT INTO uploads (id, repo, client, started_at, updated_at)
              SELECT u.id, r.name, '', u.started_at, u.updated_at FROM uploads_v1 u JOIN repositories r ON r.id = u.repo_id;
            DROP TABLE uploads_v1;
            -- Rows that only uploads (or requests for invented names) ever created.
            DELETE FROM repositories WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = repositories.id)
              AND NOT EXISTS (SELECT 1 FROM repo_blobs b WHERE b.repo_id = repositories.id);`,
  },
  // 2 → 3: what garbage collection and the cache quota need. Existing links count as
  // old (0) and existing manifests as pushed by digest (kept): nothing recorded before
  // is collected on a guess.
  2: {
    before: `ALTER TABLE repo_blobs ADD COLUMN linked_at INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE manifests ADD COLUMN by_digest INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE builds ADD COLUMN last_pulled INTEGER;
             ALTER TABLE builds ADD COLUMN evicted_at INTEGER;`,
    after: '',
  },
  // 3 → 4: layer compression became a choice; what was built before was gzip -6 (NULL).
  3: { before: 'ALTER TABLE builds ADD COLUMN layer_format TEXT;', after: '' },
  // 4 → 5: annotations leave manifests for referrer_annotations. Not in this transaction:
  // they may be gigabytes, which it would hold in the write-ahead log whole. This step
  // only indexes the rows that still hold some; moveAnnotations moves them at open,
  // a bounded batch per transaction. The column stays (NULL once moved): dropping it
  // would rewrite the table in one go, and would break a nixreg of schema 4 still running
  // on the index (`nixreg gc` of a newer version opens it beside the server), whose
  // writes the next open moves instead.
  4: { before: '', after: 'CREATE INDEX manifests_unmoved ON manifests(repo_id, digest) WHERE annotations IS NOT NULL;' },
  // 5 → 6: an upload records where its bytes stand (the blob store may be S3) and who is
  // writing it. Uploads begun before keep NULL: on disk their file still says it. Columns
  // added once SCHEMA ran, where missing: an index older than 2 has its uploads table
  // made anew by SCHEMA.
  5: { before: '', after: '', columns: [['uploads', 'staged', 'TEXT'], ['uploads', 'claimed_by', 'TEXT'], ['uploads', 'claimed_until', 'INTEGER']] },
};


/** One transaction of moveAnnotations: at most this many rows and bytes (one row may be more). */
const MOVE_ROWS = 256;
const MOVE_BYTES = 16 * 1024 * 1024;

/** Opens (creating or migrating) the index database at `path`. */
export function openDatabase(path: string): Database.Database {
  const db = new Database(path);
  try {
    db.pragma('journal_mode = WAL');
    // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
    // the last transactions, and reconciliation then drops rows-without-files.
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) throw new Error(`index schema ${version} is newer than this nixreg (${SCHEMA_VERSION})`);
    db.transaction(() => {
      // A new database reports version 0 and has no tables yet: nothing to migrate.
      const fresh = version === 0;
      for (let v = version; !fresh && v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v]!.before);
      db.exec(SCHEMA);
      for (let v = version; !fresh && v < SCHEMA_VERSION; v++) {
        for (const [table, column, type] of MIGRATIONS[v]!.columns ?? []) {
          const has = db.prepare(`SELECT 1 FROM pragma_table_info('${table}') WHERE name = ?`).get(column);
          if (!has) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${type}`);
        }
        db.exec(MIGRATIONS[v]!.after);
      }
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
    })();
    moveAnnotations(db);
    return db;
  } catch (e) {
    db.close();
    throw e;
  }
}

/**
 * Schema 4 → 5: annotations in manifests rows move to referrer_annotations (only
 * referrers'; nothing reads the others) and leave NULL behind. A batch of at most
 * MOVE_ROWS rows and MOVE_BYTES bytes per transaction, so that the write-ahead log and
 * memory hold no more than a batch however much there is; a crash part way keeps what
 * was moved. Runs at every open of an index made before schema 5, where the rows left
 * to move are indexed (manifests_unmoved): nothing, at once, once they are moved.
 */
function moveAnnotations(db: Database.Database): void {
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
