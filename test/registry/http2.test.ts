// HTTP/2 is not offered, on purpose: no registry client here negotiates it, and where a
// client can, it buys nothing or, with default windows, costs a lot (BENCHMARKS.md,
// bench/http2). What the server does with clients that try it anyway is pinned here:
// over TLS, ALPN picks HTTP/1.1 for a client offering both; an h2-only client is refused
// at the handshake; h2 prior knowledge or an h2c upgrade on plain HTTP gets an HTTP/1.1
// answer, never a 5xx; and the server serves the next client as before.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { connect as connectH2 } from 'node:http2';
import { request, type RequestOptions } from 'node:https';
import { connect as connectTcp } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect as connectTls, type ConnectionOptions } from 'node:tls';
import { requireTool } from '../helpers/exec.js';
import { tempDir } from '../helpers/registry.js';
import { http, startReg, type TestRegistry } from '../api/util.js';

/** A self-signed certificate for 127.0.0.1. */
function makeCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'pipe' });
  return { cert, key };
}

function get(url: string, ca: Buffer, ALPNProtocols: string[]): Promise<{ status: number; version: string; alpn: string | false }> {
  return new Promise((resolve, reject) => {
    // Handed on to tls.connect, which https's option type does not say.
    const opts: RequestOptions & ConnectionOptions = { ca, ALPNProtocols, agent: false };
    const req = request(`${url}/v2/`, opts, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, version: res.httpVersion, alpn: (res.socket as unknown as { alpnProtocol: string | false }).alpnProtocol }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Sends `bytes` on a fresh connection; resolves with everything received until close. */
function exchange(url: string, bytes: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connectTcp(Number(u.port), u.hostname, () => s.write(bytes));
    let data = '';
    s.on('data', (c: Buffer) => {
      data += c.toString('latin1');
      // One complete answer is enough: the connection may be kept alive after it.
      const head = data.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: (\d+)\r\n/i.exec(data.slice(0, head));
      if (head >= 0 && length && data.length >= head + 4 + Number(length[1])) s.end();
    });
    s.on('error', reject);
    s.on('close', () => resolve(data));
    s.setTimeout(5000, () => s.destroy());
  });
}

describe('HTTP/2 is not offered: over TLS', () => {
  let reg: TestRegistry;
  let dir: string;
  let ca: Buffer;
  before(async () => {
    await requireTool('openssl');
    dir = tempDir('nixreg-tls-');
    const tls = makeCert(dir);
    ca = readFileSync(tls.cert);
    reg = await startReg({ tls });
  });
  after(async () => {
    await reg?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a client offering h2 and http/1.1 gets HTTP/1.1', async () => {
    const r = await get(reg.url, ca, ['h2', 'http/1.1']);
    assert.equal(r.alpn, 'http/1.1');
    assert.equal(r.version, '1.1');
    assert.equal(r.status, 200);
  });

  test('a client sending no ALPN (docker, ctr, skopeo) gets HTTP/1.1', async () => {
    const r = await get(reg.url, ca, []);
    assert.equal(r.alpn, false);
    assert.equal(r.status, 200);
  });

  test('an h2-only client is refused at the handshake; the next client is served', async () => {
    const err = await new Promise<Error>((resolve) => {
      const s = connectH2(reg.url, { ca });
      s.on('error', resolve);
      s.on('connect', () => { s.close(); resolve(new Error('connected')); });
    });
    assert.match(err.message, /no application protocol|ALPN/i);
    // The same with a bare TLS socket: the alert is all it gets, no bytes of HTTP.
    const alpn = await new Promise<string | false | Error>((resolve) => {
      const u = new URL(reg.url);
      const s = connectTls({ host: u.hostname, port: Number(u.port), ca, ALPNProtocols: ['h2'] }, () => { resolve(s.alpnProtocol ?? false); s.destroy(); });
      s.on('error', resolve);
    });
    assert.ok(alpn instanceof Error, `negotiated ${String(alpn)}`);
    assert.equal((await get(reg.url, ca, ['http/1.1'])).status, 200);
  });
});

describe('HTTP/2 is not offered: over plain HTTP', () => {
  let reg: TestRegistry;
  before(async () => { reg = await startReg(); });
  after(async () => { await reg.destroy(); });

  test('h2 prior knowledge gets an HTTP/1.1 4xx and a close, never a 5xx', async () => {
    const data = await exchange(reg.url, 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    assert.match(data, /^HTTP\/1\.1 4\d\d /);
    assert.equal((await http(reg.url, 'GET', '/v2/')).status, 200);
  });

  test('an h2c upgrade request is answered over HTTP/1.1, not upgraded', async () => {
    const data = await exchange(reg.url, 'GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n');
    assert.match(data, /^HTTP\/1\.1 200 /);
    assert.doesNotMatch(data, /101 Switching/);
    assert.equal((await http(reg.url, 'GET', '/v2/')).status, 200);
  });
});
