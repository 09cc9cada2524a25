// Issue 14, part 3: blob GET bodies by sendfile(2) (src/registry/zero-copy.ts) and by
// copying (send-file.ts), on a real server each: the same cases must give the same bytes
// and the same bounds whichever way the body goes. Full GETs, ranges, HEAD, 304, a blob
// over 64 MiB, many downloads at once, keep-alive after a body, a client that stops
// reading (cut after the body timeout, and the connection really closed), a slow but
// moving one (not cut), one that leaves mid-body (descriptors back to where they were).
// The metrics say which way the bytes went, so that a sendfile path that silently fell
// back fails here; and the addon must have built: CI fails, never skips, without it.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { Agent, get, request, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { sendfileSupport } from '../../src/registry/zero-copy.js';
import { makeTls } from '../helpers/tls.js';
import { parseExposition, scrape } from '../helpers/prometheus.js';
import { http, pushBlob, sha256, startReg, type TestRegistry } from '../api/util.js';

const MiB = 1024 * 1024;
const BODY_MS = 1500;
const LIMITS = { bodyMs: BODY_MS, idleMs: 5000 };
// Over 64 MiB and not a multiple of any buffer or slice size.
const big = randomBytes(64 * MiB + 12345);
const mid = randomBytes(8 * MiB + 7);
const bigDigest = sha256(big);
const midDigest = sha256(mid);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const openFds = () => readdirSync('/proc/self/fd').length;

interface Got { status: number; headers: IncomingHttpHeaders; body: Buffer; reused: boolean }

function fetchRaw(url: string, o: { method?: string; headers?: Record<string, string>; agent?: Agent } = {}): Promise<Got> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: o.method ?? 'GET', headers: o.headers, agent: o.agent ?? false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts), reused: req.reusedSocket }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

function open(url: string): Promise<Socket> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect(Number(u.port), u.hostname, () => resolve(s));
    s.once('error', reject);
  });
}

/** Waits (at most 5 s) for the process's descriptors to be back at `baseline` or fewer. */
async function fdsBackTo(baseline: number): Promise<number> {
  let n = openFds();
  for (let i = 0; i < 100 && n > baseline; i++) { await sleep(50); n = openFds(); }
  return n;
}

async function bodyBytes(url: string): Promise<{ sendfile: number; copy: number; gauge: number }> {
  const m = await scrape(url);
  return {
    sendfile: m.value('nixreg_blob_body_bytes_total', { via: 'sendfile' }) ?? NaN,
    copy: m.value('nixreg_blob_body_bytes_total', { via: 'copy' }) ?? NaN,
    gauge: m.value('nixreg_blob_sendfile') ?? NaN,
  };
}

test('the sendfile addon is built and loads (npm ci compiles native/sendfile.c)', () => {
  const s = sendfileSupport(true);
  assert.ok(s.available, `sendfile is not available: ${s.reason}`);
});

for (const mode of ['sendfile', 'copy'] as const) {
  describe(`blob GET by ${mode}`, () => {
    let reg: TestRegistry;
    let blobUrl = '';
    let midUrl = '';
    before(async () => {
      reg = await startReg({ limits: LIMITS, sendfile: mode === 'sendfile' });
      await pushBlob(reg.url, 'bodies/big', big);
      await pushBlob(reg.url, 'bodies/big', mid);
      blobUrl = `${reg.url}/v2/bodies/big/blobs/${bigDigest}`;
      midUrl = `${reg.url}/v2/bodies/big/blobs/${midDigest}`;
    });
    after(async () => { await reg.destroy(); });

    test('a full GET of a 64 MiB+ blob is byte for byte, with its headers', async () => {
      const r = await fetchRaw(blobUrl);
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-length'], String(big.length));
      assert.equal(r.headers['docker-content-digest'], bigDigest);
      assert.equal(r.headers.etag, `"${bigDigest}"`);
      assert.equal(r.body.length, big.length);
      assert.ok(r.body.equals(big), 'the body differs from the blob');
    });

    test('ranges: first byte, middle, last byte, suffix, open end', async () => {
      const n = big.length;
      const cases: [string, number, number][] = [
        ['bytes=0-0', 0, 0],
        [`bytes=${MiB - 3}-${5 * MiB + 11}`, MiB - 3, 5 * MiB + 11],
        [`bytes=${n - 1}-${n - 1}`, n - 1, n - 1],
        ['bytes=-1000', n - 1000, n - 1],
        [`bytes=${n - 4 * MiB - 5}-`, n - 4 * MiB - 5, n - 1],
      ];
      for (const [range, s, e] of cases) {
        const r = await fetchRaw(blobUrl, { headers: { Range: range } });
        assert.equal(r.status, 206, range);
        assert.equal(r.headers['content-range'], `bytes ${s}-${e}/${n}`, range);
        assert.equal(r.headers['content-length'], String(e - s + 1), range);
        assert.ok(r.body.equals(big.subarray(s, e + 1)), `body of ${range}`);
      }
      const bad = await fetchRaw(blobUrl, { headers: { Range: `bytes=${n}-` } });
      assert.equal(bad.status, 416);
      assert.equal(bad.headers['content-range'], `bytes */${n}`);
    });

    test('HEAD has the length and no body; If-None-Match gives 304 and no body', async () => {
      const h = await fetchRaw(blobUrl, { method: 'HEAD' });
      assert.equal(h.status, 200);
      assert.equal(h.headers['content-length'], String(big.length));
      assert.equal(h.body.length, 0);
      const c = await fetchRaw(blobUrl, { headers: { 'If-None-Match': `"${bigDigest}"` } });
      assert.equal(c.status, 304);
      assert.equal(c.body.length, 0);
    });

    test('32 downloads at once each get every byte', async () => {
      const hashes = await Promise.all(Array.from({ length: 32 }, () => new Promise<string>((resolve, reject) => {
        get(midUrl, { agent: false }, (res) => {
          const h = createHash('sha256');
          res.on('data', (c: Buffer) => h.update(c));
          res.on('end', () => resolve(`sha256:${h.digest('hex')}`));
          res.on('error', reject);
        }).on('error', reject);
      })));
      assert.deepEqual(new Set(hashes), new Set([midDigest]));
    });

    test('keep-alive: the next requests on the connection of a body are answered right', async () => {
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const a = await fetchRaw(midUrl, { agent });
        const b = await fetchRaw(midUrl, { agent, headers: { Range: 'bytes=10-20' } });
        const c = await fetchRaw(`${reg.url}/v2/`, { agent });
        const d = await fetchRaw(midUrl, { agent });
        assert.ok(a.body.equals(mid));
        assert.ok(b.reused && c.reused && d.reused, 'the connection was not kept');
        assert.equal(b.status, 206);
        assert.ok(b.body.equals(mid.subarray(10, 21)));
        assert.equal(c.status, 200);
        assert.ok(d.body.equals(mid));
      } finally {
        agent.destroy();
      }
    });

    test('a client that stops reading is cut after the body timeout, and its connection closes', async () => {
      const stalled = async () => ((await http(reg.url, 'GET', '/nixreg/stats')).json() as { server: { connections: { stalled: number } } })
        .server.connections.stalled;
      const before = await stalled();
      const s = await open(reg.url);
      let got = 0;
      s.on('error', () => {});
      // Stop at the first bytes: loopback could otherwise take all of it before a timer.
      s.on('data', (c: Buffer) => { got += c.length; });
      s.once('data', () => s.pause());
      const closed = new Promise<void>((r) => s.once('close', () => r()));
      const t0 = Date.now();
      s.write(`GET /v2/bodies/big/blobs/${bigDigest} HTTP/1.1\r\nHost: x\r\n\r\n`);
      let now = before;
      while (now === before && Date.now() - t0 < BODY_MS + 6000) { await sleep(100); now = await stalled(); }
      const ms = Date.now() - t0;
      assert.ok(now > before, 'the stalled download was never cut');
      assert.ok(ms >= BODY_MS - 200, `cut after ${ms} ms, before the body timeout`);
      // Reading again, the client gets what the kernel holds, then the end: which it sees
      // only if no duplicate of the server's socket stayed open behind Node's back.
      s.resume();
      const end = await Promise.race([closed.then(() => 'closed'), sleep(5000).then(() => 'still open')]);
      s.destroy();
      assert.equal(end, 'closed');
      assert.ok(got < big.length, 'the whole body came after all');
    });

    test('a slow but moving reader is not cut, however long the download takes', { timeout: 30_000 }, async () => {
      const s = await open(reg.url);
      const t0 = Date.now();
      const rate = 16 * MiB / 1000; // bytes per ms: ~4 s for 64 MiB, well over twice BODY_MS
      let got = 0;
      let headerEnd = -1;
      let head = Buffer.alloc(0);
      const done = new Promise<void>((resolve, reject) => {
        s.on('data', (c: Buffer) => {
          if (headerEnd < 0) {
            head = Buffer.concat([head, c]);
            headerEnd = head.indexOf('\r\n\r\n');
            if (headerEnd < 0) return;
            got = head.length - headerEnd - 4;
          } else {
            got += c.length;
          }
          if (got >= big.length) { resolve(); return; }
          const ahead = got / rate - (Date.now() - t0);
          if (ahead > 5) { s.pause(); setTimeout(() => s.resume(), ahead); }
        });
        s.on('close', () => reject(new Error(`closed after ${Date.now() - t0} ms with ${got} of ${big.length} bytes`)));
        s.on('error', () => {});
      });
      s.write(`GET /v2/bodies/big/blobs/${bigDigest} HTTP/1.1\r\nHost: x\r\n\r\n`);
      try {
        await done;
      } finally {
        s.destroy();
      }
      assert.match(head.toString('latin1', 0, 12), /^HTTP\/1\.1 200/);
      assert.ok(Date.now() - t0 > 2 * BODY_MS, `took only ${Date.now() - t0} ms: not a test of the timeout`);
    });

    test('a client that leaves mid-body releases the socket and the file at once', async () => {
      await sleep(100);
      const baseline = openFds();
      for (let i = 0; i < 3; i++) {
        const s = await open(reg.url);
        s.on('error', () => {});
        const first = new Promise<void>((r) => s.once('data', () => r()));
        s.write(`GET /v2/bodies/big/blobs/${bigDigest} HTTP/1.1\r\nHost: x\r\n\r\n`);
        await first;
        // A reset, as a killed client's kernel sends, and a plain close.
        if (i % 2) s.resetAndDestroy(); else s.destroy();
      }
      const n = await fdsBackTo(baseline);
      assert.ok(n <= baseline, `${n} descriptors open, ${baseline} before the downloads`);
      // The server is still fine.
      const r = await fetchRaw(midUrl);
      assert.ok(r.body.equals(mid));
    });

    test(`the metrics say the bodies went by ${mode}`, async () => {
      const m = await bodyBytes(reg.url);
      assert.equal(m.gauge, mode === 'sendfile' ? 1 : 0);
      // At least the full GETs above, by the one way only.
      const moved = mode === 'sendfile' ? m.sendfile : m.copy;
      const other = mode === 'sendfile' ? m.copy : m.sendfile;
      assert.ok(moved >= big.length + 34 * mid.length, `${moved} bytes by ${mode}`);
      assert.equal(other, 0);
    });
  });
}

describe('blob GET over TLS', () => {
  test('is copied (sendfile cannot encrypt), byte for byte, by a server that would use sendfile', async () => {
    const tls = await makeTls(['127.0.0.1']);
    const reg = await startReg({ tls: { cert: tls.cert, key: tls.key }, sendfile: true });
    try {
      const digest = await pushBlobTls(reg.url, readFileSync(tls.caCert));
      const ca = readFileSync(tls.caCert);
      const body = await httpsGet(`${reg.url}/v2/bodies/tls/blobs/${digest}`, ca);
      assert.ok(body.equals(mid));
      const m = parseExposition((await httpsGet(`${reg.url}/metrics`, ca)).toString());
      assert.equal(m.value('nixreg_blob_sendfile'), 1);
      assert.equal(m.value('nixreg_blob_body_bytes_total', { via: 'copy' }), mid.length);
      assert.equal(m.value('nixreg_blob_body_bytes_total', { via: 'sendfile' }), 0);
    } finally {
      await reg.destroy();
      tls.cleanup();
    }
  });
});

function httpsGet(url: string, ca: Buffer, method = 'GET', body?: Buffer): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const req = httpsRequest(url, { ca, agent: false, method }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => (res.statusCode! < 300 ? resolve(Buffer.concat(parts)) : reject(new Error(`${method} ${url}: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function pushBlobTls(base: string, ca: Buffer): Promise<string> {
  await httpsGet(`${base}/v2/bodies/tls/blobs/uploads/?digest=${midDigest}`, ca, 'POST', mid);
  return midDigest;
}
