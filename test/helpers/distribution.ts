// Debian's docker-registry (CNCF Distribution 2.8) as an upstream for the pull-through
// cache's tests: optionally with htpasswd auth and TLS, its access log kept so a test can
// count the GETs it served, stoppable and restartable on the same port and data, and a
// small client that pushes into it over TLS with Basic credentials (node's fetch cannot
// be given a CA per request).
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import { requireTool, waitFor } from './exec.js';
import { freePorts } from './ports.js';

export interface Distribution {
  url: string;
  /** host:port */
  host: string;
  /** Everything it logged since it was first started (its access log included). */
  logs(): string;
  /** Requests of `method` on a path matching `path` answered with `status`, per its access log. */
  count(method: string, path: RegExp, status?: number): number;
  stop(): Promise<void>;
  /** Starts it again, same port and data. */
  start(): Promise<void>;
  /** A request to it with its CA and credentials. */
  request(method: string, path: string, headers?: Record<string, string>, body?: Buffer): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }>;
}

export interface DistributionOptions {
  dir: string;
  tls?: { cert: string; key: string; ca: Buffer } | undefined;
  /** An htpasswd file (bcrypt) and the user/password the helper's client uses. */
  htpasswd?: { file: string; user: string; password: string } | undefined;
}

export async function startDistribution(o: DistributionOptions): Promise<Distribution> {
  await requireTool('docker-registry');
  const port = await freePorts(1);
  const scheme = o.tls ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  mkdirSync(join(o.dir, 'data'), { recursive: true });
  const config = join(o.dir, 'config.yml');
  writeFileSync(config, [
    'version: 0.1',
    'log:', '  level: warn', '  accesslog:', '    disabled: false',
    'storage:', '  filesystem:', `    rootdirectory: ${JSON.stringify(join(o.dir, 'data'))}`, '  delete:', '    enabled: true',
    'http:', `  addr: 127.0.0.1:${port}`,
    ...(o.tls ? ['  tls:', `    certificate: ${JSON.stringify(o.tls.cert)}`, `    key: ${JSON.stringify(o.tls.key)}`] : []),
    ...(o.htpasswd ? ['auth:', '  htpasswd:', '    realm: upstream', `    path: ${JSON.stringify(o.htpasswd.file)}`] : []),
    '',
  ].join('\n'));
  let out = '';
  let child: ChildProcess | undefined;
  const auth = o.htpasswd ? `Basic ${Buffer.from(`${o.htpasswd.user}:${o.htpasswd.password}`).toString('base64')}` : undefined;
  const req: Distribution['request'] = (method, path, headers = {}, body) => new Promise((resolve, reject) => {
    const r = (o.tls ? httpsRequest : httpRequest)(`${url}${path}`, {
      method, headers: { ...(auth ? { Authorization: auth } : {}), ...headers }, ...(o.tls ? { ca: o.tls.ca } : {}),
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    r.on('error', reject);
    r.end(body);
  });
  const start = async () => {
    // Dies with the test runner, however it ends.
    const c = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', 'docker-registry', 'serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    c.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
    await waitFor('docker-registry', async () => {
      if (c.exitCode !== null) throw new Error(`docker-registry exited:\n${out.slice(-3000)}`);
      try { return (await req('GET', '/v2/')).status > 0 ? true : undefined; } catch { return undefined; }
    }, 30_000);
  };
  await start();
  return {
    url, host: `127.0.0.1:${port}`,
    logs: () => out,
    count(method, path, status = 200) {
      let n = 0;
      for (const m of out.matchAll(/"(\w+) (\S+) HTTP\/[\d.]+" (\d{3})/g)) {
        if (m[1] === method && path.test(m[2]!) && Number(m[3]) === status) n++;
      }
      return n;
    },
    async stop() {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await exited;
    },
    start,
    request: req,
  };
}

export const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Pushes a blob into an upstream; returns its digest. */
export async function upstreamBlob(d: Distribution, repo: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  // Distribution 2.8 has no monolithic POST: POST, then PUT the body to the upload.
  const start = await d.request('POST', `/v2/${repo}/blobs/uploads/`, { 'Content-Length': '0' });
  if (start.status !== 202) throw new Error(`start upload: ${start.status} ${start.body.toString()}`);
  const loc = new URL(String(start.headers.location), 'http://x');
  loc.searchParams.set('digest', digest);
  const r = await d.request('PUT', `${loc.pathname}${loc.search}`, { 'Content-Type': 'application/octet-stream', 'Content-Length': String(data.length) }, data);
  if (r.status !== 201) throw new Error(`push blob: ${r.status} ${r.body.toString()}`);
  return digest;
}

/** A tar of these files (one layer's content). */
export async function tarOf(files: Record<string, Buffer>): Promise<Buffer> {
  const p = tar.pack();
  for (const [name, data] of Object.entries(files)) p.entry({ name, size: data.length, mode: 0o644, mtime: new Date(0) }, data);
  p.finalize();
  const chunks: Buffer[] = [];
  for await (const c of p as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

/**
 * Pushes an image whose layers are these tars, gzipped (a real image: containerd
 * unpacks it and checks the diff_ids), under `tag`; returns its parts.
 */
export async function upstreamImage(d: Distribution, repo: string, tag: string, tars: Buffer[], salt = tag) {
  const layers = tars.map((t) => gzipSync(t, { level: 1 }));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: tars.map(sha256) }, config: {}, salt }));
  await upstreamBlob(d, repo, config);
  for (const l of layers) await upstreamBlob(d, repo, l);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
    config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: sha256(config), size: config.length },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: sha256(l), size: l.length })),
  }));
  const type = 'application/vnd.docker.distribution.manifest.v2+json';
  const r = await d.request('PUT', `/v2/${repo}/manifests/${tag}`, { 'Content-Type': type, 'Content-Length': String(manifest.length) }, manifest);
  if (r.status !== 201) throw new Error(`push manifest: ${r.status} ${r.body.toString()}`);
  return { manifest, digest: sha256(manifest), config, layers };
}
