// Leases (Storage.lease; Index.lease, postgres-locks.ts) across processes on a real
// PostgreSQL 15: one holder per key, waiters take over when it releases or when its
// process dies with kill -9, a waiter gives up when its signal aborts and leaves no
// session behind. With SQLite (one process) a lease is granted at once.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { rmSync } from 'node:fs';
import { PostgresIndex } from '../../src/blobs/index/postgres.js';
import { Storage } from '../../src/blobs/storage.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { ROOT, tempDir } from '../helpers/registry.js';

test('with one process (SQLite), a lease is granted at once, twice over, and an aborted signal still refuses', async () => {
  const dir = tempDir('nixreg-leases-');
  const storage = await Storage.open(dir);
  try {
    const a = await storage.lease('k');
    const b = await storage.lease('k');
    await Promise.all([a(), b()]);
    await assert.rejects(storage.lease('k', AbortSignal.abort(new Error('gone'))), /gone/);
  } finally { await storage.close(); rmSync(dir, { recursive: true, force: true }); }
});

class PostgresLeases {
  private index: Promise<PostgresIndex>;
  constructor(o: { connectionString: string }) { this.index = PostgresIndex.open({ url: o.connectionString, poolSize: 2, timeoutMs: 5000 }); }
  async acquire(key: string, signal?: AbortSignal, waiting?: () => void) {
    const release = await (await this.index).lease(key, signal, waiting);
    return { release };
  }
  async close() { await (await this.index).close(); }
}

describe('PostgresLeases', () => {
  let server: Postgres;
  let url: string;
  before(async () => {
    server = await startPostgres({ durable: false });
    url = await server.createDatabase();
  });
  after(() => server?.stop());

  const sessions = async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      return (await c.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'nixreg'")).rows[0]!.n;
    } finally { await c.end(); }
  };

  test('one holder per key; the next waiter gets it once released; other keys are free', async () => {
    const a = new PostgresLeases({ connectionString: url });
    const b = new PostgresLeases({ connectionString: url });
    try {
      const held = await a.acquire('build:x');
      let waited = 0;
      let got = false;
      const next = b.acquire('build:x', undefined, () => { waited++; }).then((l) => { got = true; return l; });
      const other = await b.acquire('build:y');
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(got, false, 'the second waits while the first holds');
      assert.equal(waited, 1, 'told once that it waits');
      const t = Date.now();
      await held.release();
      const l = await next;
      assert.ok(Date.now() - t < 1500, `taken over ${Date.now() - t} ms after release`);
      await Promise.all([l.release(), other.release(), held.release()]);
    } finally { await Promise.all([a.close(), b.close()]); }
  });

  test('a waiter whose signal aborts gives up at once and leaves no session behind', async () => {
    const a = new PostgresLeases({ connectionString: url });
    const b = new PostgresLeases({ connectionString: url });
    try {
      const held = await a.acquire('build:abort');
      await b.acquire('build:other').then((l) => l.release());
      const before = await sessions();
      const t = Date.now();
      await assert.rejects(b.acquire('build:abort', AbortSignal.timeout(400)), { name: 'TimeoutError' });
      assert.ok(Date.now() - t < 1500, `gave up after ${Date.now() - t} ms`);
      assert.equal(await sessions(), before, 'the waiter\'s session is gone');
      await held.release();
    } finally { await Promise.all([a.close(), b.close()]); }
  });

  test('kill -9 of the holding process: its session ends and a waiter takes over', { timeout: 30_000 }, async () => {
    const script = `
      const { PostgresIndex } = await import(${JSON.stringify(`${ROOT}/dist/src/blobs/index/postgres.js`)});
      const index = await PostgresIndex.open({ url: process.env.URL, poolSize: 2, timeoutMs: 5000 });
      await index.lease('build:killed');
      console.log('held');
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, URL: url }, stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (c: Buffer) => { if (c.toString().includes('held')) resolve(); });
      child.once('exit', (code) => reject(new Error(`holder exited ${code}`)));
    });
    const b = new PostgresLeases({ connectionString: url });
    try {
      let got = false;
      const next = b.acquire('build:killed').then((l) => { got = true; return l; });
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(got, false, 'held by the other process');
      const t = Date.now();
      child.kill('SIGKILL');
      const l = await next;
      assert.ok(Date.now() - t < 3000, `taken over ${Date.now() - t} ms after the kill`);
      await l.release();
    } finally { child.kill('SIGKILL'); await b.close(); }
  });
});
