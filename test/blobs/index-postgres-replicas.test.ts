// What only the PostgreSQL index has: several processes ("replicas", here PostgresIndex
// instances with pools of their own) on one database. Its schema migrated once by
// replicas starting together; what one writes is what the other reads next; one
// collector at a time; digests locked across replicas; upload claims on the database's
// clock; and a database that goes away (paused, down) answered with IndexUnavailable
// within the deadline, and served again by itself when it comes back.
// One throwaway cluster for the file (helpers/postgres.ts), a database per case.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { IndexUnavailable } from '../../src/blobs/errors.js';
import { PgPool } from '../../src/blobs/index/postgres-pool.js';
import { PostgresIndex } from '../../src/blobs/index/postgres.js';
import type { RepoWrites, SweepMark, WritesSince } from '../../src/blobs/index/index.js';
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
    assert.equal(tables[0]!.n, 12, 'v1: 10 tables with schema_version; v2: jobs and job_logs');
  });
});

async function replicas(n: number, timeoutMs = TIMEOUT): Promise<{ url: string; all: PostgresIndex[] }> {
  const url = await server.createDatabase();
  const all = await Promise.all(Array.from({ length: n }, () => PostgresIndex.open({ url, poolSize: 4, timeoutMs })));
  opened.push(...all);
  return { url, all };
}
const opened: PostgresIndex[] = [];
after(async () => { await Promise.all(opened.map((i) => i.close())); });

const dg = (c: string) => `sha256:${c.repeat(64).slice(0, 64)}`;

test('PostgresIndex instances opening one empty database together migrate it once', async () => {
  const { all: [a] } = await replicas(5);
  const rows = await a!.pool.query<{ version: number }>('SELECT version FROM schema_version');
  assert.equal(rows.length, PG_SCHEMA_VERSION);
});

test('a tag moved or deleted through one replica is what the other resolves next', async () => {
  const { all: [a, b] } = await replicas(2);
  const layer = dg('1');
  await a!.addBlob('app', layer, 3);
  for (const m of [dg('a'), dg('b')]) assert.deepEqual(await a!.putManifest('app', { digest: m, mediaType: 'x', size: 2 }, { blobs: [layer], manifests: [] }), []);
  await a!.putTag('app', 'latest', dg('a'));
  assert.equal((await b!.lookup('app', { tag: 'latest' }))?.digest, dg('a'));
  await b!.putTag('app', 'latest', dg('b'));
  assert.equal((await a!.lookup('app', { tag: 'latest' }))?.digest, dg('b'));
  assert.equal(await a!.resolveTag('app', 'latest'), dg('b'));
  assert.equal(await a!.deleteTag('app', 'latest'), true);
  assert.equal(await b!.lookup('app', { tag: 'latest' }), undefined);
  // Registry-wide counts: uploads started on either replica count on both.
  await a!.createUpload('u-a', 'app', '10.0.0.1');
  await b!.createUpload('u-b', 'app', '10.0.0.2');
  assert.deepEqual(await a!.openUploads('app', '10.0.0.2'), { repo: 2, client: 1, total: 2 });
});

test('a sweep step on one replica and a manifest put on the other: the put waits for the step, and is refused what the step removed', async () => {
  const { all: [a, b] } = await replicas(2);
  const layer = dg('7');
  await b!.addBlob('race', layer, 7);
  const repo = (await a!.repository('race'))!;
  // A mark that reaches one unread body, so the step awaits its read while holding the repository.
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  let reading!: () => void;
  const inRead = new Promise<void>((r) => { reading = r; });
  const mark: SweepMark = {
    wants: (): WritesSince => ({ manifests: 0, others: 0 }),
    takeIn: (_w: RepoWrites) => ['sha256:unread'],
    readNow: () => 'more',
    read: async () => { reading(); await gate; return true; },
    caughtUp: () => {},
    keepsManifest: () => false,
    keepsLink: () => false,
  };
  const step = a!.sweepStep(repo, { mark, cutoff: Date.now() + 3_600_000, manifests: [], links: [layer], maxReads: 0 });
  await inRead;
  let settled = false;
  const put = b!.putManifest('race', { digest: dg('8'), mediaType: 'x', size: 2 }, { blobs: [layer], manifests: [] }, 'latest')
    .finally(() => { settled = true; });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(settled, false, 'the put waits while the step holds the repository');
  release();
  assert.deepEqual(await step, { outcome: 'swept', manifests: 0, links: 1 });
  assert.deepEqual(await put, [layer], 'refused: its layer went in the step it waited for');
  assert.equal(await b!.lookup('race', { tag: 'latest' }), undefined);
});

test('one collector at a time: the lock held by one replica refuses the other, and is free again when its holder ends or dies', async () => {
  const { all: [a, b] } = await replicas(2);
  const release = await a!.collectorLock();
  assert.ok(release, 'the first replica takes the lock');
  assert.equal(await b!.collectorLock(), undefined, 'the other is refused while it is held');
  await release();
  const again = await b!.collectorLock();
  assert.ok(again, 'free once released');
  // Its holder's session dies (a replica killed, a network cut): the server frees it.
  let lost = false;
  await again();
  const held = await a!.collectorLock(() => { lost = true; });
  assert.ok(held);
  await b!.pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE application_name = 'nixreg' AND query LIKE '%pg_try_advisory_lock($1)%' AND pid <> pg_backend_pid()`);
  for (let i = 0; i < 50 && !lost; i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(lost, 'the holder learns that its lock is gone');
  const taken = await b!.collectorLock();
  assert.ok(taken, 'another replica can collect at once');
  await taken();
  await held();
});

test('a digest locked by one replica waits on the other; other digests do not', async () => {
  const { all: [a, b] } = await replicas(2);
  const order: string[] = [];
  let release!: () => void;
  const holding = new Promise<void>((r) => { release = r; });
  let entered!: () => void;
  const inside = new Promise<void>((r) => { entered = r; });
  const first = a!.withDigestLock(dg('c'), async () => { order.push('a in'); entered(); await holding; order.push('a out'); });
  await inside;
  const second = b!.withDigestLock(dg('c'), async () => { order.push('b in'); });
  const other = await b!.withDigestLock(dg('d'), async () => 'other');
  assert.equal(other, 'other');
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(order, ['a in'], 'the other replica waits while the lock is held');
  release();
  await Promise.all([first, second]);
  assert.deepEqual(order, ['a in', 'a out', 'b in']);
});

test('upload claims run on the database clock: the other replica waits for a claim, and takes it once it runs out', async () => {
  const { all: [a, b] } = await replicas(2);
  await a!.createUpload('u1', 'app', '');
  assert.equal(await a!.claimUpload('u1', 'A', Date.now() + 400), true);
  assert.equal(await b!.claimUpload('u1', 'B', Date.now() + 400), false);
  // Stored as the database's time plus the claim's length, whatever this process's clock says.
  const [row] = await a!.pool.query<{ left: number }>(
    `SELECT claimed_until - (extract(epoch from clock_timestamp()) * 1000)::bigint AS left FROM uploads WHERE id = 'u1'`);
  assert.ok(row!.left > 200 && row!.left <= 400, String(row!.left));
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(await b!.claimUpload('u1', 'B', Date.now() + 30_000), true);
  assert.equal((await a!.getUpload('u1'))?.claimed_by, 'B');
});

test('a replica whose clock is a minute slow still holds its claim for as long as it asked, on the database clock', async () => {
  const url = await server.createDatabase();
  const a = await PostgresIndex.open({ url, poolSize: 2, timeoutMs: TIMEOUT });
  opened.push(a);
  const real = Date.now;
  const slow = () => real() - 60_000;
  Date.now = slow;
  let b: PostgresIndex;
  try { b = await PostgresIndex.open({ url, poolSize: 2, timeoutMs: TIMEOUT }); } finally { Date.now = real; }
  opened.push(b);
  await a.createUpload('u1', 'app', '');
  // B claims for 30 s by its own clock, a minute behind: on the database's, that is 30 s from now too.
  assert.equal(await b.claimUpload('u1', 'B', slow() + 30_000), true);
  assert.equal(await a.claimUpload('u1', 'A', Date.now() + 30_000), false, 'the slow replica\'s claim still runs');
  // And B, looking with its clock, sees its claim run for about 30 s more.
  Date.now = slow;
  try {
    const left = (await b.allUploads())[0]!.claimed_until! - Date.now();
    assert.ok(left > 25_000 && left <= 30_000, String(left));
  } finally { Date.now = real; }
});

test('the index paused: its methods fail with IndexUnavailable within the deadline, and work again once it resumes', async () => {
  const { all: [a, b] } = await replicas(2);
  await a!.addBlob('app', dg('e'), 1);
  server.pause();
  try {
    const took = await Promise.all([
      unavailableWithin(() => a!.lookup('app', { digest: dg('e') })),
      unavailableWithin(() => b!.addBlob('app', dg('f'), 1)),
      unavailableWithin(() => b!.ping()),
    ]);
    for (const t of took) assert.ok(t < 2 * TIMEOUT + 1500, `took ${t} ms`);
  } finally {
    server.resume();
  }
  assert.equal(await b!.linkedBlobSize('app', dg('e')), 1);
  await b!.addBlob('app', dg('f'), 1);
  assert.equal(await a!.blobSize(dg('f')), 1);
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
