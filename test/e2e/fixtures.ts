// Image fixtures for the end-to-end tests, made from host files only (no Docker Hub):
// a build context around the static busybox, and small registry API helpers.
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/exec.js';
import { tempDir } from '../helpers/registry.js';

/** Escapes a string for use inside a RegExp. */
export function re(s: string): RegExp {
  return new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
}

/**
 * A `docker build` context for a three-layer image (busybox, a text file, 256 KiB of
 * random data) whose CMD prints `greeting`. Random data makes every call a new image.
 */
export function multiLayerContext(greeting: string): { dir: string; cleanup(): void } {
  const dir = tempDir('nixreg-ctx-');
  copyFileSync('/bin/busybox', join(dir, 'busybox'));
  writeFileSync(join(dir, 'greeting.txt'), `${greeting}\n`);
  writeFileSync(join(dir, 'random.bin'), randomBytes(256 * 1024));
  writeFileSync(join(dir, 'Dockerfile'), [
    'FROM scratch',
    'COPY busybox /bin/busybox',
    'COPY greeting.txt /greeting.txt',
    'COPY random.bin /data/random.bin',
    'CMD ["/bin/busybox", "cat", "/greeting.txt"]',
    '',
  ].join('\n'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A directory holding /bin/busybox, for tarballs and OCI layouts. */
export function busyboxRoot(): string {
  const root = tempDir('nixreg-root-');
  mkdirSync(join(root, 'bin'));
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  return root;
}

export const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

export interface Manifest {
  mediaType?: string;
  config?: { digest: string; size: number };
  layers?: { digest: string; size: number; mediaType: string }[];
  manifests?: { digest: string; platform?: { architecture: string; os: string } }[];
}

export async function getManifest(url: string, repo: string, ref: string): Promise<{ status: number; digest: string | null; body: Manifest }> {
  const r = await fetch(`${url}/v2/${repo}/manifests/${ref}`, { headers: { Accept: MANIFEST_ACCEPT } });
  const text = await r.text();
  return { status: r.status, digest: r.headers.get('docker-content-digest'), body: text ? JSON.parse(text) as Manifest : {} };
}

/** What skopeoRoundTrip pushed and pulled back. */
export interface RoundTrip {
  /** The manifest digest of the image pushed, and of the one pulled back. */
  pushed: string;
  pulled: string;
  /** The pulled image's layers, as the digests its manifest names and the bytes that came. */
  layers: { digest: string; bytes: Buffer }[];
  /** Temporary directories, for the caller to remove. */
  dirs: string[];
}

/**
 * A busybox image made with umoci, pushed by skopeo to `push` (`host/repo:tag`) and
 * pulled back from `pull` (the same name at another server, or the same one).
 */
export async function skopeoRoundTrip(push: string, pull: string): Promise<RoundTrip> {
  const work = tempDir('nixreg-skopeo-');
  const root = busyboxRoot();
  const layout = join(work, 'layout');
  await run('umoci', ['init', '--layout', layout], { check: true });
  await run('umoci', ['new', '--image', `${layout}:v1`], { check: true });
  await run('umoci', ['insert', '--image', `${layout}:v1`, join(root, 'bin'), '/bin'], { check: true });
  const skopeo = (args: string[]) => run('skopeo', ['--insecure-policy', ...args], { check: true });
  await skopeo(['copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${push}`]);
  const out = join(work, 'out');
  await skopeo(['copy', '--src-tls-verify=false', `docker://${pull}`, `oci:${out}:copy`]);
  const idx = (dir: string) => JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const blob = (d: string) => readFileSync(join(out, 'blobs/sha256', d.slice(7)));
  const pulled = idx(out).manifests[0]!.digest;
  const manifest = JSON.parse(blob(pulled).toString('utf8')) as { layers: { digest: string }[] };
  return { pushed: idx(layout).manifests[0]!.digest, pulled, layers: manifest.layers.map((l) => ({ digest: l.digest, bytes: blob(l.digest) })), dirs: [work, root] };
}
