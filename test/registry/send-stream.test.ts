// sendStream (blob bodies from S3) against a real node:http server and client: uneven
// chunks arrive byte for byte and counted; what goes to the socket is copies in reused
// buffers, never the source's own chunks (held by a slow socket, those were promoted and
// cost full collections: BENCHMARKS.md, issue 23 item 8); a client that leaves stops it.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, get, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { sendStream } from '../../src/registry/send-file.js';

const KiB = 1024;
let server: Server;
let base = '';
/** What the next request sends, and what became of the last one. */
let chunks: Buffer[] = [];
let source: Readable | undefined;
let outcome: Promise<unknown> = Promise.resolve();
let written: Buffer[] = [];
const bytes = { sendfile: 0, copy: 0 };

before(async () => {
  server = createServer((_req, res: ServerResponse) => {
    const total = chunks.reduce((n, c) => n + c.length, 0);
    res.writeHead(200, { 'Content-Length': String(total) });
    const write = res.write.bind(res) as (c: Buffer, cb: (e?: Error | null) => void) => boolean;
    (res as unknown as { write: typeof write }).write = (c, cb) => { written.push(c); return write(c, cb); };
    outcome = sendStream(async () => (source = Readable.from(chunks)), res, { bytes })
      .then(() => 'ok', (e: Error) => { res.destroy(); return e; });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

function fetchBody(): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    get(base, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve(Buffer.concat(parts)));
      res.on('error', reject);
    }).on('error', reject);
  });
}

test('uneven chunks arrive byte for byte, counted, and as copies: no source chunk reaches the socket', async () => {
  chunks = [64 * KiB, 3, 200 * KiB, 64 * KiB, 1, 70 * KiB, 500 * KiB].map((n) => randomBytes(n));
  written = [];
  bytes.copy = 0;
  const body = await fetchBody();
  assert.equal(await outcome, 'ok');
  assert.ok(body.equals(Buffer.concat(chunks)));
  assert.equal(bytes.copy, body.length);
  const sources = new Set(chunks.map((c) => c.buffer));
  assert.ok(written.length > 0);
  assert.ok(written.every((w) => !sources.has(w.buffer as ArrayBuffer)), 'a source chunk was handed to the socket itself');
});

test('a client that leaves mid-body ends the send and stops the source', async () => {
  chunks = Array.from({ length: 4096 }, () => Buffer.alloc(64 * KiB, 1));
  await new Promise<void>((resolve, reject) => {
    const req = get(base, (res) => { res.once('data', () => { req.destroy(); resolve(); }); });
    req.on('error', () => {});
    req.setTimeout(10_000, () => reject(new Error('no data')));
  });
  const result = await Promise.race([outcome, new Promise((r) => setTimeout(() => r('still running'), 10_000).unref())]);
  assert.ok(result instanceof Error, `expected the send to fail, got ${String(result)}`);
  assert.equal(source?.destroyed, true);
});
