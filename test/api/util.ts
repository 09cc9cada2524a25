// Shared helpers of the API tests: an in-process registry, plain fetch, raw HTTP for
// paths fetch would normalise, and the OCI error-body assertion.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import { request } from 'node:http';
import { startTestRegistry, tempDir } from '../helpers/registry.js';
import type { StartOptions } from '../../src/server.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
export const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

export function sha256(b: Buffer | string): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}
export function sha512(b: Buffer | string): string {
  return `sha512:${createHash('sha512').update(b).digest('hex')}`;
}

export interface TestRegistry {
  url: string;
  data: string;
  storage: Awaited<ReturnType<typeof startTestRegistry>>['storage'];
  close(): Promise<void>;
  /** Re-reads the certificate and the auth file (what SIGHUP does). */
  reload(): { reloaded: string[]; failed: string[] };
  /** Closes and removes the data directory. */
  destroy(): Promise<void>;
}

export async function startReg(opts: Partial<StartOptions> = {}): Promise<TestRegistry> {
  const data = opts.data ?? tempDir('nixreg-api-');
  const reg = await startTestRegistry({ ...opts, data });
  return {
    url: reg.url,
    data,
    storage: reg.storage,
    close: () => reg.close(),
    reload: () => reg.reload(),
    async destroy() {
      await reg.close();
      rmSync(data, { recursive: true, force: true });
    },
  };
}

export interface Res {
  status: number;
  headers: Headers;
  body: Buffer;
  text(): string;
  json(): any;
}

export async function http(base: string, method: string, path: string,
  opts: { headers?: Record<string, string>; body?: Buffer | string | ReadableStream<Uint8Array> } = {}): Promise<Res> {
  const init: RequestInit & { duplex?: 'half' } = { method, headers: opts.headers, redirect: 'manual' };
  if (opts.body !== undefined) {
    init.body = opts.body as BodyInit;
    if (opts.body instanceof ReadableStream) init.duplex = 'half';
  }
  const r = await fetch(base + path, init);
  const body = Buffer.from(await r.arrayBuffer());
  return { status: r.status, headers: r.headers, body, text: () => body.toString(), json: () => JSON.parse(body.toString()) };
}

/** A request with the path sent exactly as given (fetch would resolve dot segments). */
export function raw(base: string, method: string, path: string, headers: Record<string, string> = {}, body?: Buffer):
  Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Asserts an OCI error response: status, the spec's body shape, and the API version header. */
export function assertError(res: Res, status: number, code: string, method = 'GET'): void {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${res.text().slice(0, 300)}`);
  assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
  if (method === 'HEAD') { assert.equal(res.body.length, 0); return; }
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  const body = res.json();
  assert.ok(Array.isArray(body.errors) && body.errors.length >= 1, `no errors array in ${res.text()}`);
  const e = body.errors[0];
  assert.deepEqual(Object.keys(e).sort(), ['code', 'detail', 'message']);
  assert.equal(e.code, code, `expected code ${code}, got ${res.text().slice(0, 300)}`);
  assert.equal(typeof e.message, 'string');
}

/** Monolithic upload (POST ?digest=). */
export async function pushBlob(base: string, repo: string, data: Buffer | string, digest = sha256(data)): Promise<string> {
  const r = await http(base, 'POST', `/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    headers: { 'Content-Type': 'application/octet-stream' }, body: data,
  });
  assert.equal(r.status, 201, r.text());
  return digest;
}

export async function putManifest(base: string, repo: string, ref: string, body: Buffer | string, type = OCI_MANIFEST): Promise<Res> {
  return http(base, 'PUT', `/v2/${repo}/manifests/${ref}`, { headers: { 'Content-Type': type }, body });
}

/** A tiny image (config + one layer) pushed into `repo`; returns its parts. */
export async function pushImage(base: string, repo: string, tag: string, opts: { salt?: string; type?: 'oci' | 'docker'; pretty?: boolean } = {}) {
  const docker = opts.type === 'docker';
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, salt: opts.salt ?? tag }));
  // Content depends only on tag and salt, so equal arguments give equal digests in any repository.
  const layer = Buffer.from(`layer of ${tag}:${opts.salt ?? ''}`);
  await pushBlob(base, repo, config);
  await pushBlob(base, repo, layer);
  const m = {
    schemaVersion: 2,
    mediaType: docker ? DOCKER_MANIFEST : OCI_MANIFEST,
    config: { mediaType: docker ? DOCKER_CONFIG : OCI_CONFIG, digest: sha256(config), size: config.length },
    layers: [{ mediaType: docker ? 'application/vnd.docker.image.rootfs.diff.tar.gzip' : OCI_LAYER, digest: sha256(layer), size: layer.length }],
  };
  const body = Buffer.from(opts.pretty ? JSON.stringify(m, null, 3) : JSON.stringify(m));
  const r = await putManifest(base, repo, tag, body, m.mediaType);
  assert.equal(r.status, 201, r.text());
  return { config, layer, manifest: body, digest: sha256(body), mediaType: m.mediaType };
}
