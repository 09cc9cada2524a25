// Issue 22: one slow or greedy client must not hold the others up. Against a real
// `nixreg serve`, each test reproduces an attack from one loopback address (another
// address is another client): manifest PUTs that trickle a byte at a time, a body kept
// coming for ever, and one address opening every connection the server allows.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, http, pushBlob, sha256 } from '../api/util.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MiB = 1024 * 1024;

/**
 * A PUT from `localAddress` that declares `length` bytes and sends them `every` ms a
 * byte at a time (never quiet for --body-timeout), until the server answers or `stop`.
 */
function tricklePut(url: string, path: string, length: number, every: number, localAddress: string) {
  const u = new URL(url);
  const t0 = Date.now();
  let answer: (r: { status: number; body: string; ms: number }) => void;
  const answered = new Promise<{ status: number; body: string; ms: number }>((r) => { answer = r; });
  const req = request({
    host: u.hostname, port: u.port, localAddress, agent: false, method: 'PUT', path,
    headers: { 'content-type': OCI_MANIFEST, 'content-length': String(length) },
  }, (res) => {
    let body = '';
    res.on('data', (c: Buffer) => { body += c.toString(); });
    res.on('end', () => { clearInterval(timer); answer({ status: res.statusCode!, body, ms: Date.now() - t0 }); });
  });
  req.on('error', () => { clearInterval(timer); answer({ status: 0, body: '', ms: Date.now() - t0 }); });
  let sent = 0;
  const timer = setInterval(() => { if (sent < length - 1 && !req.destroyed) { req.write(' '); sent++; } }, every);
  req.write(' ');
  return { answered, stop: () => { clearInterval(timer); req.destroy(); } };
}

/** One whole request from `localAddress` on a connection of its own. */
function send(url: string, method: string, path: string, localAddress: string, headers: Record<string, string> = {}, body?: Buffer) {
  const u = new URL(url);
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, localAddress, agent: false, method, path, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode!, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function open(url: string, localAddress: string): Promise<Socket> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect({ port: Number(u.port), host: u.hostname, localAddress }, () => resolve(s));
    s.once('error', reject);
  });
}

interface Stats {
  server: {
    connections: { open: number; refused: number; refusedPerClient?: number; clients?: number };
    manifestMemory: { used: number; refused: number; refusedPerClient?: number; timedOut?: number; perClient?: number };
  };
}

describe('slow and greedy clients', () => {
  let reg: RegistryProcess;
  const images = tempDir('nixreg-slow-images-');
  before(async () => {
    reg = await spawnRegistry({
      images,
      // A budget of four largest manifests, a quarter (one) per client; bodies must
      // arrive within 5 s, and may be quiet for 3 s.
      args: ['--manifest-memory', '16', '--max-connections', '64', '--body-timeout', '3'],
      env: { NIXREG_MAX_CONNECTIONS_PER_CLIENT: '8', NIXREG_MANIFEST_TIMEOUT: '5' },
    });
  });
  after(async () => {
    await reg.stop();
    rmSync(reg.data, { recursive: true, force: true });
    rmSync(images, { recursive: true, force: true });
  });

  const stats = async () => (await http(reg.url, 'GET', '/nixreg/stats')).json() as Stats;

  test('manifest PUTs that declare 4 MiB and trickle leave the memory budget to everyone else', async () => {
    // A real image for the other client, pushed before the attack starts.
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    const layer = Buffer.from('a layer');
    await pushBlob(reg.url, 'other/app', config);
    await pushBlob(reg.url, 'other/app', layer);
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
      layers: [{ mediaType: OCI_LAYER, digest: sha256(layer), size: layer.length }],
    }));
    // Six declared 4 MiB bodies, a byte every 300 ms: enough to reserve the whole
    // 16 MiB budget when declared bytes are reserved, and never quiet for --body-timeout.
    const attack = Array.from({ length: 6 }, (_, i) => tricklePut(reg.url, `/v2/attack/r${i}/manifests/x`, 4 * MiB, 300, '127.0.0.2'));
    try {
      await sleep(500);
      const put = await send(reg.url, 'PUT', '/v2/other/app/manifests/v1', '127.0.0.3', { 'content-type': OCI_MANIFEST }, manifest);
      assert.equal(put.status, 201, `the other client's push: ${put.status} ${put.body}`);
      const m = (await stats()).server.manifestMemory;
      // One of the six holds the attacker's share; the rest were refused before being read.
      assert.ok(m.used <= 64 * 1024, `${m.used} bytes held for trickles`);
      assert.equal(m.refusedPerClient, 5);
      assert.equal(m.perClient, 4 * MiB);
      const refused = await Promise.race([Promise.all(attack.slice(1).map((a) => a.answered)), sleep(2000).then(() => [])]);
      assert.equal(refused.length, 5, 'the attacker\'s other bodies were not answered');
      for (const r of refused) {
        assert.equal(r.status, 429, r.body);
        assert.match(r.body, /"code":"TOOMANYREQUESTS"/);
      }
    } finally {
      for (const a of attack) a.stop();
    }
  });

  test('a manifest body still coming after --manifest-timeout is cut with 408 and an OCI error', { timeout: 20_000 }, async () => {
    // A byte every 300 ms: never quiet for --body-timeout (3 s), so only a bound on the
    // whole body ends it.
    const slow = tricklePut(reg.url, '/v2/slow/one/manifests/x', 100_000, 300, '127.0.0.4');
    const r = await Promise.race([slow.answered, sleep(12_000).then(() => undefined)]);
    slow.stop();
    assert.ok(r, 'the trickle was still being read after 12 s');
    assert.equal(r.status, 408, r.body);
    assert.match(r.body, /"code":"UNSUPPORTED".*did not arrive in full within 5 s/);
    assert.ok(r.ms >= 4500 && r.ms < 9000, `answered after ${r.ms} ms`);
    const m = (await stats()).server.manifestMemory;
    assert.ok((m.timedOut ?? 0) >= 1);
    assert.equal(m.used, 0);
  });

  test('one address cannot take every connection: past its share it gets 503, others are served', async () => {
    await sleep(300); // the previous tests' connections are closed by now
    const held: Socket[] = [];
    const answers = new Map<Socket, string>();
    try {
      // As many as --max-connections allows in all.
      for (let i = 0; i < 64; i++) {
        const s = await open(reg.url, '127.0.0.2');
        s.on('error', () => {});
        s.on('data', (c: Buffer) => answers.set(s, (answers.get(s) ?? '') + c.toString()));
        held.push(s);
      }
      await sleep(500);
      // Another client is served.
      const other = await send(reg.url, 'GET', '/v2/', '127.0.0.3');
      assert.equal(other.status, 200, other.body);
      const refused = [...answers.values()];
      assert.equal(refused.length, 64 - 8, `${refused.length} of 64 connections refused`);
      for (const a of refused) {
        assert.match(a, /^HTTP\/1\.1 503/);
        assert.match(a, /Retry-After: 1/);
        assert.match(a, /"code":"UNAVAILABLE".*too many connections from this address/);
      }
      const c = (await stats()).server.connections;
      assert.ok((c.refusedPerClient ?? 0) >= 56, JSON.stringify(c));
      assert.equal(c.refused, 0);
    } finally {
      for (const s of held) s.destroy();
    }
    // Its connections gone, the address is served again.
    await sleep(300);
    assert.equal((await send(reg.url, 'GET', '/v2/', '127.0.0.2')).status, 200);
  });
});
