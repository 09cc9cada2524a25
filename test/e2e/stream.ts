// Cheap, deterministic, streamable test data and a raw HTTP client that can stop
// mid-body: what the crash and memory tests need and fetch() cannot do.
import { createHash, randomBytes } from 'node:crypto';
import { request, type IncomingMessage, type ClientRequest } from 'node:http';
import { Readable } from 'node:stream';

export const MiB = 1024 * 1024;

/**
 * Bytes [0, size) of a pattern: one random MiB repeated, with the MiB's index stamped
 * into its first 8 bytes so no two MiBs are equal (dedup or caching cannot cheat).
 */
export class Pattern {
  private readonly base = randomBytes(MiB);
  constructor(readonly size: number) {}

  private block(i: number): Buffer {
    const b = Buffer.from(this.base);
    b.writeBigUInt64BE(BigInt(i), 0);
    return b;
  }

  /** Bytes [start, end) as a stream of at most 1 MiB chunks, generated lazily. */
  stream(start = 0, end = this.size): Readable {
    const self = this;
    return Readable.from((function* () {
      for (let pos = start; pos < end;) {
        const i = Math.floor(pos / MiB);
        const off = pos - i * MiB;
        const n = Math.min(MiB - off, end - pos);
        yield self.block(i).subarray(off, off + n);
        pos += n;
      }
    })(), { objectMode: false, highWaterMark: 1 });
  }

  slice(start: number, end: number): Buffer {
    const parts: Buffer[] = [];
    for (let pos = start; pos < end;) {
      const i = Math.floor(pos / MiB);
      const off = pos - i * MiB;
      const n = Math.min(MiB - off, end - pos);
      parts.push(this.block(i).subarray(off, off + n));
      pos += n;
    }
    return Buffer.concat(parts);
  }

  digest(): string {
    const h = createHash('sha256');
    for (let i = 0; i * MiB < this.size; i++) h.update(this.block(i).subarray(0, Math.min(MiB, this.size - i * MiB)));
    return `sha256:${h.digest('hex')}`;
  }
}

export interface Reply { status: number; headers: IncomingMessage['headers']; body: string }

/** Sends a request whose body is `body` (a stream is piped, never buffered). */
export function send(url: string, method: string, body?: Readable | Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else body.pipe(req);
  });
}

/**
 * Starts a request and writes `prefix` of its body, leaving it open: the caller kills
 * the server mid-body. Resolves once `prefix` is handed to the socket.
 */
export async function openRequest(url: string, method: string, prefix: Buffer, headers: Record<string, string> = {}): Promise<ClientRequest> {
  const req = request(url, { method, headers });
  req.on('error', () => { /* the server is about to be killed */ });
  req.on('response', (res) => res.resume());
  await new Promise<void>((r) => req.write(prefix, () => r()));
  return req;
}

/** Streams a GET response through sha256; resolves to [status, digest, bytes]. */
export function digestOfGet(url: string): Promise<{ status: number; digest: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    request(url, (res) => {
      const h = createHash('sha256');
      let bytes = 0;
      res.on('data', (c: Buffer) => { h.update(c); bytes += c.length; });
      res.on('end', () => resolve({ status: res.statusCode!, digest: `sha256:${h.digest('hex')}`, bytes }));
      res.on('error', reject);
    }).on('error', reject).end();
  });
}
