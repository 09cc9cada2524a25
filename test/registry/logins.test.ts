// Issue 22, logins against a real `nixreg serve --auth`: failed logins lock a user out
// from one address, not the address (behind a proxy or NAT, one address is many
// people), and a wider count per address stops guessing at many users; a password
// changed in the htpasswd file and re-read on SIGHUP revokes the tokens issued under
// the old one. Clients connect from several loopback addresses (127.0.0.1-3).
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { basicAuth, writeAuth } from '../helpers/auth.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';

const PASSWORDS = { alice: 'alice-pw-41d2', bob: 'bob-pw-0c7e', carol: 'carol-pw-9a35' };
const AUTH = `htpasswd: ./htpasswd
accessControl: { repositories: { "**": { defaultPolicy: [read] } } }
failedLogins: { max: 3, perAddress: 6, window: 600 }
`;

let dir: string;
let reg: RegistryProcess;
before(async () => {
  dir = tempDir('nixreg-logins-');
  reg = await spawnRegistry({ args: ['--auth', writeAuth(dir, AUTH, PASSWORDS)] });
});
after(async () => {
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
  if (reg) rmSync(reg.data, { recursive: true, force: true });
});

interface Answer { status: number; headers: Record<string, string | string[] | undefined>; body: string }

/** GET `path` from the loopback address `from`. */
function get(path: string, headers: Record<string, string>, from = '127.0.0.1'): Promise<Answer> {
  const u = new URL(reg.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, headers, localAddress: from, agent: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const as = (user: keyof typeof PASSWORDS | string, pw = (PASSWORDS as Record<string, string>)[user] ?? 'x') => basicAuth(user, pw);

test('a user locked out from one address: others there, and the user elsewhere, still sign in; guesses at many users lock the address', async () => {
  for (let i = 0; i < 3; i++) assert.equal((await get('/v2/', as('alice', `wrong${i}`))).status, 401);
  const locked = await get('/v2/', as('alice'));
  assert.equal(locked.status, 429, locked.body);
  assert.ok(Number(locked.headers['retry-after']) >= 1);
  assert.match(locked.body, /too many failed logins of this user from this address/);
  assert.equal((await get('/v2/', as('bob'))).status, 200, 'another user from the same address');
  assert.equal((await get('/v2/', as('alice'), '127.0.0.2')).status, 200, 'the locked user from another address');
  assert.equal((await get('/token?service=nixreg', as('alice'), '127.0.0.2')).status, 200);

  // Spraying: one guess at each of six names (real or not) from one address.
  for (const user of ['u0', 'u1', 'u2', 'u3', 'bob', 'carol']) assert.equal((await get('/v2/', as(user, 'guess'), '127.0.0.3')).status, 401, user);
  const sprayed = await get('/v2/', as('carol'), '127.0.0.3');
  assert.equal(sprayed.status, 429, sprayed.body);
  assert.match(sprayed.body, /too many failed logins from this address/);
  assert.equal((await get('/v2/', as('carol'))).status, 200, 'carol from an address that did not spray');
  assert.match(reg.logs(), /"user":"carol","client":"127\.0\.0\.3","throttled":true,"locked":"address"/);
});

test('a password changed in htpasswd and re-read on SIGHUP revokes the tokens issued under the old one', { timeout: 30_000 }, async () => {
  const token = async (user: string, pw: string) => {
    const r = await get('/token?service=nixreg&scope=repository:any/thing:pull', basicAuth(user, pw), '127.0.0.2');
    assert.equal(r.status, 200, r.body);
    return { authorization: `Bearer ${JSON.parse(r.body).token as string}` };
  };
  const alice = await token('alice', PASSWORDS.alice);
  const bob = await token('bob', PASSWORDS.bob);
  assert.equal((await get('/v2/any/thing/tags/list', alice)).status, 404, 'the token is good (nothing there to list)');

  // alice's line alone changes: bob's entry, and so his token, stay as they were.
  const htpasswd = join(dir, 'htpasswd');
  const lines = readFileSync(htpasswd, 'utf8').split('\n').map((l) => (l.startsWith('alice:') ? `alice:${bcrypt.hashSync('alice-new-pw', 5)}` : l));
  writeFileSync(htpasswd, lines.join('\n'));
  const mark = reg.logs().length;
  reg.child.kill('SIGHUP');
  for (let i = 0; i < 200 && !reg.logs().slice(mark).includes('"msg":"reloaded"'); i++) await new Promise((r) => setTimeout(r, 25));
  assert.match(reg.logs().slice(mark), /"msg":"reloaded"/);

  const revoked = await get('/v2/any/thing/tags/list', alice);
  assert.equal(revoked.status, 401, revoked.body);
  assert.match(String(revoked.headers['www-authenticate']), /error="invalid_token"/);
  assert.equal((await get('/v2/any/thing/tags/list', bob)).status, 404, 'bob\'s token still works');
  assert.equal((await get('/v2/', basicAuth('alice', PASSWORDS.alice), '127.0.0.2')).status, 401, 'the old password');
  assert.equal((await get('/v2/', basicAuth('alice', 'alice-new-pw'), '127.0.0.2')).status, 200, 'the new password');
  assert.equal((await get('/v2/any/thing/tags/list', await token('alice', 'alice-new-pw'))).status, 404, 'a token under the new password');
});
