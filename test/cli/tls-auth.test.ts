// Issue 10 from the operator's side: `nixreg serve --tls-cert --tls-key --auth` as a
// process. A faulty auth file or certificate stops the start with one line and exit 2;
// SIGHUP re-reads the certificate without dropping the connections that are open, and
// re-reads the auth file; a faulty file on SIGHUP is logged and the old one kept.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request, type RequestOptions } from 'node:https';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { tempDir } from '../helpers/registry.js';
import { run } from '../helpers/exec.js';
import { basicAuth, writeAuth } from '../helpers/auth.js';
import { cleanEnv, reap, spawnCli, type CliProcess } from './spawn.js';

const dirs: string[] = [];
const procs: CliProcess[] = [];
after(async () => {
  for (const p of procs) await reap(p);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function dir(): string {
  const d = tempDir('nixreg-tls-');
  dirs.push(d);
  return d;
}

/** A self-signed certificate for 127.0.0.1 with `cn`, made by openssl. */
async function selfSigned(d: string, cn: string): Promise<{ cert: string; key: string }> {
  const cert = join(d, `${cn}.crt`);
  const key = join(d, `${cn}.key`);
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-subj', `/CN=${cn}`, '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-days', '2']);
  return { cert, key };
}

function get(url: string, opts: RequestOptions & { ca: Buffer }): Promise<{ status: number; body: string; peer: X509Certificate | undefined; socket: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request(url, opts, (res) => {
      // Now, not at 'end': a kept-alive socket is handed back to the agent by then.
      const socket = res.socket as unknown as { getPeerX509Certificate(): X509Certificate };
      const peer = socket.getPeerX509Certificate();
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode!, body, peer, socket }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function waitForLine(p: CliProcess, re: RegExp, from: number): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const m = re.exec(p.output().slice(from));
    if (m) return m[0];
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${re} in:\n${p.output().slice(from)}`);
}

test('a faulty auth file or certificate is one line naming the fault, exit code 2', async () => {
  const d = dir();
  const good = await selfSigned(d, 'one');
  const other = await selfSigned(d, 'two');
  const cases: [string, string[], RegExp][] = [];
  writeFileSync(join(d, 'typo.yaml'), 'accessControl:\n  repositoris: {}\n');
  cases.push(['unknown key', ['--auth', join(d, 'typo.yaml')], /accessControl: unknown key "repositoris"/]);
  writeFileSync(join(d, 'action.yaml'), 'accessControl:\n  repositories:\n    "a/**": { anonymousPolicy: [read, write] }\n');
  cases.push(['bad action', ['--auth', join(d, 'action.yaml')], /accessControl\.repositories\.a\/\*\*\.anonymousPolicy\[1\]: /]);
  writeFileSync(join(d, 'md5'), 'bob:$apr1$x$y\n');
  writeFileSync(join(d, 'md5.yaml'), 'htpasswd: md5\n');
  cases.push(['non-bcrypt htpasswd', ['--auth', join(d, 'md5.yaml')], /htpasswd file .*md5 line 1: the hash of "bob" is not bcrypt/]);
  cases.push(['missing auth file', ['--auth', join(d, 'nope.yaml')], /auth file .*nope\.yaml: ENOENT/]);
  cases.push(['mismatched key', ['--tls-cert', good.cert, '--tls-key', other.key], /TLS certificate .* and key .*: /]);
  cases.push(['cert without key', ['--tls-cert', good.cert], /--tls-cert and --tls-key go together/]);
  for (const [what, args, re] of cases) {
    const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(d, 'data'), ...args], { env: cleanEnv() });
    procs.push(p);
    assert.equal(await p.exited, 2, `${what}: ${p.output()}`);
    const lines = p.output().trim().split('\n');
    assert.equal(lines.length, 1, `${what}: one line, got:\n${p.output()}`);
    assert.match(lines[0]!, re, what);
  }
});

test('SIGHUP re-reads the certificate: open connections go on, new ones get the new certificate', { timeout: 60_000 }, async () => {
  const d = dir();
  const first = await selfSigned(d, 'first');
  const second = await selfSigned(d, 'second');
  const live = { cert: join(d, 'live.crt'), key: join(d, 'live.key') };
  writeFileSync(live.cert, readFileSync(first.cert));
  writeFileSync(live.key, readFileSync(first.key));
  const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(d, 'data'), '--tls-cert', live.cert, '--tls-key', live.key], { env: cleanEnv() });
  procs.push(p);
  const { url } = await p.listening;
  assert.match(url, /^https:\/\//);
  const ca = Buffer.concat([readFileSync(first.cert), readFileSync(second.cert)]);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const before = await get(`${url}/v2/`, { ca, agent });
  assert.equal(before.status, 200);
  assert.equal(before.peer?.subject, 'CN=first');

  writeFileSync(live.cert, readFileSync(second.cert));
  writeFileSync(live.key, readFileSync(second.key));
  const mark = p.output().length;
  p.kill('SIGHUP');
  await waitForLine(p, /"msg":"reloaded"/, mark);

  const kept = await get(`${url}/v2/`, { ca, agent });
  assert.equal(kept.status, 200);
  // The same TLS connection, so still under the first certificate.
  assert.equal(kept.socket, before.socket, 'the kept-alive connection was not dropped');
  const fresh = await get(`${url}/v2/`, { ca, agent: false });
  assert.equal(fresh.peer?.subject, 'CN=second');

  // A broken certificate on SIGHUP is logged; the one in force stays.
  writeFileSync(live.cert, 'not a certificate');
  const mark2 = p.output().length;
  p.kill('SIGHUP');
  await waitForLine(p, /reload failed, keeping the previous configuration: certificate/, mark2);
  assert.equal((await get(`${url}/v2/`, { ca, agent: false })).peer?.subject, 'CN=second');
  assert.equal(p.child.exitCode, null, 'still running');
  agent.destroy();
});

test('SIGHUP re-reads the auth file: a user added is let in without a restart', { timeout: 60_000 }, async () => {
  const d = dir();
  const tls = await selfSigned(d, 'auth');
  const users = { alice: 'pw-alice' };
  const auth = writeAuth(d, 'htpasswd: ./htpasswd\naccessControl: { repositories: { "**": { defaultPolicy: [read] } } }\n', users);
  const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(d, 'data')], {
    env: cleanEnv({ NIXREG_TLS_CERT: tls.cert, NIXREG_TLS_KEY: tls.key, NIXREG_AUTH: auth }),
  });
  procs.push(p);
  const { url } = await p.listening;
  const ca = readFileSync(tls.cert);
  const as = (u: string, pw: string) => ({ ca, agent: false as const, headers: basicAuth(u, pw) });
  assert.equal((await get(`${url}/v2/`, as('alice', 'pw-alice'))).status, 200);
  const anon = await get(`${url}/v2/`, { ca, agent: false });
  assert.equal(anon.status, 401);
  assert.equal((await get(`${url}/v2/`, as('dave', 'pw-dave'))).status, 401);
  writeAuth(d, 'htpasswd: ./htpasswd\naccessControl: { repositories: { "**": { defaultPolicy: [read] } } }\n', { ...users, dave: 'pw-dave' });
  const mark = p.output().length;
  p.kill('SIGHUP');
  await waitForLine(p, /"msg":"reloaded"/, mark);
  assert.equal((await get(`${url}/v2/`, as('dave', 'pw-dave'))).status, 200);
  // The failed login above was logged without its password.
  assert.match(p.output(), /"user":"dave".*"msg":"failed login"/);
  assert.ok(!p.output().includes('pw-dave'));
});
