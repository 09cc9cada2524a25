// bench/http2's registry client: pushes and pulls one image over HTTP/1.1 (a keep-alive
// pool of TLS connections) or HTTP/2 (one session, many streams), with the same requests
// and the same concurrency either way, so that only the protocol differs. It works the
// way docker does: uploads POST + PATCH (the whole layer, streamed) + PUT, 5 at a time
// (dockerd's max-concurrent-uploads); downloads 3 at a time (max-concurrent-downloads).
import { request as httpsRequest, Agent } from 'node:https';
import { connect, type ClientHttp2Session, type IncomingHttpHeaders as H2Headers } from 'node:http2';
import type { IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobSpec } from '../serve/content.js';

export interface Reply { status: number; headers: IncomingHttpHeaders | H2Headers; body: Buffer; bytes: number }

export interface Transport {
  /** `discard`: count the body's bytes, keep none of them. */
  call(method: string, path: string, headers?: Record<string, string>, body?: Buffer | (() => Iterable<Buffer>), discard?: boolean): Promise<Reply>;
  /** Protocol of the last answer ('1.1' or '2.0'), to check what was negotiated. */
  protocol(): string;
  close(): void;
}

function collect(src: NodeJS.ReadableStream, discard: boolean): Promise<{ body: Buffer; bytes: number }> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let bytes = 0;
    src.on('data', (c: Buffer) => { bytes += c.length; if (!discard) parts.push(c); });
    src.on('end', () => resolve({ body: Buffer.concat(parts), bytes }));
    src.on('error', reject);
  });
}

export function http1(base: string, ca: Buffer, sockets: number): Transport {
  const agent = new Agent({ keepAlive: true, maxSockets: sockets, ca });
  let last = '';
  return {
    call(method, path, headers = {}, body, discard = false) {
      return new Promise((resolve, reject) => {
        const req = httpsRequest(new URL(path, base), { method, headers, agent }, (res) => {
          last = res.httpVersion;
          collect(res, discard).then(({ body: b, bytes }) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b, bytes }), reject);
        });
        req.on('error', reject);
        if (body === undefined) req.end();
        else if (Buffer.isBuffer(body)) req.end(body);
        else pipeline(Readable.from(body()), req).catch(reject);
      });
    },
    protocol: () => last,
    close: () => agent.destroy(),
  };
}

export interface Windows { streamKiB: number; sessionKiB: number }

/** One HTTP/2 session; `windows` are this side's receive windows (Node's 64 KiB if none). */
export async function http2(base: string, ca: Buffer, windows?: Windows): Promise<Transport> {
  const session: ClientHttp2Session = connect(base, {
    ca,
    ...(windows ? { settings: { initialWindowSize: windows.streamKiB * 1024 } } : {}),
    maxSessionMemory: windows ? Math.max(10, Math.ceil((windows.sessionKiB * 2) / 1024)) : 10,
  });
  await new Promise<void>((resolve, reject) => { session.once('connect', () => resolve()); session.once('error', reject); });
  if (windows) session.setLocalWindowSize(windows.sessionKiB * 1024);
  session.on('error', () => {});
  return {
    call(method, path, headers = {}, body, discard = false) {
      return new Promise((resolve, reject) => {
        const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
        const stream = session.request({ ':method': method, ':path': path, ...lower }, { endStream: body === undefined });
        stream.on('error', reject);
        stream.once('response', (h) => {
          collect(stream, discard).then(({ body: b, bytes }) => resolve({ status: Number(h[':status']), headers: h, body: b, bytes }), reject);
        });
        if (Buffer.isBuffer(body)) stream.end(body);
        else if (body !== undefined) pipeline(Readable.from(body()), stream).catch(reject);
      });
    },
    protocol: () => '2.0',
    close: () => session.close(),
  };
}

function expect(r: Reply, status: number, what: string): Reply {
  if (r.status !== status) throw new Error(`${what}: expected ${status}, got ${r.status}: ${r.body.toString().slice(0, 300)}`);
  return r;
}

/** Runs `jobs` with at most `n` at a time. */
async function pool<T>(items: T[], n: number, job: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await job(items[next++]!);
  }));
}

export interface Image { config: BlobSpec; layers: BlobSpec[]; manifest: Buffer }

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

export function imageOf(config: BlobSpec, layers: BlobSpec[]): Image {
  const d = (b: BlobSpec, mediaType: string) => ({ mediaType, digest: b.digest, size: b.size });
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MANIFEST,
    config: d(config, 'application/vnd.oci.image.config.v1+json'),
    layers: layers.map((l) => d(l, 'application/vnd.oci.image.layer.v1.tar')),
  }));
  return { config, layers, manifest };
}

/** Pushes `img` as `repo:tag`; returns the milliseconds from the first POST to the manifest's 201. */
export async function push(t: Transport, repo: string, img: Image, concurrency = 5): Promise<number> {
  const t0 = performance.now();
  // Biggest first, as a client that starts all layers at once would see the big one last to finish.
  const blobs = [img.config, ...img.layers].sort((a, b) => b.size - a.size);
  await pool(blobs, concurrency, async (b) => {
    const post = expect(await t.call('POST', `/v2/${repo}/blobs/uploads/`, { 'Content-Length': '0' }), 202, 'POST upload');
    const loc = String(post.headers.location);
    expect(await t.call('PATCH', loc, { 'Content-Type': 'application/octet-stream' }, () => b.chunks()), 202, `PATCH ${b.size} bytes`);
    expect(await t.call('PUT', `${loc}${loc.includes('?') ? '&' : '?'}digest=${b.digest}`, { 'Content-Length': '0' }), 201, 'PUT upload');
  });
  expect(await t.call('PUT', `/v2/${repo}/manifests/v1`, { 'Content-Type': MANIFEST }, img.manifest), 201, 'PUT manifest');
  return performance.now() - t0;
}

/** Pulls `repo:v1` and every blob of it, keeping none; returns milliseconds. */
export async function pull(t: Transport, repo: string, img: Image, concurrency = 3): Promise<number> {
  const t0 = performance.now();
  const m = expect(await t.call('GET', `/v2/${repo}/manifests/v1`, { Accept: MANIFEST }), 200, 'GET manifest');
  const parsed = JSON.parse(m.body.toString()) as { config: { digest: string }; layers: { digest: string }[] };
  const sizes = new Map([img.config, ...img.layers].map((b) => [b.digest, b.size]));
  await pool([parsed.config.digest, ...parsed.layers.map((l) => l.digest)], concurrency, async (digest) => {
    const r = expect(await t.call('GET', `/v2/${repo}/blobs/${digest}`, {}, undefined, true), 200, 'GET blob');
    if (r.bytes !== sizes.get(digest)) throw new Error(`GET ${digest}: ${r.bytes} bytes, expected ${sizes.get(digest)}`);
  });
  return performance.now() - t0;
}
