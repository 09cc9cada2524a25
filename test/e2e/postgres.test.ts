// `nixreg serve --database postgres://…` end to end, on a real PostgreSQL 15
// (helpers/postgres.ts): two replicas (processes) on one database and one data directory
// (PostgreSQL + a shared disk). The OCI conformance suite through one; skopeo pushing
// through one and pulling through the other; a tag moved on one is what the other serves
// next; a collection on one racing pushes on the other acknowledges no manifest whose
// blobs it removed; one collector at a time; PostgreSQL paused or down answered with
// 503 + Retry-After within --database-timeout's bound, /readyz naming the database, and
// service resumed by itself. And the statements one manifest GET costs.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { OCI_MANIFEST, http, pushImage, sha256 } from '../api/util.js';
import { requireTool, run } from '../helpers/exec.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { ROOT, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { skopeoRoundTrip } from './fixtures.js';

let server: Postgres;
let url: string;
let a: RegistryProcess;
let b: RegistryProcess;
const cleanup: string[] = [];
const TIMEOUT_S = 2;

before(async () => {
  await requireTool('skopeo');
  await requireTool('umoci');
  // pg_stat_statements: what a request costs in statements, counted by the server.
  server = await startPostgres({ durable: false, settings: { shared_preload_libraries: 'pg_stat_statements' } });
  url = await server.createDatabase('nixreg_e2e');
  const data = tempDir('nixreg-pg-e2e-');
  cleanup.push(data);
  // The default deadline (10 s): this machine may be loaded; the outage test has its own replica with a short one.
  const args = ['--database', url, '--gc-grace', '0', '--gc-interval', '0'];
  // Both start before any traffic: a start empties the shared tmp/.
  a = await spawnRegistry({ data, args });
  b = await spawnRegistry({ data, args });
});

after(async () => {
  await a?.stop();
  await b?.stop();
  await server?.stop();
  for (const d of cleanup) rmSync(d, { recursive: true, force: true });
});

const blobFile = (data: string, d: string) => join(data, 'blobs/sha256', d.slice(7, 9), d.slice(7));

test('the OCI conformance suite passes against a replica over PostgreSQL', { timeout: 180_000 }, async () => {
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const r = await run(process.execPath, ['--test', '--test-reporter=tap', join(ROOT, 'dist/test/api/conformance.test.js')],
    { env: { ...env, CONFORMANCE_URL: a.url }, check: false });
  assert.equal(r.code, 0, `${r.stdout.split('\n').filter((l) => /not ok|error|expected|actual/.test(l)).slice(0, 40).join('\n')}\n${a.logs().slice(-3000)}`);
  assert.ok(Number(/^# pass (\d+)$/m.exec(r.stdout)?.[1]) >= 70);
  assert.equal(existsSync(join(a.data, 'index.db')), false, 'no SQLite index is made');
});

test('skopeo pushes through one replica and pulls through the other', { timeout: 120_000 }, async () => {
  const trip = await skopeoRoundTrip(`${a.host}/pg/busybox:v1`, `${b.host}/pg/busybox:v1`);
  cleanup.push(...trip.dirs);
  assert.equal(trip.pulled, trip.pushed);
  for (const l of trip.layers) assert.equal(`sha256:${createHash('sha256').update(l.bytes).digest('hex')}`, l.digest);
  const tags = await http(b.url, 'GET', '/v2/pg/busybox/tags/list');
  assert.deepEqual((tags.json() as { tags: string[] }).tags, ['v1']);
});

test('a tag moved or deleted on one replica is what the other serves next, with no stale cache', async () => {
  const one = await pushImage(a.url, 'pg/moving', 'v1', { salt: 'one' });
  const get = (r: RegistryProcess) => http(r.url, 'GET', '/v2/pg/moving/manifests/latest', { headers: { Accept: OCI_MANIFEST } });
  assert.equal((await http(a.url, 'PUT', '/v2/pg/moving/manifests/latest', { headers: { 'content-type': OCI_MANIFEST }, body: one.manifest })).status, 201);
  // Both have resolved (and may have cached) latest → one.
  for (const r of [a, b]) assert.equal(sha256((await get(r)).body), one.digest);
  const two = await pushImage(b.url, 'pg/moving', 'v2', { salt: 'two' });
  assert.equal((await http(b.url, 'PUT', '/v2/pg/moving/manifests/latest', { headers: { 'content-type': OCI_MANIFEST }, body: two.manifest })).status, 201);
  const seen = await get(a);
  assert.equal(seen.status, 200);
  assert.equal(sha256(seen.body), two.digest, 'the other replica serves the moved tag at once');
  assert.equal(seen.headers.get('docker-content-digest'), two.digest);
  assert.equal((await http(b.url, 'DELETE', `/v2/pg/moving/manifests/${two.digest}`)).status, 202);
  assert.equal((await get(a)).status, 404, 'and a deleted manifest is gone from it at once');
});

test('a manifest GET costs at most one statement of the database', async () => {
  const img = await pushImage(a.url, 'pg/count', 'v1');
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    // Every statement of every session on this database (B's background work included: it has none now).
    const statements = async () => Number((await admin.query(`SELECT coalesce(sum(calls), 0) AS n FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%'`)).rows[0].n);
    const N = 200;
    for (const [ref, what] of [['v1', 'tag'], [img.digest, 'digest']] as const) {
      await http(a.url, 'GET', `/v2/pg/count/manifests/${ref}`, { headers: { Accept: OCI_MANIFEST } });
      await admin.query('SELECT pg_stat_statements_reset()');
      const before = await statements();
      for (let i = 0; i < N; i++) {
        const r = await http(a.url, 'GET', `/v2/pg/count/manifests/${ref}`, { headers: { Accept: OCI_MANIFEST } });
        assert.equal(r.status, 200);
      }
      const per = (await statements() - before) / N;
      process.stdout.write(`# statements per manifest GET by ${what}: ${per.toFixed(2)}\n`);
      assert.ok(per <= 1, `${per} statements per manifest GET by ${what}`);
    }
  } finally {
    await admin.end();
  }
});

test('a collection on one replica racing pushes on the other never acknowledges a manifest whose blobs it removed', { timeout: 120_000 }, async () => {
  let pushing = true;
  const acked: { repo: string; digest: string; blobs: string[] }[] = [];
  const outcomes: Record<string, number> = {};
  const pusher = async (n: number) => {
    const repo = `race/r${n}`;
    for (let i = 0; pushing; i++) {
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, n: `${n}.${i}` }));
      const layer = randomBytes(4096);
      // A 503 (this machine overloaded past the deadline) is a push not acknowledged: the client retries.
      const blobs = await Promise.all([config, layer].map((x) => http(b.url, 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(x)}`,
        { headers: { 'Content-Type': 'application/octet-stream' }, body: x })));
      if (blobs.some((r) => r.status !== 201)) { outcomes[`blob ${blobs.map((r) => r.status)}`] = (outcomes[`blob ${blobs.map((r) => r.status)}`] ?? 0) + 1; continue; }
      const body = Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length }],
      }));
      // Tagged, then the tag moves on: every image but the last becomes garbage at once (grace 0).
      const r = await http(b.url, 'PUT', `/v2/${repo}/manifests/latest`, { headers: { 'content-type': OCI_MANIFEST }, body });
      const code = r.status === 201 ? 'acknowledged' : `${r.status} ${(r.json() as { errors: { code: string }[] }).errors[0]!.code}`;
      outcomes[code] = (outcomes[code] ?? 0) + 1;
      if (r.status === 201) acked.push({ repo, digest: sha256(body), blobs: [sha256(config), sha256(layer)] });
    }
  };
  const pushers = Array.from({ length: 4 }, (_, n) => pusher(n));
  let collections = 0;
  let freed = 0;
  const until = Date.now() + 6000;
  while (Date.now() < until || collections < 3) {
    const r = await http(a.url, 'POST', '/nixreg/gc');
    assert.equal(r.status, 200, r.text());
    collections++;
    freed += (r.json() as { blobs: number }).blobs;
  }
  pushing = false;
  await Promise.all(pushers);
  process.stdout.write(`# ${collections} collections freed ${freed} blobs meanwhile; pushes: ${JSON.stringify(outcomes)}\n`);
  assert.ok(freed > 0, 'the collections freed garbage as they went');
  for (const k of Object.keys(outcomes)) assert.match(k, /^(acknowledged|404 MANIFEST_BLOB_UNKNOWN|503 UNAVAILABLE|blob [0-9,]+)$/);
  // The last image of each repository is what its tag names: it and its blobs must be whole.
  const last = new Map<string, (typeof acked)[number]>();
  for (const p of acked) last.set(p.repo, p);
  assert.equal(last.size, 4);
  for (const p of last.values()) {
    const m = await http(a.url, 'GET', `/v2/${p.repo}/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
    assert.equal(sha256(m.body), p.digest);
    for (const d of p.blobs) {
      const blob = await http(a.url, 'GET', `/v2/${p.repo}/blobs/${d}`);
      assert.equal(blob.status, 200, `blob ${d} of an acknowledged manifest`);
      assert.equal(sha256(blob.body), d);
      assert.ok(existsSync(blobFile(a.data, d)));
    }
  }
});

test('PostgreSQL paused, then down: 503 with Retry-After within the bound, /readyz names the database; back: served again by itself', { timeout: 90_000 }, async () => {
  // A third replica, of the same database and blobs (a store of its own would not hold what the index names).
  const c = await spawnRegistry({ data: a.data, args: ['--database', url, '--database-timeout', String(TIMEOUT_S), '--gc-interval', '0'] });
  try { await outage(c); } finally { await c.stop(); }
});

async function outage(a: RegistryProcess): Promise<void> {
  const img = await pushImage(a.url, 'pg/outage', 'v1');
  const db = /postgres:\/\/127\.0\.0\.1:\d+\/nixreg_e2e/;
  const expectDown = async (what: string) => {
    const t0 = Date.now();
    const r = await http(a.url, 'GET', '/v2/pg/outage/manifests/v1', { headers: { Accept: OCI_MANIFEST } });
    const took = Date.now() - t0;
    assert.equal(r.status, 503, `${what}: ${r.status} ${r.text()}`);
    assert.equal((r.json() as { errors: { code: string }[] }).errors[0]!.code, 'UNAVAILABLE');
    assert.ok(Number(r.headers.get('retry-after')) > 0);
    assert.ok(took < (2 * TIMEOUT_S + 2) * 1000, `${what}: 503 after ${took} ms`);
    const ready = await http(a.url, 'GET', '/readyz');
    assert.equal(ready.status, 503);
    const index = (ready.json() as { checks: { index: { ok: boolean; reason: string } } }).checks.index;
    assert.equal(index.ok, false);
    assert.match(index.reason, db, `${what}: /readyz names the database`);
    assert.doesNotMatch(index.reason, new RegExp(server.password));
  };
  const expectUp = async () => {
    for (let i = 0; ; i++) {
      const r = await http(a.url, 'GET', '/v2/pg/outage/manifests/v1', { headers: { Accept: OCI_MANIFEST } });
      if (r.status === 200) { assert.equal(sha256(r.body), img.digest); break; }
      assert.ok(i < 50, `not served again: ${r.status} ${r.text()}`);
      await new Promise((res) => setTimeout(res, 200));
    }
    assert.equal((await http(a.url, 'GET', '/readyz')).status, 200);
  };
  server.pause();
  try { await expectDown('paused'); } finally { server.resume(); }
  await expectUp();
  await server.down('fast');
  try { await expectDown('down'); } finally { await server.up(); }
  await expectUp();
  // A push after the outage is whole.
  await pushImage(a.url, 'pg/outage', 'v2');
}
