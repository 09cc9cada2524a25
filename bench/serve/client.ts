// The one client both registries are pushed to and read from: plain node:http, streaming,
// with the same requests for both so that only the server differs.
import { execFile } from 'node:child_process';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobSpec, Image } from './content.js';

/** What `docker pull` (20.10) sends, folded into one header (wrk keeps one per name). */
export const DOCKER_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  'application/json',
].join(', ');

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

export function expect(r: Reply, status: number, what: string): Reply {
  if (r.status !== status) throw new Error(`${what}: expected ${status}, got ${r.status}: ${r.body.toString().slice(0, 500)}`);
  return r;
}

/**
 * Pushes a blob the way both registries support: POST opens a session, one PUT with
 * ?digest= carries the whole body. Returns the milliseconds from POST to 201. `auth`:
 * headers for a server with --auth (Authorization), sent with every request.
 */
export async function pushBlob(base: string, repo: string, blob: BlobSpec, auth: Record<string, string> = {}): Promise<number> {
  const t0 = performance.now();
  const post = expect(await call('POST', `${base}/v2/${repo}/blobs/uploads/`, { ...auth, 'Content-Length': '0' }), 202, `POST upload to ${base}`);
  const loc = new URL(String(post.headers.location), base);
  loc.searchParams.set('digest', blob.digest);
  expect(await call('PUT', loc.toString(), {
    ...auth,
    'Content-Type': 'application/octet-stream',
    'Content-Length': String(blob.size),
  }, Readable.from(blob.chunks(), { objectMode: false })), 201, `PUT ${blob.size} bytes to ${base}`);
  return performance.now() - t0;
}

export async function putManifest(base: string, repo: string, ref: string, mediaType: string, body: Buffer, auth: Record<string, string> = {}): Promise<string> {
  const r = expect(await call('PUT', `${base}/v2/${repo}/manifests/${ref}`, { ...auth, 'Content-Type': mediaType }, body), 201, `PUT manifest to ${base}`);
  return String(r.headers['docker-content-digest']);
}

/** Pushes the image's blobs and manifest (tagged); returns the manifest digest. */
export async function pushImage(base: string, img: Image, auth: Record<string, string> = {}): Promise<string> {
  for (const b of img.blobs) await pushBlob(base, img.repo, b, auth);
  return putManifest(base, img.repo, img.tag, img.mediaType, img.manifest, auth);
}

/** Throws unless the server answers the manifest GET the benchmark repeats with exactly what was pushed. */
export async function checkManifest(base: string, img: Image, digest: string, auth: Record<string, string> = {}, what = base): Promise<void> {
  const r = await call('GET', `${base}/v2/${img.repo}/manifests/${img.tag}`, { ...auth, Accept: DOCKER_ACCEPT });
  if (r.status !== 200 || !r.body.equals(img.manifest) || r.headers['docker-content-digest'] !== digest) {
    throw new Error(`${what} does not serve the manifest it was given (status ${r.status}): ${r.body.toString().slice(0, 300)}`);
  }
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
