// Issue 11: who may read /metrics, in process. Open with neither --auth nor
// --metrics-auth; with --metrics-auth, the bearer of the token file's token (what
// Prometheus's `credentials_file` sends) and nobody else; with --auth, an admin (Basic,
// or a token from /token) too; the token file re-read by reload(), a faulty one refused.
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { MetricsTokenError } from '../../src/registry/auth/metrics-token.js';
import { assertError, http, startReg, type Res, type TestRegistry } from '../api/util.js';
import { basicAuth, writeAuth } from '../helpers/auth.js';
import { parseExposition } from '../helpers/prometheus.js';
import { tempDir } from '../helpers/registry.js';

const TOKEN = 'scrape-7f3c9a1e5d2b8c4f';
const AUTH = `
htpasswd: ./htpasswd
accessControl:
  repositories: { "**": { defaultPolicy: [read] } }
  adminPolicy: { users: [admin], actions: [read] }
`;
const USERS = { admin: 'admin-pw-31c4', bob: 'bob-pw-9d02' };

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
const regs: TestRegistry[] = [];
const dirs: string[] = [];
after(async () => {
  for (const r of regs) await r.destroy();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function dir(): string {
  const d = tempDir('nixreg-metrics-auth-');
  dirs.push(d);
  return d;
}

async function start(opts: Parameters<typeof startReg>[0]): Promise<TestRegistry> {
  const r = await startReg(opts);
  regs.push(r);
  return r;
}

function tokenFile(d: string, text = `${TOKEN}\n`, name = 'metrics-token'): string {
  writeFileSync(join(d, name), text);
  return join(d, name);
}

function metricsServed(r: Res): void {
  assert.equal(r.status, 200, r.text().slice(0, 300));
  assert.ok(parseExposition(r.text()).types.has('nixreg_http_requests_total'));
}

function challenge(r: Res): string {
  assertError(r, 401, 'UNAUTHORIZED');
  return r.headers.get('www-authenticate') ?? '';
}

async function adminToken(r: TestRegistry): Promise<string> {
  const res = await http(r.url, 'GET', '/token?service=nixreg', { headers: basicAuth('admin', USERS.admin) });
  assert.equal(res.status, 200, res.text());
  return res.json().token as string;
}

describe('access to /metrics', () => {
  test('neither --auth nor --metrics-auth: open', async () => {
    const r = await start({});
    metricsServed(await http(r.url, 'GET', '/metrics'));
  });

  test('--metrics-auth: the token, in constant time; no or another token is 401; nothing else changes', async () => {
    const r = await start({ metricsAuth: tokenFile(dir(), `  ${TOKEN}  \n\n`) });
    assert.equal(challenge(await http(r.url, 'GET', '/metrics')), 'Bearer realm="nixreg metrics"');
    assert.equal(challenge(await http(r.url, 'GET', '/metrics', { headers: bearer(`${TOKEN}x`) })), 'Bearer realm="nixreg metrics",error="invalid_token"');
    assert.equal(challenge(await http(r.url, 'GET', '/metrics', { headers: bearer(TOKEN.slice(0, -1)) })), 'Bearer realm="nixreg metrics",error="invalid_token"');
    challenge(await http(r.url, 'GET', '/metrics', { headers: basicAuth('admin', TOKEN) }));
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: bearer(TOKEN) }));
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: { authorization: `bearer  ${TOKEN}` } }));
    // Every other endpoint stays as open as it was.
    assert.equal((await http(r.url, 'GET', '/v2/')).status, 200);
    assert.equal((await http(r.url, 'GET', '/nixreg/stats')).status, 200);
    assert.equal((await http(r.url, 'GET', '/healthz')).status, 200);
    assert.equal((await http(r.url, 'GET', '/readyz')).status, 200);
  });

  test('--auth: admins only, with Basic credentials or a token from /token', async () => {
    const d = dir();
    const r = await start({ auth: writeAuth(d, AUTH, USERS) });
    assert.match(challenge(await http(r.url, 'GET', '/metrics')), /^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/token",service="nixreg"$/);
    assertError(await http(r.url, 'GET', '/metrics', { headers: basicAuth('bob', USERS.bob) }), 403, 'DENIED');
    challenge(await http(r.url, 'GET', '/metrics', { headers: basicAuth('admin', 'wrong') }));
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: basicAuth('admin', USERS.admin) }));
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: bearer(await adminToken(r)) }));
  });

  test('--auth and --metrics-auth: the token or an admin', async () => {
    const d = dir();
    const r = await start({ auth: writeAuth(d, AUTH, USERS), metricsAuth: tokenFile(d) });
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: bearer(TOKEN) }));
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: basicAuth('admin', USERS.admin) }));
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: bearer(await adminToken(r)) }));
    assertError(await http(r.url, 'GET', '/metrics', { headers: basicAuth('bob', USERS.bob) }), 403, 'DENIED');
    assert.match(challenge(await http(r.url, 'GET', '/metrics', { headers: bearer(`${TOKEN}-not`) })), /error="invalid_token"/);
    assert.match(challenge(await http(r.url, 'GET', '/metrics')), /\/token",service="nixreg"$/);
    // The metrics token opens /metrics, not the registry.
    challenge(await http(r.url, 'GET', '/v2/', { headers: bearer(TOKEN) }));
  });

  test('reload() re-reads the token file; a faulty one is reported and the old token kept', async () => {
    const d = dir();
    const file = tokenFile(d);
    const r = await start({ metricsAuth: file });
    const next = 'rotated-token-0123456789';
    writeFileSync(file, `${next}\n`);
    const ok = r.reload();
    assert.deepEqual(ok, { reloaded: [`metrics auth file ${file}`], failed: [] });
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: bearer(next) }));
    challenge(await http(r.url, 'GET', '/metrics', { headers: bearer(TOKEN) }));

    writeFileSync(file, 'short\n');
    const bad = r.reload();
    assert.deepEqual(bad.reloaded, []);
    assert.equal(bad.failed.length, 1);
    assert.match(bad.failed[0]!, /metrics auth file .*: the token has 5 characters; it needs 16 to 4096/);
    assert.ok(!bad.failed[0]!.includes('short'), 'the message does not echo the token');
    metricsServed(await http(r.url, 'GET', '/metrics', { headers: bearer(next) }));
  });

  test('a token file that is missing, short or not one line fails the start', async () => {
    const d = dir();
    const cases: [string, RegExp][] = [
      [join(d, 'nope'), /metrics auth file .*nope: ENOENT/],
      [tokenFile(d, 'fifteen-chars-x\n', 'short'), /the token has 15 characters; it needs 16 to 4096/],
      [tokenFile(d, `${TOKEN}\n${TOKEN}\n`, 'two-lines'), /one line of printable characters without spaces/],
      [tokenFile(d, `${TOKEN} ${TOKEN}`, 'space'), /one line of printable characters without spaces/],
      [tokenFile(d, '', 'empty'), /the token has 0 characters/],
    ];
    for (const [file, re] of cases) {
      await assert.rejects(startReg({ metricsAuth: file, data: join(d, 'data') }), (e: unknown) => e instanceof MetricsTokenError && re.test(e.message));
    }
  });
});
