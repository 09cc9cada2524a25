// The one client both registries are pushed to and read from: plain node:http, streaming,
// with the same requests for both so that only the server differs.
import { execFile } from 'node:child_process';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobSpec } from './content.js';

const agent = new Agent({ keepAlive: true, maxSockets: 4 });

export interface Reply { status: number; headers: IncomingHttpHeaders; body: Buffer }

export function call(method: string, url: string, headers: Record<string, string> = {}, body?: Readable | Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers, agent }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else pipeline(body, req).catch(reject);
  });
}

function expect(r: Reply, status: number, what: string): Reply {
  if (r.status !== status) throw new Error(`${what}: expected ${status}, got ${r.status}: ${r.body.toString().slice(0, 500)}`);
  return r;
}

/**
 * Pushes a blob the way both registries support: POST opens a session, one PUT with
 * ?digest= carries the whole body. Returns the milliseconds from POST to 201.
 */
export async function pushBlob(base: string, repo: string, blob: BlobSpec): Promise<number> {
  const t0 = performance.now();
  const post = expect(await call('POST', `${base}/v2/${repo}/blobs/uploads/`, { 'Content-Length': '0' }), 202, `POST upload to ${base}`);
  const loc = new URL(String(post.headers.location), base);
  loc.searchParams.set('digest', blob.digest);
  expect(await call('PUT', loc.toString(), {
    'Content-Type': 'application/octet-stream',
    'Content-Length': String(blob.size),
  }, Readable.from(blob.chunks(), { objectMode: false })), 201, `PUT ${blob.size} bytes to ${base}`);
  return performance.now() - t0;
}

export async function putManifest(base: string, repo: string, ref: string, mediaType: string, body: Buffer): Promise<string> {
  const r = expect(await call('PUT', `${base}/v2/${repo}/manifests/${ref}`, { 'Content-Type': mediaType }, body), 201, `PUT manifest to ${base}`);
  return String(r.headers['docker-content-digest']);
}

/**
 * Downloads a blob with curl, discarding it; returns [bytes, milliseconds]. A C client
 * (like docker's Go one) rather than node:http, whose per-chunk allocations made the
 * client itself, sharing the 2 cores, the main limit of what was measured.
 */
export function timeDownload(url: string): Promise<[number, number]> {
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '--fail', '-o', '/dev/null', '-w', '%{size_download} %{time_total}', url], (err, stdout) => {
      if (err) { reject(new Error(`curl ${url}: ${err.message}`)); return; }
      const [bytes, seconds] = stdout.trim().split(' ').map(Number);
      resolve([bytes!, seconds! * 1000]);
    });
  });
}

export function closeClient(): void {
  agent.destroy();
}
