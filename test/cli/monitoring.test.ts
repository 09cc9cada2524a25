// Issue 11 from the operator's side: `nixreg serve --metrics-auth FILE --min-free-space
// SIZE` and their environment variables. A faulty token file or size stops the start with
// one line and exit 2; SIGHUP re-reads the token file; /healthz and /readyz answer
// without credentials.
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';
import { serveConfig } from '../../src/config.js';
import { tempDir } from '../helpers/registry.js';
import { cleanEnv, reap, spawnCli, type CliProcess } from './spawn.js';

const dirs: string[] = [];
const procs: CliProcess[] = [];
after(async () => {
  for (const p of procs) await reap(p);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function dir(): string {
  const d = tempDir('nixreg-monitoring-');
  dirs.push(d);
  return d;
}

async function waitForLine(p: CliProcess, re: RegExp, from: number): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const m = re.exec(p.output().slice(from));
    if (m) return m[0];
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${re} in:\n${p.output().slice(from)}`);
}

test('config: --metrics-auth and --min-free-space, each with its variable; the flag wins', () => {
  const none = serveConfig({}, {});
  assert.equal(none.metricsAuth, undefined);
  assert.equal(none.minFreeSpace, undefined);
  const env = { NIXREG_METRICS_AUTH: '/etc/nixreg/metrics-token', NIXREG_MIN_FREE_SPACE: '10GB' };
  assert.deepEqual([serveConfig({}, env).metricsAuth, serveConfig({}, env).minFreeSpace], ['/etc/nixreg/metrics-token', 10e9]);
  const flags = serveConfig({ metricsAuth: 'token', minFreeSpace: '512MiB' }, env);
  assert.deepEqual([flags.metricsAuth, flags.minFreeSpace], [resolve('token'), 512 * 1024 * 1024]);
  assert.equal(serveConfig({ minFreeSpace: '0' }, {}).minFreeSpace, 0);
  assert.throws(() => serveConfig({}, { NIXREG_MIN_FREE_SPACE: 'lots' }), /--min-free-space must be a size/);
});

test('a faulty metrics token file or free-space size is one line naming the fault, exit code 2', { timeout: 60_000 }, async () => {
  const d = dir();
  writeFileSync(join(d, 'short'), 'too-short\n');
  writeFileSync(join(d, 'two'), 'first-line-of-token\nsecond-line-of-token\n');
  const cases: [string, string[], NodeJS.ProcessEnv, RegExp][] = [
    ['short token', ['--metrics-auth', join(d, 'short')], {}, /^error: metrics auth file .*short: the token has 9 characters; it needs 16 to 4096$/],
    ['two lines', [], { NIXREG_METRICS_AUTH: join(d, 'two') }, /^error: metrics auth file .*two: the token must be one line/],
    ['missing file', ['--metrics-auth', join(d, 'nope')], {}, /^error: metrics auth file .*nope: ENOENT$/],
    ['bad size', ['--min-free-space', '5 gallons'], {}, /^error: --min-free-space must be a size/],
  ];
  for (const [what, args, env, re] of cases) {
    const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(d, 'data'), ...args], { env: cleanEnv(env as Record<string, string>) });
    procs.push(p);
    assert.equal(await p.exited, 2, `${what}: ${p.output()}`);
    const lines = p.output().trim().split('\n');
    assert.equal(lines.length, 1, `${what}: one line, got:\n${p.output()}`);
    assert.match(lines[0]!, re, what);
    assert.ok(!p.output().includes('too-short') && !p.output().includes('first-line-of-token'), 'the token is never printed');
  }
});

test('NIXREG_METRICS_AUTH and NIXREG_MIN_FREE_SPACE configure serve; SIGHUP re-reads the token', { timeout: 60_000 }, async () => {
  const d = dir();
  const tokenFile = join(d, 'metrics-token');
  writeFileSync(tokenFile, 'first-token-4f1a9c27\n');
  const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(d, 'data'), '--images', join(d, 'images')], {
    env: cleanEnv({ NIXREG_METRICS_AUTH: tokenFile, NIXREG_MIN_FREE_SPACE: '9000TB' }),
  });
  procs.push(p);
  const { url } = await p.listening;
  const get = (path: string, token?: string) => fetch(`${url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  assert.equal((await get('/metrics')).status, 401);
  const scraped = await get('/metrics', 'first-token-4f1a9c27');
  assert.equal(scraped.status, 200);
  assert.match(await scraped.text(), /^nixreg_http_requests_total\{method="GET",route="metrics",status="401"\} 1$/m);
  assert.deepEqual(await (await get('/healthz')).json(), { status: 'ok' });
  const ready = await get('/readyz');
  assert.equal(ready.status, 503);
  const body = await ready.text();
  assert.match(body, /"space":\{"ok":false,"reason":"low space: \d+ MiB free in the data directory, below the threshold of \d+ MiB"\}/);
  assert.ok(!body.includes(d), 'no host path in the readiness answer');

  writeFileSync(tokenFile, 'second-token-8be0d3f5\n');
  const mark = p.output().length;
  p.kill('SIGHUP');
  const line = await waitForLine(p, /.*"msg":"reloaded".*/, mark);
  assert.ok(line.includes(`metrics auth file ${tokenFile}`), line);
  assert.equal((await get('/metrics', 'first-token-4f1a9c27')).status, 401);
  assert.equal((await get('/metrics', 'second-token-8be0d3f5')).status, 200);
  assert.ok(!p.output().includes('first-token') && !p.output().includes('second-token'), 'tokens never reach the log');
});

test('the blob body path: sendfile by default, copied with --no-sendfile or NIXREG_SENDFILE=0 (the metric says which)', { timeout: 60_000 }, async () => {
  const cases: [string, string[], Record<string, string>, number][] = [
    ['default', [], {}, 1], ['--no-sendfile', ['--no-sendfile'], {}, 0], ['NIXREG_SENDFILE=off', [], { NIXREG_SENDFILE: 'off' }, 0],
  ];
  for (const [what, args, env, gauge] of cases) {
    const d = dir();
    const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(d, 'data'), '--images', join(d, 'images'), ...args], { env: cleanEnv(env) });
    procs.push(p);
    const { url } = await p.listening;
    assert.match(await (await fetch(`${url}/metrics`)).text(), new RegExp(`^nixreg_blob_sendfile ${gauge}$`, 'm'), what);
    await reap(p);
  }
  const d = dir();
  const bad = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(d, 'data')], { env: cleanEnv({ NIXREG_SENDFILE: 'maybe' }) });
  procs.push(bad);
  assert.equal(await bad.exited, 2, bad.output());
  assert.match(bad.output().trim(), /^error: NIXREG_SENDFILE must be 1 or 0/);
});

test('--help names the new flags and their variables', { timeout: 30_000 }, async () => {
  const p = spawnCli(['serve', '--help'], { env: cleanEnv() });
  procs.push(p);
  assert.equal(await p.exited, 0);
  assert.match(p.output(), /--metrics-auth <file>[\s\S]*NIXREG_METRICS_AUTH/);
  assert.match(p.output(), /--min-free-space <size>[\s\S]*NIXREG_MIN_FREE_SPACE/);
  assert.match(p.output(), /--no-sendfile[\s\S]*NIXREG_SENDFILE=0/);
});
