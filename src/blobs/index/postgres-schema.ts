// The PostgreSQL schema of the index, and its versioned migrations: the same tables and
// the same meaning as the SQLite schema (../schema.ts, whose comments say what each
// column records); only what PostgreSQL does differently is said here.
//
// Versions are PostgreSQL's own, counted from 1 (which holds what SQLite's 6 holds). A
// `schema_version` table records each version applied. Migrations run at start, all in
// one transaction under an advisory transaction lock, so that replicas starting together
// migrate once: the first takes the lock and migrates, the others wait for its commit,
// then find nothing left to do. A database newer than this code is refused, not used:
// an older replica must not write rows whose meaning it does not know.
//
// Times are bigint milliseconds since the epoch, as in SQLite, not timestamptz: the
// interface, garbage collection's cutoffs and the upload claims all reason in ms, and a
// number compares and crosses the wire without conversion. They are stamped by the
// database's clock (NOW_MS), never a replica's, so replicas whose clocks differ agree on
// what is older than what. Sizes are bigint (blobs beyond 2 GiB); pg hands bigints back
// as strings unless told otherwise, and postgres-pool.ts parses them as numbers (exact
// below 2^53 bytes or ms). Digests and names are text COLLATE "C": pages are cut by
// `> last` and must follow byte order, as SQLite's and the blob store's listings do,
// whatever the database's locale.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type pg from 'pg';

/** Milliseconds since the epoch by the database's clock, at the moment of the statement. */
export const NOW_MS = '(extract(epoch from clock_timestamp()) * 1000)::bigint';

/** Key of the advisory lock that migrations run under (any constant no other user of the database takes). */
export const MIGRATION_LOCK = 0x6e69787265670001n; // "nixreg" + 1

const V1 = `
CREATE TABLE blobs (
  digest      text COLLATE "C" PRIMARY KEY,
  size        bigint NOT NULL,
  created_at  bigint NOT NULL
);

CREATE TABLE repositories (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name        text COLLATE "C" NOT NULL UNIQUE,
  created_at  bigint NOT NULL
);

CREATE TABLE repo_blobs (
  repo_id     bigint NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
  digest      text COLLATE "C" NOT NULL REFERENCES blobs(digest),
  linked_at   bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

CREATE TABLE manifests (
  repo_id       bigint NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
  digest        text COLLATE "C" NOT NULL REFERENCES blobs(digest),
  media_type    text NOT NULL,
  size          bigint NOT NULL,
  artifact_type text,
  subject       text COLLATE "C",
  created_at    bigint NOT NULL,
  by_digest     boolean NOT NULL DEFAULT true,
  PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_referrers ON manifests(repo_id, subject, digest) WHERE subject IS NOT NULL;
CREATE INDEX manifests_digest ON manifests(digest);
-- What a mark takes in since it last looked (gc.ts): rows stamped after a time.
CREATE INDEX manifests_created ON manifests(repo_id, created_at);

-- text, not jsonb: the bytes the index wrote are the bytes a listing answers with
-- (jsonb would reorder keys and drop duplicates). Large values are TOASTed, out of the row.
CREATE TABLE referrer_annotations (
  repo_id     bigint NOT NULL,
  digest      text COLLATE "C" NOT NULL,
  bytes       bigint NOT NULL,
  json        text NOT NULL,
  PRIMARY KEY (repo_id, digest),
  FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);

CREATE TABLE tags (
  repo_id     bigint NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
  name        text COLLATE "C" NOT NULL,
  digest      text COLLATE "C" NOT NULL,
  updated_at  bigint NOT NULL,
  PRIMARY KEY (repo_id, name),
  FOREIGN KEY (repo_id, digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);
-- The tags of a manifest (a delete reports them; the sweep skips tagged manifests), and
-- the cascade from a manifest's delete, which would otherwise scan the repository's tags.
CREATE INDEX tags_digest ON tags(repo_id, digest);

CREATE TABLE uploads (
  id            text COLLATE "C" PRIMARY KEY,
  repo          text COLLATE "C" NOT NULL,
  client        text NOT NULL DEFAULT '',
  started_at    bigint NOT NULL,
  updated_at    bigint NOT NULL,
  staged        text,
  claimed_by    text,
  claimed_until bigint
);
CREATE INDEX uploads_repo ON uploads(repo);
CREATE INDEX uploads_client ON uploads(client);

CREATE TABLE layers (
  key         text COLLATE "C" PRIMARY KEY,
  digest      text COLLATE "C" NOT NULL REFERENCES blobs(digest),
  diff_id     text NOT NULL,
  size        bigint NOT NULL,
  created_at  bigint NOT NULL
);
CREATE INDEX layers_digest ON layers(digest);

CREATE TABLE builds (
  repo        text COLLATE "C" NOT NULL,
  hash        text COLLATE "C" NOT NULL,
  manifest    text COLLATE "C" NOT NULL,
  media_type  text NOT NULL,
  size        bigint NOT NULL,
  alt_manifest text COLLATE "C",
  alt_media_type text,
  alt_size    bigint,
  store_path  text NOT NULL,
  created_at  bigint NOT NULL,
  last_pulled bigint,
  evicted_at  bigint,
  layer_format text,
  PRIMARY KEY (repo, hash)
);
`;

// Build jobs shared by replicas (job-store.ts, postgres-jobs.ts). `view` is the build
// room's JSON of the job, opaque here; `heartbeat` is the database's clock, so a replica's
// silence is measured on one clock; `created`/`finished` are the writer's, for order.
// A log is its chunks by `seq`, each at most 64 KiB.
const V2 = `
CREATE TABLE jobs (
  id          text COLLATE "C" PRIMARY KEY,
  repo        text COLLATE "C" NOT NULL,
  tag         text NOT NULL,
  replica     text NOT NULL,
  view        text NOT NULL,
  created     bigint NOT NULL,
  finished    bigint,
  heartbeat   bigint NOT NULL,
  stopped     boolean NOT NULL DEFAULT false
);
CREATE INDEX jobs_running ON jobs(created) WHERE finished IS NULL;
CREATE INDEX jobs_finished ON jobs(finished) WHERE finished IS NOT NULL;

CREATE TABLE job_logs (
  job         text COLLATE "C" NOT NULL,
  seq         integer NOT NULL,
  bytes       bytea NOT NULL,
  PRIMARY KEY (job, seq)
);
`;

/** MIGRATIONS[v - 1] takes the schema from version v - 1 to v (0: an empty database). */
export const MIGRATIONS: readonly string[] = [V1, V2];

export const PG_SCHEMA_VERSION = MIGRATIONS.length;

/** A database whose schema is newer than this code (a newer nixreg migrated it). */
export class SchemaTooNew extends Error {
  constructor(readonly found: number, readonly known: number) {
    super(`the index database has schema version ${found}, newer than this nixreg knows (${known}): upgrade nixreg, or point it at another database`);
  }
}

/**
 * Brings the database to PG_SCHEMA_VERSION, once however many replicas call this at the
 * same moment; returns the version found before. One transaction: a failure part way
 * (a replica killed, the server gone) leaves the database as it was.
 */
export async function migrate(client: pg.ClientBase): Promise<{ from: number; to: number }> {
  await client.query('BEGIN');
  try {
    // The lock first: two sessions running CREATE TABLE IF NOT EXISTS at once can both
    // pass the check, and one then fails on the catalog's unique index.
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK.toString()]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_version (
      version     integer PRIMARY KEY,
      applied_at  timestamptz NOT NULL DEFAULT now()
    )`);
    const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_version');
    const from = r.rows[0]?.v ?? 0;
    if (from > PG_SCHEMA_VERSION) throw new SchemaTooNew(from, PG_SCHEMA_VERSION);
    for (let v = from; v < PG_SCHEMA_VERSION; v++) {
      await client.query(MIGRATIONS[v]!);
      await client.query('INSERT INTO schema_version (version) VALUES ($1)', [v + 1]);
    }
    await client.query('COMMIT');
    return { from, to: PG_SCHEMA_VERSION };
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {});
    throw e;
  }
}
