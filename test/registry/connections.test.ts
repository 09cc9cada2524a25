// Issue 9, attack 1: connections that send nothing, half-sent headers, stalled bodies,
// stalled readers, idle keep-alive sockets, and more connections than the server can
// hold. Each is bounded; slow but moving transfers and long builds are not cut.
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { http, pushBlob, sha256, startReg, type TestRegistry } from '../api/util.js';

const LIMITS = { headersMs: 1000, idleMs: 1000, bodyMs: 1500, maxConnections: 20, lingerMs: 2000 };

function open(url: string): Promise<Socket> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(u.port), u.hostname, () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves with how long the server took to close `s`, and everything it sent. */
function closed(s: Socket): Promise<{ ms: number; data: string }> {
  const t0 = Date.now();
  let data = '';
  s.on('data', (c: Buffer) => { data += c.toString(); });
  s.on('error', () => {});
  return new Promise((resolve) => s.once('close', () => resolve({ ms: Date.now() - t0, data })));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('connection bounds', () => {
  let reg: TestRegistry;
  before(async () => { reg = await startReg({ limits: LIMITS }); });
  after(async () => { await reg.destroy(); });

  test('a socket that sends nothing is closed after the header timeout', async () => {
    const s = await open(reg.url);
    const { ms } = await closed(s);
    assert.ok(ms >= 900 && ms < 4000, `closed after ${ms} ms`);
  });

  test('half-sent headers, even trickled, are closed after the header timeout with 408', async () => {
    const s = await open(reg.url);
    const done = closed(s);
    s.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n');
    // One header byte every 200 ms keeps the socket active, but the headers never end.
    const trickle = setInterval(() => { if (!s.destroyed) s.write('X'); }, 200);
    const { ms, data } = await done;
    clearInterval(trickle);
    assert.ok(ms < 4000, `closed after ${ms} ms`);
    assert.match(data, /^HTTP\/1\.1 408/);
  });

  test('an idle keep-alive connection is closed after the idle timeout', async () => {
    const s = await open(reg.url);
    const done = closed(s);
    s.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n');
    const { ms, data } = await done;
    assert.match(data, /^HTTP\/1\.1 200/);
    assert.ok(ms >= 900 && ms < 4000, `closed after ${ms} ms`);
  });

  test('a request body that stops making progress is aborted; the bytes received stay', async () => {
    const post = await http(reg.url, 'POST', '/v2/slow/body/blobs/uploads/');
    const loc = post.headers.get('location')!;
    const s = await open(reg.url);
    const done = closed(s);
    s.write(`PATCH ${loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n`);
    s.write(Buffer.alloc(100, 1));
    const { ms } = await done;
    assert.ok(ms >= 1400 && ms < 5000, `closed after ${ms} ms`);
    // The session is intact and resumable from what arrived.
    const st = await http(reg.url, 'GET', loc);
    assert.equal(st.status, 204);
    assert.equal(st.headers.get('range'), '0-99');
  });

  test('a slow but moving body is not cut, however long it takes in all', async () => {
    const post = await http(reg.url, 'POST', '/v2/slow/moving/blobs/uploads/');
    const loc = post.headers.get('location')!;
    const body = Buffer.alloc(16, 7);
    const s = await open(reg.url);
    let data = '';
    s.on('data', (c: Buffer) => { data += c.toString(); });
    s.write(`PUT ${loc}?digest=${sha256(body)} HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`);
    // 16 bytes over ~4 s: more than twice the body timeout in all, never quiet for long.
    for (const b of body) { s.write(Buffer.from([b])); await sleep(250); }
    for (let i = 0; i < 50 && !data.includes('\r\n\r\n'); i++) await sleep(50);
    s.destroy();
    assert.match(data, /^HTTP\/1\.1 201/);
  });

  test('a client that stops reading a response is cut off after the body timeout', async () => {
    const blob = Buffer.alloc(64 * 1024 * 1024, 3);
    const digest = await pushBlob(reg.url, 'slow/reader', blob);
    const s = await open(reg.url);
    const done = new Promise<void>((r) => s.once('close', () => r()));
    s.on('error', () => {});
    // Stop reading at the first bytes: a fast loopback could otherwise take all 64 MiB
    // before a timer-based pause, and there would be nothing left to stall.
    s.once('data', () => s.pause());
    s.write(`GET /v2/slow/reader/blobs/${digest} HTTP/1.1\r\nHost: x\r\n\r\n`);
    // Never reading again: the server must not hold the socket and the file forever.
    const t0 = Date.now();
    const counters = async () => ((await http(reg.url, 'GET', '/nixreg/stats')).json() as { server: { connections: { stalled: number } } }).server.connections;
    const stalledBefore = (await counters()).stalled;
    let stalled = stalledBefore;
    while (stalled === stalledBefore && Date.now() - t0 < 8000) { await sleep(200); stalled = (await counters()).stalled; }
    assert.ok(stalled > stalledBefore, 'the stalled download was never cut');
    s.destroy();
    await done;
  });

  // skopeo sends `Connection: close` on each PATCH and reads the answer only once its
  // write fails: a server that closed at once after an early 507 reset the connection,
  // and skopeo said "broken pipe" instead of what the 507 said.
  test('an answer before the body has come, on a connection that must close, reaches a client that reads only after sending', { timeout: 20_000 }, async () => {
    const s = await open(reg.url);
    s.pause();
    s.on('error', () => {});
    const write = (b: Buffer) => new Promise<boolean>((r) => s.write(b, (err) => r(!err)));
    const size = 8 * 1024 * 1024;
    await write(Buffer.from(`PATCH /v2/linger/a/blobs/uploads/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${size}\r\n\r\n`));
    await write(Buffer.alloc(1024 * 1024));
    await sleep(300); // the server has answered 404 by now
    let sent = 1024 * 1024;
    while (sent < size && await write(Buffer.alloc(256 * 1024))) sent += 256 * 1024;
    assert.equal(sent, size, 'the server cut the body off');
    const { data } = await closed(s.resume());
    assert.match(data, /^HTTP\/1\.1 404/);
    assert.match(data, /BLOB_UPLOAD_UNKNOWN/);
  });

  test('a client that goes on sending a body after the answer is cut off after the linger time', { timeout: 20_000 }, async () => {
    const s = await open(reg.url);
    s.pause();
    const done = closed(s);
    s.write(`PATCH /v2/linger/b/blobs/uploads/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ${2 ** 40}\r\n\r\n`);
    const t0 = Date.now();
    const pump = setInterval(() => { if (!s.destroyed) s.write(Buffer.alloc(64 * 1024)); }, 20);
    const { ms } = await done;
    clearInterval(pump);
    assert.ok(ms >= 1500 && ms < 5000, `closed after ${ms} ms`);
    assert.ok(Date.now() - t0 < 5000);
  });

  test('beyond --max-connections new connections get 503 and are closed; others keep working', async () => {
    const held: Socket[] = [];
    // The keep-alive sockets of earlier requests in this file may still be open: fill up.
    for (let i = 0; i < LIMITS.maxConnections + 5; i++) held.push(await open(reg.url));
    const extra = await open(reg.url);
    const { data } = await closed(extra);
    assert.match(data, /^HTTP\/1\.1 503/);
    assert.match(data, /"code":"UNAVAILABLE"/);
    assert.match(data, /Retry-After: 1/);
    for (const s of held) s.destroy();
    await sleep(100);
    const r = await http(reg.url, 'GET', '/v2/');
    assert.equal(r.status, 200);
  });
});
