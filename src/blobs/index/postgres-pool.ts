// The connection to PostgreSQL and how it fails: a bounded pool, every wait with a
// deadline, transactions retried on serialization failures, and one error,
// IndexUnavailable, for "the database is unreachable, too slow, or every connection is
// busy", which the registry answers with 503 and a Retry-After.
//
// The deadlines (timeoutMs, --database-timeout): connecting, and waiting for a pooled
// connection, each at most timeoutMs; a statement at most timeoutMs by the server's
// clock (statement_timeout: the server cancels it and the connection stays usable) and
// timeoutMs + 1 s by ours (query_timeout: a server that says nothing at all, paused or
// cut off by the network; the connection is then destroyed, since an answer may still
// come on it). So a request whose database went away gets its 503 within about
// 2 × timeoutMs, not whenever TCP gives up. TCP keepalives find a dead peer of an idle
// connection; idle_in_transaction_session_timeout lets the server end a transaction
// whose replica froze holding locks (a repository row FOR UPDATE, gc.ts).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import pg from 'pg';
import { IndexUnavailable } from '../errors.js';

export interface PgOptions {
  /** postgres://USER:PASSWORD@HOST:PORT/DATABASE[?…] (libpq's URL form; sslmode, options… as pg reads them). */
  url: string;
  /** Connections at most (--database-pool). */
  poolSize: number;
  /** The deadline of connecting, of waiting for a pooled connection, and of each statement (ms). */
  timeoutMs: number;
}

export const PG_DEFAULTS = { poolSize: 10, timeoutMs: 10_000 } as const;

/** A transaction that met one of these is rolled back and run again, at most this many times in all. */
const ATTEMPTS = 4;
const RETRYABLE = new Set(['40001', '40P01']);

/**
 * SQLSTATEs that mean the server cannot serve now: connection exceptions (class 08),
 * shutting down or starting up (57P01-57P03), out of connections (53300), a statement
 * past statement_timeout or lock_timeout (57014, 55P03), a transaction ended for idling.
 */
const UNAVAILABLE_STATES = /^(08...|57P0[123]|53300|57014|55P03|25P03)$/;
const UNAVAILABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE',
  'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED']);
/** What pg and pg-pool say, without a code, when a connection fails, times out or ends. */
const UNAVAILABLE_MESSAGES = /timeout exceeded when trying to connect|^timeout expired|Query read timeout|Connection terminated|not queryable|Connection ended/i;

/** pg's error codes: a SQLSTATE (five characters) or a Node errno. */
function codeOf(err: unknown): string | undefined {
  const c = (err as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

/** Whether `err` says the database cannot be reached or answer now (as opposed to refusing a statement). */
export function isUnavailable(err: unknown): boolean {
  if (err instanceof IndexUnavailable) return true;
  if (!(err instanceof Error)) return false;
  const code = codeOf(err);
  if (code !== undefined && (UNAVAILABLE_STATES.test(code) || UNAVAILABLE_ERRNOS.has(code))) return true;
  // AggregateError (a host name with several addresses, all refused).
  if (err instanceof AggregateError && err.errors.some(isUnavailable)) return true;
  return UNAVAILABLE_MESSAGES.test(err.message);
}

/** The server, database and port of a URL, for messages: never the user or password. */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `postgres://${u.hostname || 'localhost'}${u.port ? `:${u.port}` : ''}${u.pathname}`;
  } catch {
    return 'postgres';
  }
}

/** bigint (20) and numeric (1700, what sum() of bigints gives) as numbers: sizes and ms fit 2^53. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === 20 || oid === 1700 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** A transaction's connection: statements only, the pool ends the transaction. */
export interface Tx {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

export class PgPool {
  readonly description: string;
  private readonly pool: pg.Pool;
  private readonly config: pg.ClientConfig;
  /** Statements sent, BEGIN and COMMIT included (for measurements and tests). */
  statements = 0;

  constructor(private readonly o: PgOptions) {
    this.description = describeUrl(o.url);
    this.config = {
      connectionString: o.url,
      application_name: 'nixreg',
      connectionTimeoutMillis: o.timeoutMs,
      statement_timeout: o.timeoutMs,
      query_timeout: o.timeoutMs + 1000,
      idle_in_transaction_session_timeout: Math.max(60_000, 2 * o.timeoutMs),
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      types,
    };
    this.pool = new pg.Pool({ ...this.config, max: o.poolSize, idleTimeoutMillis: 30_000 });
    // A connection that fails while idle in the pool is dropped by it; the event must
    // have a listener or it would end the process. One that fails while checked out
    // fails its next statement instead (below).
    this.pool.on('error', () => {});
    this.pool.on('connect', (c) => { c.on('error', () => {}); });
  }

  /** `err` as IndexUnavailable when it says the database cannot serve now; anything else as it is. */
  unavailable(err: unknown): unknown {
    if (err instanceof IndexUnavailable || !isUnavailable(err)) return err;
    const e = err as Error;
    const code = codeOf(e);
    return new IndexUnavailable(this.description, `${code ? `${code}: ` : ''}${e.message.slice(0, 200)}`);
  }

  /** One statement on any pooled connection, in a transaction of its own. */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<R[]> {
    this.statements++;
    try {
      return (await this.pool.query<R>(text, values)).rows;
    } catch (e) {
      throw this.unavailable(e);
    }
  }

  /**
   * The same as query, as a named prepared statement: parsed and planned once per
   * connection, for the statements of the hot paths (a lookup per manifest GET).
   */
  async named<R extends pg.QueryResultRow = pg.QueryResultRow>(name: string, text: string, values: unknown[]): Promise<R[]> {
    this.statements++;
    try {
      return (await this.pool.query<R>({ name, text, values })).rows;
    } catch (e) {
      throw this.unavailable(e);
    }
  }

  /** `fn` with one pooled connection of its own (migrations); it is destroyed if it failed. */
  async withClient<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw this.unavailable(e);
    }
    try {
      const out = await fn(client);
      client.release();
      return out;
    } catch (e) {
      client.release(e as Error);
      throw e;
    }
  }

  /**
   * Runs `fn` in one transaction on one pooled connection (READ COMMITTED). Rolled back
   * whole on any error; run again from the start after a serialization failure or a
   * deadlock (`fn` must therefore have no effect outside the database before it returns),
   * and once more when the connection turns out dead at BEGIN (a pooled connection the
   * server closed since: a restart), where nothing of it has run yet.
   */
  async tx<T>(fn: (t: Tx) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      let client: pg.PoolClient;
      try {
        client = await this.pool.connect();
      } catch (e) {
        throw this.unavailable(e);
      }
      let begun = false;
      const t: Tx = { query: (text, values) => { this.statements++; return client.query(text, values); } };
      try {
        await t.query('BEGIN');
        begun = true;
        const out = await fn(t);
        await t.query('COMMIT');
        client.release();
        return out;
      } catch (e) {
        const dead = isUnavailable(e);
        if (!dead) {
          // ROLLBACK on a live connection; if even that fails, the connection goes.
          try { await client.query('ROLLBACK'); client.release(); } catch (r) { client.release(r as Error); }
        } else {
          client.release(e as Error);
        }
        const code = codeOf(e);
        if (attempt < ATTEMPTS && code !== undefined && RETRYABLE.has(code)) {
          await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
          continue;
        }
        if (!begun && dead && attempt === 1 && !/timeout/i.test((e as Error).message) && code !== '57014') continue;
        // Still conflicting after every attempt: the database is too busy for now, as for a timeout.
        if (code !== undefined && RETRYABLE.has(code)) {
          throw new IndexUnavailable(this.description, `${code}: ${(e as Error).message.slice(0, 200)} (${ATTEMPTS} attempts)`);
        }
        throw this.unavailable(e);
      }
    }
  }

  /**
   * A connection of its own, outside the pool, for what a session holds: a session-level
   * advisory lock (pg_try_advisory_lock) is held by one connection, and the pool would
   * hand each statement another. The caller ends it (end()) to release what it holds; if
   * it fails meanwhile, the server ends the session and releases them itself, and
   * `onLost` is called.
   */
  async session(onLost: (err: Error) => void): Promise<pg.Client> {
    const c = new pg.Client(this.config);
    c.on('error', (e) => onLost(e));
    c.on('end', () => onLost(new Error('Connection ended')));
    try {
      await c.connect();
    } catch (e) {
      await c.end().catch(() => {});
      throw this.unavailable(e);
    }
    return c;
  }

  /** Connections open and waiting for one (for metrics and tests). */
  get counts(): { total: number; idle: number; waiting: number } {
    return { total: this.pool.totalCount, idle: this.pool.idleCount, waiting: this.pool.waitingCount };
  }

  async close(): Promise<void> { await this.pool.end(); }
}
