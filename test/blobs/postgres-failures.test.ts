// What only the PostgreSQL index has, part one: its schema migrated once by replicas
// starting together, and a database that goes away (paused, down) answered with
// IndexUnavailable within the deadline, and served again by itself when it comes back.
// One throwaway cluster for the file (helpers/postgres.ts), a database per case.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { IndexUnavailable } from '../../src/blobs/errors.js';
import { PgPool } from '../../src/blobs/index/postgres-pool.js';
import { MIGRATIONS, PG_SCHEMA_VERSION, SchemaTooNew, migrate } from '../../src/blobs/index/postgres-schema.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';

let server: Postgres;
before(async () => { server = await startPostgres({ durable: false }); });
after(async () => { await server?.stop(); });

const TIMEOUT = 1500;

async function withPools<T>(url: string, n: number, fn: (pools: PgPool[]) => Promise<T>): Promise<T> {
  const pools = Array.from({ length: n }, () => new PgPool({ url, poolSize: 4, timeoutMs: TIMEOUT }));
  try { return await fn(pools); } finally { await Promise.all(pools.map((p) => p.close())); }
}

test('replicas starting together migrate an empty database once', async () => {
  const url = await server.createDatabase();
  const results = await Promise.all(Array.from({ length: 6 }, async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try { return await migrate(c); } finally { await c.end(); }
  }));
  // Exactly one found version 0; the others waited for its commit and found it done.
  assert.equal(results.filter((r) => r.from === 0).length, 1, JSON.stringify(results));
  assert.ok(results.every((r) => r.to === PG_SCHEMA_VERSION));
  await withPools(url, 1, async ([p]) => {
    const rows = await p!.query<{ version: number }>('SELECT version FROM schema_version ORDER BY version');
    assert.deepEqual(rows.map((r) => r.version), MIGRATIONS.map((_, i) => i + 1));
    const tables = await p!.query<{ n: number }>(`SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'`);
    assert.equal(tables[0]!.n, 10);
  });
});

test('a database of a newer schema is refused, and left as it was', async () => {
  const url = await server.createDatabase();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await migrate(c);
    await c.query('INSERT INTO schema_version (version) VALUES ($1)', [PG_SCHEMA_VERSION + 1]);
    await assert.rejects(migrate(c), SchemaTooNew);
    const r = await c.query('SELECT max(version) AS v FROM schema_version');
    assert.equal(r.rows[0].v, PG_SCHEMA_VERSION + 1);
  } finally {
    await c.end();
  }
});

/** Runs `fn` expecting IndexUnavailable, and returns how long it took. */
async function unavailableWithin(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await assert.rejects(fn(), (e) => {
    assert.ok(e instanceof IndexUnavailable, `not IndexUnavailable: ${(e as Error)?.stack}`);
    assert.match(e.message, /postgres:\/\/127\.0\.0\.1:\d+\/t\d+/);
    assert.doesNotMatch(e.message, new RegExp(server.password));
    return true;
  });
  return performance.now() - t0;
}

test('paused: IndexUnavailable within the deadline, then served again once resumed, by itself', async () => {
  const url = await server.createDatabase();
  await withPools(url, 1, async ([p]) => {
    const pool = p!;
    await pool.tx(async (t) => { await t.query('CREATE TABLE k (v int)'); await t.query('INSERT INTO k VALUES (1)'); });
    server.pause();
    try {
      // A pooled connection whose server stopped answering: the client's statement deadline.
      const inTx = await unavailableWithin(() => pool.tx(async (t) => t.query('SELECT v FROM k')));
      assert.ok(inTx < 2 * TIMEOUT + 1500, `took ${inTx} ms`);
      // Every connection busy with the paused server: the others wait for one at most the deadline.
      const all = await Promise.allSettled(Array.from({ length: 8 }, () => unavailableWithin(() => pool.query('SELECT v FROM k'))));
      for (const r of all) {
        assert.equal(r.status, 'fulfilled', r.status === 'rejected' ? String(r.reason) : '');
        assert.ok(r.value < 2 * TIMEOUT + 1500, `took ${r.value} ms`);
      }
    } finally {
      server.resume();
    }
    // No restart, no reconnect by hand: the next request works.
    assert.deepEqual(await pool.query('SELECT v FROM k'), [{ v: 1 }]);
    assert.equal(await pool.tx(async (t) => (await t.query<{ v: number }>('SELECT v FROM k')).rows[0]!.v), 1);
  });
});

test('down: IndexUnavailable at once; up: served again by the same pool', async () => {
  const url = await server.createDatabase();
  await withPools(url, 1, async ([p]) => {
    const pool = p!;
    await pool.query('CREATE TABLE k (v int)');
    await pool.query('INSERT INTO k VALUES (2)');
    await server.down('fast');
    try {
      const t = await unavailableWithin(() => pool.tx(async (x) => x.query('SELECT v FROM k')));
      assert.ok(t < TIMEOUT, `refused connections took ${t} ms`);
      await unavailableWithin(() => pool.query('SELECT v FROM k'));
    } finally {
      await server.up();
    }
    assert.deepEqual(await pool.query('SELECT v FROM k'), [{ v: 2 }]);
    // Killed in a crash (the pool's connections die under it): still by itself.
    await server.down('immediate');
    await server.up();
    assert.equal(await pool.tx(async (x) => (await x.query<{ v: number }>('SELECT v FROM k')).rows[0]!.v), 2);
  });
});

test('a transaction that meets a serialization failure is run again; other errors roll it back whole', async () => {
  const url = await server.createDatabase();
  await withPools(url, 1, async ([p]) => {
    const pool = p!;
    await pool.query('CREATE TABLE k (v int)');
    let runs = 0;
    const v = await pool.tx(async (t) => {
      runs++;
      await t.query('INSERT INTO k VALUES ($1)', [runs]);
      if (runs < 3) await t.query(`DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$`);
      return runs;
    });
    assert.equal(v, 3);
    assert.deepEqual(await pool.query('SELECT v FROM k'), [{ v: 3 }]);
    await assert.rejects(pool.tx(async (t) => {
      await t.query('INSERT INTO k VALUES (9)');
      await t.query('SELECT * FROM nonexistent');
    }), /nonexistent/);
    assert.deepEqual(await pool.query('SELECT v FROM k'), [{ v: 3 }]);
    // A statement past the server's statement_timeout: unavailable (too slow), not a bug.
    await unavailableWithin(() => pool.query(`SELECT pg_sleep(${(TIMEOUT + 500) / 1000})`));
  });
});
