// The index contract (index-contract.ts) on the PostgreSQL index, against a real
// PostgreSQL 15 (helpers/postgres.ts): one throwaway cluster for the file, a fresh
// database for each index. No older schema yet: version 1 is PostgreSQL's first (the
// migrations themselves are tested in index-postgres-replicas.test.ts).
import { after, before } from 'node:test';
import { openIndex } from '../../src/blobs/index/open.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { indexContract } from './index-contract.js';

let server: Postgres;
before(async () => { server = await startPostgres({ durable: false }); });
after(async () => { await server?.stop(); });

indexContract('postgres', {
  fresh: async () => openIndex({ database: await server.createDatabase(), databaseTimeoutMs: 10_000, sqlitePath: '/nonexistent/index.db' }),
});
