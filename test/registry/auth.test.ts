// Issue 10: the gate over the HTTP API, in process. The Docker token flow (challenge,
// /token, Bearer), Basic straight to /v2, every action against the policy, the token
// refusals (forged, unsigned, expired, wrong audience), failed-login throttling, the
// filtered catalog and builds, mounts from unreadable repositories, create vs update,
// the admin endpoints, reload, and that no secret reaches the log. Real clients over
// TLS are in test/e2e/auth-clients.test.ts.
import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { SignJWT, UnsecuredJWT } from 'jose';
import { pino } from 'pino';
import { OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, assertError, http, sha256, startReg, type Res, type TestRegistry } from '../api/util.js';
import { basicAuth, writeAuth as writeAuthFile } from '../helpers/auth.js';
import { startTestRegistry, tempDir } from '../helpers/registry.js';

const PASSWORDS: Record<string, string> = { alice: 'alice-pw-7c1f', bob: 'bob-pw-93ad', carol: 'carol-pw-11e0', admin: 'admin-pw-5b2e' };

const AUTH = `
htpasswd: ./htpasswd
accessControl:
  groups: { devs: { users: [alice] } }
  repositories:
    "team/**":
      policies:
        - { groups: [devs], actions: [read, create, update, delete] }
        - { users: [bob], actions: [read] }
        - { users: [carol], actions: [read, create] }
    "team/secret/**":
      policies: [{ users: [alice], actions: [read] }]
    "public/**": { defaultPolicy: [read], anonymousPolicy: [read] }
  adminPolicy: { users: [admin], actions: [read, create, update, delete] }
failedLogins: { max: 5, window: 2 }
`;

const writeAuth = (dir: string, yaml = AUTH, users = PASSWORDS) => writeAuthFile(dir, yaml, users);
const basic = (user: string, pw = PASSWORDS[user]!) => basicAuth(user, pw);
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

async function token(reg: TestRegistry, user: string | undefined, ...scopes: string[]): Promise<string> {
  const q = new URLSearchParams([['service', 'nixreg'], ...scopes.map((s) => ['scope', s])]);
  const r = await http(reg.url, 'GET', `/token?${q}`, { headers: user ? basic(user) : {} });
  assert.equal(r.status, 200, r.text());
  const body = r.json();
  assert.equal(body.token, body.access_token);
  assert.ok(body.expires_in > 0 && body.issued_at);
  return body.token as string;
}

function claims(t: string): { sub?: string; cred?: string; access: { type: string; name: string; actions: string[] }[] } {
  return JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString());
}

/** Pushes a one-layer image with the given credentials; returns the manifest PUT's answer. */
async function push(reg: TestRegistry, repo: string, tag: string, headers: Record<string, string>, salt = tag): Promise<Res> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, salt }));
  const layer = Buffer.from(`layer ${salt}`);
  for (const b of [config, layer]) {
    const r = await http(reg.url, 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, { headers: { ...headers, 'content-type': 'application/octet-stream' }, body: b });
    if (r.status !== 201) return r;
  }
  const m = JSON.stringify({
    schemaVersion: 2, mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
    layers: [{ mediaType: OCI_LAYER, digest: sha256(layer), size: layer.length }],
  });
  return http(reg.url, 'PUT', `/v2/${repo}/manifests/${tag}`, { headers: { ...headers, 'content-type': OCI_MANIFEST }, body: m });
}

function challengeOf(r: Res): Record<string, string> {
  const h = r.headers.get('www-authenticate') ?? '';
  assert.match(h, /^Bearer /, `no Bearer challenge: ${h}`);
  return Object.fromEntries([...h.slice(7).matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
}

describe('access control', () => {
  let reg: TestRegistry;
  let dir: string;
  const logged: string[] = [];
  before(async () => {
    dir = tempDir('nixreg-auth-');
    const log = pino({ level: 'debug' }, new Writable({ write(c, _e, cb) { logged.push(c.toString()); cb(); } }));
    reg = await startReg({ auth: writeAuth(dir), log, limits: { uploadsPerClient: 2 } });
    // Content to read: pushed by the admin, who may write anywhere.
    for (const repo of ['team/app', 'team/secret/keys', 'public/tools', 'other/thing']) {
      assert.equal((await push(reg, repo, 'v1', basic('admin'), repo)).status, 201, repo);
    }
  });
  after(async () => { await reg.destroy(); rmSync(dir, { recursive: true, force: true }); });

  test('GET /v2/ without credentials is a challenge naming the realm and service', async () => {
    const r = await http(reg.url, 'GET', '/v2/');
    assertError(r, 401, 'UNAUTHORIZED');
    const c = challengeOf(r);
    assert.equal(c.realm, `${reg.url}/token`);
    assert.equal(c.service, 'nixreg');
    assert.equal((await http(reg.url, 'GET', '/v2/', { headers: basic('bob') })).status, 200);
    assert.equal((await http(reg.url, 'GET', '/v2/', { headers: bearer(await token(reg, 'bob')) })).status, 200);
  });

  test('an anonymous pull is answered 401 with the scope to ask for, or served where the policy allows it', async () => {
    const r = await http(reg.url, 'GET', '/v2/team/app/manifests/v1', { headers: { accept: OCI_MANIFEST } });
    assertError(r, 401, 'UNAUTHORIZED');
    assert.equal(challengeOf(r).scope, 'repository:team/app:pull');
    const push = await http(reg.url, 'POST', '/v2/team/app/blobs/uploads/');
    assert.equal(challengeOf(push).scope, 'repository:team/app:pull,push');
    assert.equal((await http(reg.url, 'GET', '/v2/public/tools/manifests/v1', { headers: { accept: OCI_MANIFEST } })).status, 200);
    assertError(await http(reg.url, 'GET', '/v2/other/thing/tags/list'), 401, 'UNAUTHORIZED');
  });

  test('/token grants only what the policy allows, and the token then works', async () => {
    const t = await token(reg, 'bob', 'repository:team/app:pull,push', 'repository:public/tools:pull,push', 'repository:other/thing:pull');
    assert.equal(claims(t).sub, 'bob');
    assert.deepEqual(claims(t).access, [
      { type: 'repository', name: 'team/app', actions: ['pull'] },
      { type: 'repository', name: 'public/tools', actions: ['pull'] },
    ]);
    const anon = await token(reg, undefined, 'repository:public/tools:pull', 'repository:team/app:pull');
    assert.equal(claims(anon).sub, undefined);
    assert.deepEqual(claims(anon).access, [{ type: 'repository', name: 'public/tools', actions: ['pull'] }]);
    // An anonymous token where signing in would help: a challenge, not a verdict.
    assertError(await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(anon) }), 401, 'UNAUTHORIZED');
    const r = await http(reg.url, 'GET', '/v2/team/app/manifests/v1', { headers: { ...bearer(t), accept: OCI_MANIFEST } });
    assert.equal(r.status, 200);
    // The longest pattern decides alone: team/** does not reach into team/secret/**.
    const s = await token(reg, 'bob', 'repository:team/secret/keys:pull');
    assert.deepEqual(claims(s).access, []);
    assertError(await http(reg.url, 'GET', '/v2/team/secret/keys/tags/list', { headers: bearer(s) }), 403, 'DENIED');
    assertError(await http(reg.url, 'GET', '/v2/team/secret/keys/tags/list', { headers: basic('carol') }), 403, 'DENIED');
    assert.equal((await http(reg.url, 'GET', '/v2/team/secret/keys/tags/list', { headers: basic('alice') })).status, 200);
  });

  test('POST /token takes an OAuth2 password grant, as containerd sends it first', async () => {
    const form = (f: Record<string, string>) => http(reg.url, 'POST', '/token', {
      headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(f).toString(),
    });
    const ok = await form({ grant_type: 'password', username: 'bob', password: PASSWORDS.bob!, service: 'nixreg', scope: 'repository:team/app:pull,push', client_id: 'containerd-client' });
    assert.equal(ok.status, 200, ok.text());
    const body = ok.json();
    assert.equal(body.scope, 'repository:team/app:pull');
    assert.deepEqual(claims(body.access_token).access, [{ type: 'repository', name: 'team/app', actions: ['pull'] }]);
    assert.equal((await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(body.access_token) })).status, 200);
    assertError(await form({ grant_type: 'password', username: 'bob', password: 'wrong', service: 'nixreg' }), 401, 'UNAUTHORIZED', 'POST');
    assertError(await form({ grant_type: 'refresh_token', refresh_token: 'x', service: 'nixreg' }), 400, 'UNSUPPORTED', 'POST');
  });

  test('a read-only user\'s push is denied, with Basic and with a token', async () => {
    assertError(await push(reg, 'team/app', 'bob1', basic('bob')), 403, 'DENIED', 'POST');
    assertError(await push(reg, 'team/app', 'bob2', bearer(await token(reg, 'bob', 'repository:team/app:pull,push'))), 403, 'DENIED', 'POST');
    assertError(await http(reg.url, 'DELETE', '/v2/team/app/manifests/v1', { headers: basic('bob') }), 403, 'DENIED', 'DELETE');
    assert.equal((await push(reg, 'team/app', 'alice1', basic('alice'))).status, 201);
    assert.equal((await push(reg, 'team/app', 'alice2', bearer(await token(reg, 'alice', 'repository:team/app:pull,push')))).status, 201);
  });

  test('a token without the scope a request needs is answered insufficient_scope when the policy would allow it', async () => {
    const r = await push(reg, 'team/app', 'narrow', bearer(await token(reg, 'alice', 'repository:team/app:pull')));
    assertError(r, 401, 'UNAUTHORIZED', 'POST');
    const c = challengeOf(r);
    assert.equal(c.error, 'insufficient_scope');
    assert.equal(c.scope, 'repository:team/app:pull,push');
  });

  test('moving an existing tag needs update; create alone may add new tags only', async () => {
    assert.equal((await push(reg, 'team/app', 'carol1', basic('carol'))).status, 201);
    // Same content again: not a move.
    assert.equal((await push(reg, 'team/app', 'carol1', basic('carol'))).status, 201);
    assertError(await push(reg, 'team/app', 'carol1', basic('carol'), 'other content'), 403, 'DENIED', 'PUT');
    assert.equal((await push(reg, 'team/app', 'carol1', basic('alice'), 'other content')).status, 201);
  });

  test('forged, unsigned, expired, wrong-audience and garbled tokens get 401 invalid_token', async () => {
    const good = await token(reg, 'alice', 'repository:team/app:pull');
    const access = claims(good).access;
    const ours = createPrivateKey(readFileSync(join(reg.data, 'token-key.pem')));
    const foreign = generateKeyPairSync('ed25519').privateKey;
    const now = Math.floor(Date.now() / 1000);
    const cred = claims(good).cred;
    assert.ok(cred, 'a user\'s token names the credential it was issued under');
    const sign = (key: typeof ours, opts: { exp?: number; aud?: string; cred?: string | null } = {}) => new SignJWT(opts.cred === null ? { access } : { access, cred: opts.cred ?? cred })
      .setProtectedHeader({ alg: 'EdDSA' }).setIssuer('nixreg').setSubject('alice').setAudience(opts.aud ?? 'nixreg')
      .setIssuedAt(now - 600).setExpirationTime(opts.exp ?? now + 300).sign(key);
    const cases: Record<string, string> = {
      forged: await sign(foreign),
      unsigned: new UnsecuredJWT({ access, iss: 'nixreg', aud: 'nixreg', sub: 'alice' }).setIssuedAt().setExpirationTime('5m').encode(),
      expired: await sign(ours, { exp: now - 5 }),
      'wrong audience': await sign(ours, { aud: 'someone-else' }),
      'another credential': await sign(ours, { cred: 'AAAAAAAAAAAAAAAA' }),
      'no credential': await sign(ours, { cred: null }),
      'tampered payload': `${good.split('.')[0]}.${Buffer.from(JSON.stringify({ ...claims(good), sub: 'admin' })).toString('base64url')}.${good.split('.')[2]}`,
      garbled: 'not.a.token',
      // Longer than any token we issue, shorter than Node's 16 KiB header limit (431 beyond).
      huge: 'a'.repeat(12_000),
    };
    // The control: our key, right audience, not expired, is accepted.
    assert.equal((await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(await sign(ours)) })).status, 200);
    for (const [what, t] of Object.entries(cases)) {
      const r = await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(t) });
      assertError(r, 401, 'UNAUTHORIZED');
      assert.equal(challengeOf(r).error, 'invalid_token', what);
    }
  });

  test('a wrong password is 401; repeated failures of one user from one address wait out the window', async () => {
    const wrong = basic('alice', 'nope');
    assertError(await http(reg.url, 'GET', '/token?service=nixreg', { headers: wrong }), 401, 'UNAUTHORIZED');
    assertError(await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: basic('nobody', 'x') }), 401, 'UNAUTHORIZED');
    for (let i = 0; i < 4; i++) await http(reg.url, 'GET', '/v2/', { headers: wrong });
    // Five failures of alice within the window: even her right password waits now; others' do not.
    const r = await http(reg.url, 'GET', '/v2/', { headers: basic('alice') });
    assertError(r, 429, 'TOOMANYREQUESTS');
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
    assert.equal((await http(reg.url, 'GET', '/v2/', { headers: basic('carol') })).status, 200);
    await new Promise((res) => setTimeout(res, 2100));
    assert.equal((await http(reg.url, 'GET', '/v2/', { headers: basic('alice') })).status, 200);
  });

  test('a request with both Basic and Bearer credentials is refused', async () => {
    const t = await token(reg, 'alice', 'repository:team/app:pull');
    const r = await new Promise<number>((resolve, reject) => {
      const u = new URL(reg.url);
      const req = request({ host: u.hostname, port: u.port, path: '/v2/team/app/tags/list' }, (res) => { res.resume(); resolve(res.statusCode!); });
      // Two header lines; Node would keep only the first for the handler to see.
      req.setHeader('Authorization', [basic('alice').authorization, `Bearer ${t}`]);
      req.on('error', reject);
      req.end();
    });
    assert.equal(r, 400);
  });

  test('_catalog lists only what the caller may read', async () => {
    const list = async (h: Record<string, string>) => (await http(reg.url, 'GET', '/v2/_catalog', { headers: h })).json().repositories;
    assert.deepEqual(await list({}), ['public/tools']);
    assert.deepEqual(await list(basic('bob')), ['public/tools', 'team/app']);
    assert.deepEqual(await list(basic('alice')), ['public/tools', 'team/app', 'team/secret/keys']);
    assert.deepEqual(await list(bearer(await token(reg, 'alice', 'registry:catalog:*'))), ['public/tools', 'team/app', 'team/secret/keys']);
    assert.deepEqual(await list(basic('admin')), ['other/thing', 'public/tools', 'team/app', 'team/secret/keys']);
  });

  test('a cross-repository mount from a repository the caller cannot read falls back to an upload', async () => {
    const secret = (await http(reg.url, 'GET', '/v2/other/thing/manifests/v1', { headers: { ...basic('admin'), accept: OCI_MANIFEST } })).json();
    const layer = secret.layers[0].digest as string;
    const denied = await http(reg.url, 'POST', `/v2/team/app/blobs/uploads/?mount=${layer}&from=other/thing`, { headers: basic('alice') });
    assert.equal(denied.status, 202, 'no mount: an upload session instead');
    assertError(await http(reg.url, 'HEAD', `/v2/team/app/blobs/${layer}`, { headers: basic('alice') }), 404, 'BLOB_UNKNOWN', 'HEAD');
    const pub = (await http(reg.url, 'GET', '/v2/public/tools/manifests/v1', { headers: { ...basic('admin'), accept: OCI_MANIFEST } })).json();
    const ok = await http(reg.url, 'POST', `/v2/team/app/blobs/uploads/?mount=${pub.layers[0].digest}&from=public/tools`, { headers: basic('alice') });
    assert.equal(ok.status, 201);
  });

  test('operator endpoints need admin; the builds list is filtered', async () => {
    assertError(await http(reg.url, 'GET', '/nixreg/stats'), 401, 'UNAUTHORIZED');
    assertError(await http(reg.url, 'GET', '/nixreg/stats', { headers: basic('alice') }), 403, 'DENIED');
    assert.equal((await http(reg.url, 'GET', '/nixreg/stats', { headers: basic('admin') })).status, 200);
  });

  test('per-client upload bounds count a signed-in user as one client, wherever it connects from', async () => {
    const open = async (who: string) => (await http(reg.url, 'POST', '/v2/team/app/blobs/uploads/', { headers: basic(who) })).status;
    const answers: number[] = [];
    // Two per client (see before()): alice reaches her bound; carol, from the same address, has her own.
    for (let i = 0; i < 3 && answers.at(-1) !== 429; i++) answers.push(await open('alice'));
    assert.equal(answers.at(-1), 429, `alice: ${answers.join(' ')}`);
    assert.equal(await open('carol'), 202);
  });

  test('the signing key is private to the registry, and no password or token reaches the log', async () => {
    assert.equal(statSync(join(reg.data, 'token-key.pem')).mode & 0o777, 0o600);
    const t = await token(reg, 'alice', 'repository:team/app:pull');
    await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(t) });
    await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(`${t}x`) });
    const all = logged.join('');
    assert.ok(all.length > 0, 'the log captured something');
    for (const [u, p] of Object.entries(PASSWORDS)) {
      assert.ok(!all.includes(p), `password of ${u} in the log`);
      assert.ok(!all.includes(Buffer.from(`${u}:${p}`).toString('base64')), `Basic credentials of ${u} in the log`);
    }
    assert.ok(!all.includes(t.split('.')[2]!), 'a token signature in the log');
  });

  test('a reload removes a user at once: their unexpired token stops working', async () => {
    const t = await token(reg, 'bob', 'repository:team/app:pull');
    assert.equal((await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(t) })).status, 200);
    const { bob: _gone, ...rest } = PASSWORDS;
    const r2 = await startTestRegistry({ data: tempDir(), auth: writeAuth(tempDir('nixreg-auth2-'), AUTH, rest) });
    try {
      // Another registry's data dir holds another key: our token means nothing there.
      assertError(await http(r2.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(t) }), 401, 'UNAUTHORIZED');
    } finally { await r2.close(); rmSync(r2.data, { recursive: true, force: true }); }
    writeAuth(dir, AUTH, rest);
    const running = reg;
    assert.deepEqual(running.reload().failed, []);
    assertError(await http(reg.url, 'GET', '/v2/team/app/tags/list', { headers: bearer(t) }), 401, 'UNAUTHORIZED');
    assertError(await http(reg.url, 'GET', '/v2/', { headers: basic('bob') }), 401, 'UNAUTHORIZED');
    // A faulty file is reported and the one in force stays.
    writeFileSync(join(dir, 'auth.yaml'), 'accessControl: { repositories: { "x": { policies: [{ actions: [fly] }] } } }\n');
    const bad = running.reload();
    assert.equal(bad.failed.length, 1);
    assert.match(bad.failed[0]!, /accessControl\.repositories\.x\.policies\[0\]\.actions\[0\]/);
    assert.equal((await http(reg.url, 'GET', '/v2/', { headers: basic('alice') })).status, 200);
    writeAuth(dir);
    assert.deepEqual(running.reload().failed, []);
  });
});
