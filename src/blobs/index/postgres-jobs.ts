// Build jobs shared by replicas in PostgreSQL (the JobStore of job-store.ts): the `jobs`
// and `job_logs` tables of postgres-schema.ts's version 2. Every method is one statement;
// a writer's many running jobs are one upsert per beat, not one each.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type { JobRecord, JobStore, LogChunk, StoredJob } from './job-store.js';
import type { PgPool } from './postgres-pool.js';
import { NOW_MS } from './postgres-schema.js';

const COLUMNS = `id, repo, tag, replica, view, created, finished, stopped, (${NOW_MS} - heartbeat) AS heartbeat_age`;

interface Row { id: string; repo: string; tag: string; replica: string; view: string; created: number; finished: number | null; stopped: boolean; heartbeat_age: number }

const stored = (r: Row): StoredJob => ({
  id: r.id, repo: r.repo, tag: r.tag, replica: r.replica, view: r.view, created: Number(r.created),
  finished: r.finished === null ? null : Number(r.finished), stopped: r.stopped, heartbeatAge: Number(r.heartbeat_age),
});

export class PostgresJobs implements JobStore {
  constructor(private readonly pool: PgPool) {}

  async put(records: JobRecord[]): Promise<void> {
    if (!records.length) return;
    await this.pool.query(`INSERT INTO jobs (id, repo, tag, replica, view, created, finished, heartbeat, stopped)
      SELECT id, repo, tag, replica, view, created, finished, ${NOW_MS}, false
      FROM jsonb_to_recordset($1::jsonb) AS x(id text, repo text, tag text, replica text, view text, created bigint, finished bigint)
      ON CONFLICT (id) DO UPDATE SET view = EXCLUDED.view, finished = EXCLUDED.finished, heartbeat = EXCLUDED.heartbeat,
        replica = EXCLUDED.replica, stopped = false`, [JSON.stringify(records)]);
  }

  async appendLog(id: string, seq: number, bytes: Buffer): Promise<void> {
    await this.pool.named('job-log-append', 'INSERT INTO job_logs (job, seq, bytes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [id, seq, bytes]);
  }

  async get(id: string): Promise<StoredJob | undefined> {
    const [r] = await this.pool.named<Row>('job-get', `SELECT ${COLUMNS} FROM jobs WHERE id = $1`, [id]);
    return r && stored(r);
  }

  async list(keep: number): Promise<StoredJob[]> {
    const rows = await this.pool.query<Row>(`(SELECT ${COLUMNS} FROM jobs WHERE finished IS NULL ORDER BY created DESC, id DESC)
      UNION ALL (SELECT ${COLUMNS} FROM jobs WHERE finished IS NOT NULL ORDER BY finished DESC, created DESC, id DESC LIMIT $1)`, [keep]);
    return rows.map(stored);
  }

  async logAfter(id: string, afterSeq: number, maxBytes: number): Promise<LogChunk[]> {
    // Chunks are at most 64 KiB: a page of 16 of them, cut to maxBytes below.
    const rows = await this.pool.named<{ seq: number; bytes: Buffer }>('job-log-after',
      'SELECT seq, bytes FROM job_logs WHERE job = $1 AND seq > $2 ORDER BY seq LIMIT 16', [id, afterSeq]);
    const out: LogChunk[] = [];
    let n = 0;
    for (const r of rows) {
      if (out.length && n + r.bytes.length > maxBytes) break;
      out.push({ seq: r.seq, bytes: r.bytes });
      n += r.bytes.length;
    }
    return out;
  }

  async remove(id: string): Promise<void> {
    await this.pool.query('WITH d AS (DELETE FROM jobs WHERE id = $1) DELETE FROM job_logs WHERE job = $1', [id]);
  }

  async prune(keep: number): Promise<void> {
    await this.pool.query(`WITH old AS (SELECT id FROM jobs WHERE finished IS NOT NULL ORDER BY finished DESC, created DESC, id DESC OFFSET $1),
      d AS (DELETE FROM jobs WHERE id IN (SELECT id FROM old))
      DELETE FROM job_logs WHERE job IN (SELECT id FROM old)`, [keep]);
  }

  async expireStale(staleMs: number): Promise<number> {
    const rows = await this.pool.query(`UPDATE jobs SET finished = heartbeat, stopped = true
      WHERE finished IS NULL AND heartbeat < ${NOW_MS} - $1 RETURNING id`, [staleMs]);
    return rows.length;
  }
}
