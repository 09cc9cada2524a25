// Issue 22, item 2: an upload body trickled below --min-upload-rate (a few bytes at a
// time, never quiet for --body-timeout) is cut after the window instead of holding its
// upload and connection for ever: the answer is 408 with the upload's Range, what arrived
// is kept, and the upload can be resumed and finished with the right digest. A body that
// keeps above the rate, however slowly, is not cut. Before: the chunk never ended, and
// the client's own finish got 416.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { spawnRegistry, type RegistryProcess } from '../helpers/registry.js';
import { http, sha256 } from '../api/util.js';

const WINDOW_S = 2;

interface Answer { status: number; headers: Record<string, string | string[] | undefined>; body: string; sent: number; ms: number }

/**
 * Sends `head` at once, then `drip` bytes of `rest` every `everyMs` until the server
 * answers (or `giveUpMs` passes: status 0). Returns the answer and the bytes sent.
 */
function trickle(url: string, method: string, path: string, headers: Record<string, string>,
  head: Buffer, rest: Buffer, drip: number, everyMs: number, giveUpMs = 15_000): Promise<Answer> {
  const u = new URL(url);
  const t0 = performance.now();
  return new Promise((resolve) => {
    let sent = 0;
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (a: Omit<Answer, 'sent' | 'ms'>) => {
      if (done) return;
      done = true;
      clearInterval(timer);
      clearTimeout(giveUp);
      req.destroy();
      resolve({ ...a, sent, ms: performance.now() - t0 });
    };
    const req = request({ host: u.hostname, port: u.port, method, path, headers, agent: false }, (res) => {
      clearInterval(timer);
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => finish({ status: res.statusCode!, headers: res.headers, body }));
      res.on('error', () => finish({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', () => finish({ status: 0, headers: {}, body: '' }));
    const giveUp = setTimeout(() => finish({ status: 0, headers: {}, body: 'no answer' }), giveUpMs);
    req.flushHeaders();
    req.write(head);
    sent = head.length;
    let off = 0;
    timer = setInterval(() => {
      if (off >= rest.length) { clearInterval(timer); req.end(); return; }
      const piece = rest.subarray(off, off + drip);
      req.write(piece);
      off += piece.length;
      sent += piece.length;
    }, everyMs);
  });
}

/** The end offset of a Range header `0-<last>` (bytes held = last + 1). */
function held(range: string | string[] | null | undefined): number {
  const m = /^0-(\d+)$/.exec(String(range));
  assert.ok(m, `Range ${range}`);
  return Number(m[1]) + 1;
}

describe('--min-upload-rate', () => {
  let reg: RegistryProcess;
  before(async () => {
    reg = await spawnRegistry({ args: ['--min-upload-rate', '1KiB', '--upload-rate-window', String(WINDOW_S), '--body-timeout', '60'] });
  });
  after(async () => { await reg.stop(); rmSync(reg.data, { recursive: true, force: true }); });

  async function start(repo: string): Promise<string> {
    const r = await http(reg.url, 'POST', `/v2/${repo}/blobs/uploads/`);
    assert.equal(r.status, 202);
    return r.headers.get('location')!;
  }

  function assertCut(a: Answer, what: string) {
    assert.equal(a.status, 408, `${what}: ${a.status} ${a.body}`);
    assert.equal(JSON.parse(a.body).errors[0].code, 'BLOB_UPLOAD_INVALID');
    assert.equal(a.headers.connection, 'close');
    // Cut after its first slow window: not before it, and not much after (a window of grace
    // for the first, fast one, and one for a loaded machine).
    assert.ok(a.ms >= WINDOW_S * 1000 && a.ms < 4 * WINDOW_S * 1000, `${what}: answered after ${a.ms.toFixed(0)} ms`);
  }

  test('a trickled PATCH is cut after the window; what arrived is kept, and the upload resumes and finishes', async () => {
    const blob = randomBytes(20_000);
    const loc = await start('rate/patch');
    // 5,000 bytes at once, then 10 bytes every 250 ms: 40 B/s, never quiet for long.
    const a = await trickle(reg.url, 'PATCH', loc, { 'Content-Type': 'application/octet-stream' },
      blob.subarray(0, 5000), blob.subarray(5000), 10, 250);
    assertCut(a, 'PATCH');
    const kept = held(a.headers.range);
    assert.ok(kept >= 5000 && kept <= a.sent, `kept ${kept} of ${a.sent} bytes sent`);
    // The upload is free again: its status tells where it stands, and it goes on from there.
    const status = await http(reg.url, 'GET', loc);
    assert.equal(status.status, 204);
    assert.equal(held(status.headers.get('range')), kept);
    const rest = await http(reg.url, 'PATCH', loc, {
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${kept}-${blob.length - 1}` }, body: blob.subarray(kept),
    });
    assert.equal(rest.status, 202, rest.text());
    const fin = await http(reg.url, 'PUT', `${loc}?digest=${sha256(blob)}`);
    assert.equal(fin.status, 201, fin.text());
    const got = await http(reg.url, 'GET', `/v2/rate/patch/blobs/${sha256(blob)}`);
    assert.deepEqual(got.body, blob);
  });

  test('a trickled finish (PUT with a body) is cut the same way; the upload is not finished, and finishes later', async () => {
    const blob = randomBytes(12_000);
    const loc = await start('rate/put');
    const a = await trickle(reg.url, 'PUT', `${loc}?digest=${sha256(blob)}`,
      { 'Content-Type': 'application/octet-stream', 'Content-Length': String(blob.length) },
      blob.subarray(0, 4000), blob.subarray(4000), 10, 250);
    assertCut(a, 'PUT');
    const kept = held(a.headers.range);
    assert.ok(kept >= 4000 && kept <= a.sent, `kept ${kept} of ${a.sent} bytes sent`);
    assert.equal((await http(reg.url, 'HEAD', `/v2/rate/put/blobs/${sha256(blob)}`)).status, 404);
    const fin = await http(reg.url, 'PUT', `${loc}?digest=${sha256(blob)}`, {
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${kept}-${blob.length - 1}` }, body: blob.subarray(kept),
    });
    assert.equal(fin.status, 201, fin.text());
    assert.deepEqual((await http(reg.url, 'GET', `/v2/rate/put/blobs/${sha256(blob)}`)).body, blob);
  });

  test('a trickled monolithic POST is cut and keeps nothing; a slow body above the rate is not cut', async () => {
    const blob = randomBytes(8000);
    const mono = await trickle(reg.url, 'POST', `/v2/rate/mono/blobs/uploads/?digest=${sha256(blob)}`,
      { 'Content-Type': 'application/octet-stream', 'Content-Length': String(blob.length) },
      blob.subarray(0, 3000), blob.subarray(3000), 10, 250);
    assertCut(mono, 'POST');
    assert.equal((await http(reg.url, 'HEAD', `/v2/rate/mono/blobs/${sha256(blob)}`)).status, 404);
    // 512 bytes every 100 ms (5 KiB/s) for about three windows: slow, but above 1 KiB/s.
    const steady = randomBytes(3 * WINDOW_S * 5 * 1024);
    const loc = await start('rate/steady');
    const ok = await trickle(reg.url, 'PATCH', loc, { 'Content-Type': 'application/octet-stream' },
      Buffer.alloc(0), steady, 512, 100);
    assert.equal(ok.status, 202, ok.body);
    assert.equal(held(ok.headers.range), steady.length);
  });
});
