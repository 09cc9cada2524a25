// --trusted-proxies: behind a load balancer every request comes from the balancer's
// address, so per-client bounds and login lockouts would treat all clients as one. With
// the balancer trusted, its X-Forwarded-For names the client; from anyone else the header
// is ignored, so a client cannot pick the address it is counted as.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { TrustedProxies, parseTrustedProxies } from '../../src/registry/client-address.js';
import { basicAuth, writeAuth } from '../helpers/auth.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';

describe('TrustedProxies', () => {
  const t = parseTrustedProxies('127.0.0.1, 10.0.0.0/8,fd00::/8');

  test('the rightmost hop that is not a trusted proxy is the client; the rest is the client\'s own say', () => {
    assert.equal(t.clientOf('127.0.0.1', '203.0.113.7'), '203.0.113.7');
    assert.equal(t.clientOf('127.0.0.1', '1.2.3.4, 203.0.113.7, 10.1.2.3'), '203.0.113.7');
    assert.equal(t.clientOf('::ffff:127.0.0.1', ['1.2.3.4', '::ffff:198.51.100.1']), '198.51.100.1');
    assert.equal(t.clientOf('10.9.9.9', '10.0.0.1, 10.0.0.2'), '10.0.0.1', 'all hops ours: the leftmost');
  });

  test('an untrusted peer, a header that does not parse, or one too long, leave the peer', () => {
    assert.equal(t.clientOf('192.0.2.1', '203.0.113.7'), '192.0.2.1');
    assert.equal(t.clientOf('127.0.0.1', 'unknown, 203.0.113.7'), '127.0.0.1');
    assert.equal(t.clientOf('127.0.0.1', ''), '127.0.0.1');
    assert.equal(t.clientOf('127.0.0.1', Array(40).fill('203.0.113.7').join(',')), '127.0.0.1');
    assert.equal(t.clientOf('127.0.0.1', undefined), '127.0.0.1');
    assert.equal(parseTrustedProxies('').clientOf('127.0.0.1', '203.0.113.7'), '127.0.0.1', 'none trusted by default');
  });

  test('bad entries are refused at start, naming the flag', () => {
    for (const bad of ['10.0.0.0/33', 'proxy.local', '10.0.0.0/8/1', 'fd00::/129']) {
      assert.throws(() => new TrustedProxies([bad]), /--trusted-proxies takes addresses and CIDR blocks/);
    }
  });
});

describe('a registry behind a trusted proxy', () => {
  const PASSWORDS = { alice: 'alice-pw-41d2', bob: 'bob-pw-0c7e' };
  let dir: string;
  let regs: { trusting: RegistryProcess; plain: RegistryProcess };
  before(async () => {
    dir = tempDir('nixreg-proxies-');
    const auth = writeAuth(dir, `htpasswd: ./htpasswd
accessControl: { repositories: { "**": { defaultPolicy: [read] } } }
failedLogins: { max: 3, perAddress: 100, window: 600 }
`, PASSWORDS);
    const args = ['--auth', auth, '--max-connections-per-client', '3'];
    const [trusting, plain] = await Promise.all([
      spawnRegistry({ args: [...args, '--trusted-proxies', '127.0.0.1'] }),
      spawnRegistry({ args }),
    ]);
    regs = { trusting, plain };
  });
  after(async () => {
    for (const r of Object.values(regs ?? {})) { await r.stop(); rmSync(r.data, { recursive: true, force: true }); }
    rmSync(dir, { recursive: true, force: true });
  });

  function get(reg: RegistryProcess, headers: Record<string, string>): Promise<number> {
    const u = new URL(reg.url);
    return new Promise((resolve, reject) => {
      const req = request({ host: u.hostname, port: u.port, path: '/v2/', headers, agent: false }, (res) => { res.resume(); resolve(res.statusCode!); });
      req.on('error', reject);
      req.end();
    });
  }

  test('a lockout falls on the client the proxy names, not on everyone behind it; the header from others is ignored', async () => {
    const via = (client: string) => ({ 'X-Forwarded-For': client });
    for (const reg of [regs.trusting, regs.plain]) {
      for (let i = 0; i < 3; i++) assert.equal(await get(reg, { ...basicAuth('alice', `wrong${i}`), ...via('203.0.113.7') }), 401);
      assert.equal(await get(reg, { ...basicAuth('alice', PASSWORDS.alice), ...via('203.0.113.7') }), 429, 'the guesser is locked out');
    }
    assert.equal(await get(regs.trusting, { ...basicAuth('alice', PASSWORDS.alice), ...via('198.51.100.1') }), 200,
      'alice from another client behind the proxy still signs in');
    assert.equal(await get(regs.plain, { ...basicAuth('alice', PASSWORDS.alice), ...via('198.51.100.1') }), 429,
      'an untrusted peer cannot name another address to escape its lockout');
  });

  test('the proxy may hold more connections than one client\'s share', async () => {
    const open = async (reg: RegistryProcess, n: number): Promise<{ socks: Socket[]; refused: number }> => {
      const u = new URL(reg.url);
      const socks: Socket[] = [];
      let refused = 0;
      for (let i = 0; i < n; i++) {
        const s = connect(Number(u.port), u.hostname);
        // A refused connection is answered at once with a 503, unasked.
        s.once('data', (d: Buffer) => { if (d.toString().startsWith('HTTP/1.1 503')) refused++; });
        s.on('error', () => {});
        await new Promise((r) => s.once('connect', r));
        socks.push(s);
      }
      await new Promise((r) => setTimeout(r, 300));
      return { socks, refused };
    };
    for (const [reg, refusedAtLeast] of [[regs.trusting, 0], [regs.plain, 3]] as const) {
      const { socks, refused } = await open(reg, 6);
      try {
        if (refusedAtLeast === 0) assert.equal(refused, 0, 'the trusted proxy is not held to a client\'s share');
        else assert.ok(refused >= refusedAtLeast, `${refused} of 6 refused past the share of 3`);
        assert.equal(await get(reg, {}), refusedAtLeast === 0 ? 401 : 503);
      } finally { for (const s of socks) s.destroy(); }
    }
  });
});
