// Issue 11: /healthz and /readyz, in process. Liveness is answering at all; readiness
// is the index answering, a write to the data directory, space left in it, and Nix where
// expressions are served; each failure is a 503 that says why without naming the data
// directory; both are open to anyone, with or without --auth, whatever credentials come.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ImageSource, NixStatus } from '../../src/build/image-source.js';
import { NixImageSource } from '../../src/build/source.js';
import { http, startReg, type Res, type TestRegistry } from '../api/util.js';
import { writeAuth } from '../helpers/auth.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { tempDir } from '../helpers/registry.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Longer than readiness.ts caches the disk checks. */
const CACHE_MS = 1100;

interface Report { status: string; checks: Record<string, { ok: boolean; reason?: string; state?: string }> }

function report(r: Res, status: number, data?: string): Report {
  assert.equal(r.status, status, r.text());
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(r.headers.get('cache-control'), 'no-store');
  if (data) assert.ok(!r.text().includes(data), `the data directory is named in ${r.text()}`);
  return r.json() as Report;
}

/** An image source that only answers readiness, as the test says. */
function fakeSource(nix: () => NixStatus | undefined): ImageSource {
  return {
    owns: () => false, serves: async () => false, resolve: async () => undefined, standingTags: () => [], builds: async () => [], build: async () => undefined, buildLog: async () => undefined, startBuild: async () => { throw new Error('no builds'); }, close: async () => {},
    stats: () => ({}), onBuildFinished: () => {}, nixReadiness: nix,
  };
}

const regs: TestRegistry[] = [];
const dirs: string[] = [];
async function start(opts: Parameters<typeof startReg>[0] = {}): Promise<TestRegistry> {
  const r = await startReg(opts);
  regs.push(r);
  return r;
}
after(async () => {
  for (const r of regs) await r.destroy();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('healthz and readyz', () => {
  let reg: TestRegistry;
  before(async () => { reg = await start(); });

  test('/healthz: 200 {"status":"ok"}, for GET and HEAD', async () => {
    const r = await http(reg.url, 'GET', '/healthz');
    assert.deepEqual(report(r, 200), { status: 'ok' });
    assert.equal((await http(reg.url, 'HEAD', '/healthz')).status, 200);
  });

  test('/readyz: 200 with every check passing; Nix not needed without expressions', async () => {
    const body = report(await http(reg.url, 'GET', '/readyz'), 200, reg.data);
    assert.deepEqual(body, {
      status: 'ready',
      checks: { index: { ok: true }, writable: { ok: true }, space: { ok: true }, nix: { ok: true, state: 'not needed' } },
    });
  });

  test('/readyz: 503 naming the reason while the data directory takes no write; ready again once it does', async () => {
    const tmp = join(reg.data, 'tmp');
    report(await http(reg.url, 'GET', '/readyz'), 200);
    const t0 = Date.now();
    // As root, permissions stop nothing: a file where the directory was stops every write in it.
    rmSync(tmp, { recursive: true, force: true });
    writeFileSync(tmp, 'not a directory');
    try {
      const cached = await http(reg.url, 'GET', '/readyz');
      // Probes every second or two cost one disk check a second, not one each.
      if (Date.now() - t0 < 900) report(cached, 200);
      await sleep(CACHE_MS);
      const body = report(await http(reg.url, 'GET', '/readyz'), 503, reg.data);
      assert.equal(body.status, 'not ready');
      assert.equal(body.checks.writable!.ok, false);
      assert.match(body.checks.writable!.reason!, /^the data directory does not take a write \(ENOTDIR\)$/);
      assert.equal(body.checks.index!.ok, true);
      assert.equal(body.checks.space!.ok, true);
      // Liveness is another matter: the process answers.
      assert.equal((await http(reg.url, 'GET', '/healthz')).status, 200);
    } finally {
      rmSync(tmp, { force: true });
      mkdirSync(tmp);
    }
    await sleep(CACHE_MS);
    report(await http(reg.url, 'GET', '/readyz'), 200);
  });

  test('/readyz: 503 "low space" below --min-free-space; 0 turns the check off', async () => {
    const full = await start({ minFreeSpace: 2 ** 60 });
    const body = report(await http(full.url, 'GET', '/readyz'), 503, full.data);
    assert.equal(body.checks.space!.ok, false);
    assert.match(body.checks.space!.reason!, /^low space: \d+ MiB free in the data directory, below the threshold of \d+ MiB$/);
    assert.equal(body.checks.writable!.ok, true);
    const none = await start({ minFreeSpace: 0 });
    report(await http(none.url, 'GET', '/readyz'), 200);
  });

  test('/readyz: 503 when the index does not answer', async () => {
    const r = await start();
    await r.storage.index.close();
    const body = report(await http(r.url, 'GET', '/readyz'), 503, r.data);
    assert.equal(body.checks.index!.ok, false);
    assert.match(body.checks.index!.reason!, /^the index does not answer: /);
  });

  test('/readyz: Nix failing is a 503 with the problem; still checking is not a failure', async () => {
    let nix: NixStatus | undefined = { state: 'checking' };
    const r = await start({ source: () => fakeSource(() => nix) });
    assert.deepEqual(report(await http(r.url, 'GET', '/readyz'), 200).checks.nix, { ok: true, state: 'checking' });
    nix = { state: 'failed', problem: 'Nix is not installed (nix-instantiate and nix-store are not on PATH)', fix: 'install Nix' };
    const body = report(await http(r.url, 'GET', '/readyz'), 503);
    assert.deepEqual(body.checks.nix, { ok: false, state: 'failed', reason: 'Nix cannot build images: Nix is not installed (nix-instantiate and nix-store are not on PATH)' });
    nix = { state: 'ok' };
    report(await http(r.url, 'GET', '/readyz'), 200);
  });

  test('/readyz with the real image source: Nix missing fails readiness only where expressions are served', { timeout: 60_000 }, async () => {
    const images = tempDir('nixreg-images-');
    dirs.push(images);
    const broken = { ...NIX_TEST_ENV, PATH: '/nonexistent' };
    const r = await start({ source: (storage) => new NixImageSource(storage, { images, nixEnv: broken }) });
    // An empty images directory: a plain registry, which needs no Nix.
    assert.deepEqual(report(await http(r.url, 'GET', '/readyz'), 200).checks.nix, { ok: true, state: 'not needed' });
    writeFileSync(join(images, 'hello.nix'), '{ contents = [ ]; }\n');
    // The first probe asks for Nix's verdict; until it is in, not a failure.
    let body: Report | undefined;
    for (let i = 0; i < 100; i++) {
      const res = await http(r.url, 'GET', '/readyz');
      assert.ok(res.status === 200 || res.status === 503, res.text());
      body = res.json() as Report;
      if (res.status === 503) break;
      assert.equal(body.checks.nix!.ok, true);
      await sleep(100);
    }
    assert.equal(body!.status, 'not ready', JSON.stringify(body));
    assert.match(body!.checks.nix!.reason!, /^Nix cannot build images: Nix is not installed/);
  });

  test('with --auth: both open to anyone, whatever credentials come', async () => {
    const dir = tempDir('nixreg-health-auth-');
    dirs.push(dir);
    const auth = writeAuth(dir, 'htpasswd: ./htpasswd\naccessControl: { repositories: { "**": { defaultPolicy: [read] } } }\n', { alice: 'alice-pw' });
    const r = await start({ auth });
    assert.equal((await http(r.url, 'GET', '/v2/')).status, 401);
    for (const headers of [{}, { authorization: 'Bearer not-a-token' }, { authorization: 'Basic bm9ib2R5Om5vcGU=' }] as Record<string, string>[]) {
      assert.deepEqual(report(await http(r.url, 'GET', '/healthz', { headers }), 200), { status: 'ok' });
      assert.equal(report(await http(r.url, 'GET', '/readyz', { headers }), 200, r.data).status, 'ready');
    }
  });
});
