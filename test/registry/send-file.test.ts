// sendFileRange against a real node:http server and client, by sendfile and by copying:
// whole files, ranges across the reuse boundary of its buffers, and a client that goes
// away mid-body.
import { randomBytes } from 'node:crypto';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, get, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { sendFileRange } from '../../src/registry/send-file.js';
import { tempDir } from '../helpers/registry.js';

const MiB = 1024 * 1024;
const dir = tempDir('nixreg-send-file-');
const file = join(dir, 'blob');
// Not a multiple of the buffer size, so the last read is short.
const content = randomBytes(5 * MiB + 12345);
let server: Server;
let base = '';
let lastOutcome: Promise<unknown> = Promise.resolve();
/** The way the server under test sends: set by each describe below. */
let sendfile = false;
const bytes = { sendfile: 0, copy: 0 };

before(async () => {
  writeFileSync(file, content);
  server = createServer((req, res) => {
    const u = new URL(req.url!, 'http://x');
    const start = Number(u.searchParams.get('start'));
    const end = Number(u.searchParams.get('end'));
    res.writeHead(200, { 'Content-Length': String(end - start + 1) });
    // As the app's error handler does once headers are out: cut the connection.
    lastOutcome = sendFileRange(u.searchParams.get('path') ?? file, start, end, res, { sendfile, bytes })
      .then(() => 'ok', (e: Error) => { res.destroy(); return e; });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

function fetchBody(start: number, end: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    get(`${base}/?start=${start}&end=${end}`, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve(Buffer.concat(parts)));
      res.on('error', reject);
    }).on('error', reject);
  });
}

const openFds = () => readdirSync('/proc/self/fd').length;

for (const mode of [true, false]) {
  describe(mode ? 'by sendfile' : 'by copying', () => {
    before(() => { sendfile = mode; });

    test('sends a whole file byte for byte, the way asked', async () => {
      bytes.sendfile = bytes.copy = 0;
      const body = await fetchBody(0, content.length - 1);
      assert.equal(body.length, content.length);
      assert.ok(body.equals(content));
      assert.equal(await lastOutcome, 'ok');
      assert.deepEqual(bytes, mode ? { sendfile: content.length, copy: 0 } : { sendfile: 0, copy: content.length });
    });

    test('sends ranges that cross buffer boundaries, and single bytes', async () => {
      for (const [s, e] of [[MiB - 7, 3 * MiB + 9], [0, 0], [content.length - 1, content.length - 1], [2 * MiB, 4 * MiB - 1]] as const) {
        const body = await fetchBody(s, e);
        assert.ok(body.equals(content.subarray(s, e + 1)), `range ${s}-${e}`);
      }
    });

    test('a client that leaves mid-body ends the send and closes the file', async () => {
      const big = join(dir, 'big');
      writeFileSync(big, Buffer.alloc(64 * MiB, 1));
      const fds = openFds();
      await new Promise<void>((resolve, reject) => {
        const req = get(`${base}/?start=0&end=${64 * MiB - 1}&path=${encodeURIComponent(big)}`, (res) => {
          // Read a little, then go away while the server still has most of the file to send.
          res.once('data', () => { req.destroy(); resolve(); });
        });
        req.on('error', () => {});
        req.setTimeout(10_000, () => reject(new Error('no data')));
      });
      const outcome = await Promise.race([lastOutcome, new Promise((r) => setTimeout(() => r('still running'), 10_000).unref())]);
      assert.ok(outcome instanceof Error, `expected the send to fail, got ${String(outcome)}`);
      // The server side of the aborted connection may close a moment later than the send.
      for (let i = 0; i < 50 && openFds() > fds; i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(openFds() <= fds, 'the file handle was left open');
    });

    test('a file shorter than the range fails, and the client sees a cut body', async () => {
      const body = await fetchBody(0, content.length + 100).catch((e: Error) => e);
      const result = await lastOutcome;
      assert.ok(result instanceof Error && /ends at byte/.test(result.message), `got ${String(result)}`);
      assert.ok(body instanceof Error || body.length < content.length + 101, 'the client got a complete body');
    });

    test('a client gone before the send starts is a client abort (ECONNRESET), not a write error', async () => {
      // The response closes while the handler still awaits (a lookup, the file open): the
      // send must know the client left, not write into a destroyed stream.
      const s = createServer((_req, res) => {
        res.once('close', () => { sent = sendFileRange(file, 0, 1000, res, { sendfile }).then(() => 'ok', (e: NodeJS.ErrnoException) => e); });
      });
      let sent: Promise<unknown> | undefined;
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      try {
        const req = get(`http://127.0.0.1:${(s.address() as AddressInfo).port}/`);
        req.on('error', () => {});
        await new Promise((r) => setTimeout(r, 100));
        req.destroy();
        for (let i = 0; i < 100 && !sent; i++) await new Promise((r) => setTimeout(r, 10));
        const outcome = await sent;
        assert.equal((outcome as NodeJS.ErrnoException).code, 'ECONNRESET', `got ${String(outcome)}`);
      } finally {
        s.closeAllConnections();
        await new Promise((r) => s.close(r));
      }
    });
  });
}
