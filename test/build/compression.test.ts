// --layer-compression none end to end (the gzip default is what every other build test
// pulls): a real nixreg process and real Nix; docker pull + run, ctr pull, skopeo copy +
// umoci unpack compared with the closure file by file; and what a change of setting does
// to images and layers already built.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { processEntry } from '../../src/build/ingest/archive-layer.js';
import { startContainerd } from '../helpers/containerd.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { CLI, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { DOCKER, get, Images, nonce, OCI, PKGS } from './helpers.js';
import { assertSameTree } from './trees.js';

const TAR = 'application/vnd.oci.image.layer.v1.tar';
const DOCKER_TAR = 'application/vnd.docker.image.rootfs.diff.tar';
const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';

let dockerd: Dockerd;
let reg: RegistryProcess;
let images: Images;
const data = tempDir('nixreg-none-');
const dirs: string[] = [data];

before(async () => {
  await requireTool('nix-store');
  images = new Images();
  [dockerd, reg] = await Promise.all([
    startDockerd(),
    spawnRegistry({ images: images.dir, data, env: { ...NIX_TEST_ENV, NIXREG_LAYER_COMPRESSION: 'none' } }),
  ]);
});
after(async () => {
  await Promise.allSettled([dockerd?.stop(), reg?.stop()]);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  images?.cleanup();
});

interface Manifest { layers: { mediaType: string; digest: string; size: number }[]; config: { digest: string } }

async function manifest(repo: string, ref: string, accept = OCI): Promise<{ digest: string; body: Manifest }> {
  const r = await get(`${reg.url}/v2/${repo}/manifests/${ref}`, accept);
  assert.equal(r.status, 200, r.text);
  return { digest: r.headers.get('docker-content-digest')!, body: r.json() as Manifest };
}

async function blob(repo: string, digest: string): Promise<Buffer> {
  const r = await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`);
  assert.equal(r.status, 200);
  return Buffer.from(await r.arrayBuffer());
}

test('none: layers are plain tars whose digest is their diff_id, in both manifest encodings', async () => {
  images.image('plain.nix', { nonce: nonce() });
  const { body } = await manifest('plain', 'latest');
  assert.ok(body.layers.length >= 2);
  const config = JSON.parse((await blob('plain', body.config.digest)).toString()) as { rootfs: { diff_ids: string[] } };
  for (const [i, l] of body.layers.entries()) {
    assert.equal(l.mediaType, TAR);
    assert.equal(l.digest, config.rootfs.diff_ids[i], 'an uncompressed layer is its own diff_id');
    const bytes = await blob('plain', l.digest);
    assert.equal(bytes.subarray(257, 262).toString('latin1'), 'ustar', 'a tar, not gzip');
    assert.equal(`sha256:${createHash('sha256').update(bytes).digest('hex')}`, l.digest);
  }
  const docker = await manifest('plain', 'latest', DOCKER);
  assert.deepEqual(docker.body.layers.map((l) => l.mediaType), body.layers.map(() => DOCKER_TAR));
  assert.deepEqual(docker.body.layers.map((l) => l.digest), body.layers.map((l) => l.digest));
});

test('none: docker pulls the image (schema2 and OCI) and runs it', { timeout: 180_000 }, async () => {
  const greeting = `uncompressed ${nonce()}`;
  images.image('plainrun.nix', { nonce: nonce(), greeting });
  const ref = `${reg.host}/plainrun:latest`;
  await dockerd.docker(['pull', ref]);
  const out = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
  assert.equal(out.stdout.trim(), greeting);
});

test('none: containerd (ctr) pulls the image, unpacks it and runs it', { timeout: 180_000 }, async () => {
  const containerd = await startContainerd();
  try {
    const greeting = `ctr uncompressed ${nonce()}`;
    images.image('plainctr.nix', { nonce: nonce(), greeting });
    const ref = `${reg.host}/plainctr:latest`;
    await containerd.ctr(['image', 'pull', '--plain-http', '--snapshotter', 'native', ref]);
    const { digest } = await manifest('plainctr', 'latest');
    const list = await containerd.ctr(['image', 'ls']);
    assert.match(list.stdout, new RegExp(`plainctr:latest\\s+\\S+\\s+${digest}`));
    // Run through runc, with no network: the layers were unpacked as tars, not just stored.
    const out = await containerd.ctr(['run', '--rm', '--snapshotter', 'native', ref, `plain-${nonce()}`]);
    assert.equal(out.stdout.trim(), greeting);
  } finally {
    await containerd.stop();
  }
});

test('none: skopeo copy + umoci unpack give the Nix closure file by file', { timeout: 180_000 }, async () => {
  await requireTool('skopeo');
  await requireTool('umoci');
  images.image('plainfiles.nix', { nonce: nonce() });
  await manifest('plainfiles', 'latest');
  const work = tempDir('nixreg-none-oci-');
  dirs.push(work);
  await run('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${reg.host}/plainfiles:latest`, `oci:${join(work, 'oci')}:x`]);
  await run('umoci', ['raw', 'unpack', '--image', `${join(work, 'oci')}:x`, join(work, 'rootfs')]);
  const hello = readFileSync(join(work, 'rootfs/bin/hello'));
  assert.ok(hello.length > 0);
  // /bin/hello links into the store path of the package: the closure is that path's.
  const pkg = /^\/nix\/store\/[^/]+/.exec(readlinkSync(join(work, 'rootfs/bin/hello')))![0];
  const closure = (await run('nix-store', ['--query', '--requisites', pkg], { env: NIX_TEST_ENV })).stdout.trim().split('\n');
  assert.ok(closure.length >= 2);
  for (const p of closure) assertSameTree(p, join(work, 'rootfs', p));
});

test('a change of setting rebuilds an image under the new one; going back gives the first image again', { timeout: 180_000 }, async () => {
  images.image('switch.nix', { nonce: nonce() });
  const first = await manifest('switch', 'latest');
  const hash = ((await get(`${reg.url}/v2/switch/tags/list`)).json().tags as string[]).find((t) => t !== 'latest')!;
  await reg.stop();
  reg = await spawnRegistry({ images: images.dir, data, env: { ...NIX_TEST_ENV, NIXREG_LAYER_COMPRESSION: 'gzip' } });
  // By hash, served from the index alone before: now built again, compressed.
  const gz = await manifest('switch', hash);
  assert.notEqual(gz.digest, first.digest);
  assert.deepEqual(gz.body.layers.map((l) => l.mediaType), gz.body.layers.map(() => GZIP));
  for (const l of gz.body.layers) assert.deepEqual([...(await blob('switch', l.digest)).subarray(0, 2)], [0x1f, 0x8b]);
  assert.equal((await manifest('switch', 'latest')).digest, gz.digest);
  // The uncompressed image is still there by digest, its blobs whole.
  const old = await manifest('switch', first.digest);
  for (const l of old.body.layers) assert.equal((await blob('switch', l.digest)).length, l.size);
  await reg.stop();
  reg = await spawnRegistry({ images: images.dir, data, env: { ...NIX_TEST_ENV, NIXREG_LAYER_COMPRESSION: 'none' } });
  const again = await manifest('switch', 'latest');
  assert.equal(again.digest, first.digest, 'the same image as under none before');
});

test('--gzip-level: level 1 makes other, larger layers than the default 6; bad settings stop the start', { timeout: 180_000 }, async () => {
  const text = `let pkgs = import ${PKGS} { nonce = "${nonce()}"; }; in { contents = [ pkgs.hello ]; maxLayers = 1; }\n`;
  images.write('level.nix', text);
  const six = await spawnRegistry({ images: images.dir, env: { ...NIX_TEST_ENV } });
  const one = await spawnRegistry({ images: images.dir, env: { ...NIX_TEST_ENV }, args: ['--gzip-level', '1'] });
  try {
    const size = async (r: RegistryProcess) => {
      const m = (await get(`${r.url}/v2/level/manifests/latest`, OCI)).json() as Manifest;
      return m.layers[0]!;
    };
    const [a, b] = [await size(six), await size(one)];
    assert.notEqual(a.digest, b.digest);
    assert.ok(b.size > a.size, `level 1 (${b.size} bytes) is larger than level 6 (${a.size})`);
  } finally {
    await Promise.allSettled([six.stop(), one.stop()]);
    rmSync(six.data, { recursive: true, force: true });
    rmSync(one.data, { recursive: true, force: true });
  }
  for (const [args, message] of [
    [['--layer-compression', 'zstd'], /--layer-compression must be one of gzip, none, got "zstd"/],
    [['--gzip-level', '10'], /--gzip-level must be a whole number from 1 to 9/],
  ] as const) {
    const child = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--data', tempDir(), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => { err += c.toString(); });
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    assert.equal(code, 2);
    assert.match(err, message);
  }
});

test('ingestion under none: a tar layer of an archive is stored as it is, a gzip layer stays gzip', async () => {
  const dir = tempDir('nixreg-none-ingest-');
  dirs.push(dir);
  const tar = execFileSync('tar', ['-c', '-C', join(PKGS, '..'), '-f', '-', 'pkgs']);
  const none = { kind: 'none', gzipLevel: 6 } as const;
  const plain = await processEntry(Readable.from([tar]), join(dir, 'a'), true, none);
  assert.equal(plain.layer!.compression, 'none');
  assert.equal(plain.layer!.digest, plain.layer!.diffId);
  assert.ok(readFileSync(join(dir, 'a')).equals(tar));
  const gz = execFileSync('gzip', ['-c'], { input: tar });
  const kept = await processEntry(Readable.from([gz]), join(dir, 'b'), true, none);
  assert.equal(kept.layer!.compression, 'gzip');
  assert.equal(kept.layer!.recompressed, false);
  assert.equal(kept.layer!.diffId, plain.layer!.diffId);
});
