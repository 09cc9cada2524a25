// Which index a process uses, chosen at start: the embedded SQLite file in the data
// directory (the default), or a PostgreSQL database shared by replicas
// (--database postgres://…). The rest of storage sees only the Index interface.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type { Index } from './index.js';
import { SqliteIndex } from './sqlite.js';

export interface IndexOptions {
  /** --database: a postgres:// URL; undefined: the SQLite file at `sqlitePath`. */
  database?: string | undefined;
  /** With `database`: connections at most (--database-pool; default 10). */
  databasePool?: number | undefined;
  /** With `database`: the deadline of connecting, of waiting for a connection and of each statement, ms (--database-timeout; default 10 s). */
  databaseTimeoutMs?: number | undefined;
  /** The SQLite file of the data directory (layout.ts dbPath). */
  sqlitePath: string;
}

/** Opens (creating or migrating) the index; a postgres:// database's module is loaded only then. */
export async function openIndex(opts: IndexOptions): Promise<Index> {
  if (opts.database !== undefined) {
    // Loaded on demand: the default never loads pg.
    const [{ PostgresIndex }, { PG_DEFAULTS }] = await Promise.all([import('./postgres.js'), import('./postgres-pool.js')]);
    return PostgresIndex.open({
      url: opts.database,
      poolSize: opts.databasePool ?? PG_DEFAULTS.poolSize,
      timeoutMs: opts.databaseTimeoutMs ?? PG_DEFAULTS.timeoutMs,
    });
  }
  return new SqliteIndex(opts.sqlitePath);
}
