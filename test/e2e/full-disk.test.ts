// A full disk, end to end: the real `nixreg serve` with its data directory on a 48 MiB
// tmpfs (free space set by a ballast file), skopeo pushing and pulling, and a build on
// pull of an image bigger than the disk (the Nix store is on the root filesystem; only
// nixreg's data is on the tmpfs). What does not fit is a 507 UNAVAILABLE saying the
// storage is full, never a crash; nothing it wrote is left behind, what was acknowledged
// stays byte for byte, and once space is back the same push works without a restart.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { bytesIn, checkStore } from '../helpers/store-check.js';
import { mountTmpfs, type Tmpfs } from '../helpers/tmpfs.js';
import { busyboxRoot } from './fixtures.js';

const MiB = 1024 * 1024;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let disk: Tmpfs | undefined;
let data: string;
let reg: RegistryProcess | undefined;
let work: string;
let layout: string;
const cleanups: string[] = [];

const skopeo = (args: string[], check = true) => run('skopeo', ['--insecure-policy', ...args], { check });
const push = (src: string, dest: string, check = true) =>
  skopeo(['copy', '--retry-times', '0', '--dest-tls-verify=false', src, `docker://${reg!.host}/${dest}`], check);

interface OciIndex { manifests: { digest: string; annotations?: Record<string, string> }[] }
function refDigest(dir: string, ref: string): string {
  const idx = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as OciIndex;
  const m = idx.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === ref);
  assert.ok(m, `no ${ref} in ${dir}`);
  return m.digest;
}
const ociBlob = (dir: string, digest: string) => readFileSync(join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)));
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A 48 MiB disk holds the server's data; the expression builds 60 MiB of random data. */
before(async () => {
  await requireTool('skopeo');
  await requireTool('umoci');
  work = tempDir('nixreg-fulldisk-');
  cleanups.push(work);
  const images = join(work, 'images');
  mkdirSync(images);
  writeFileSync(join(images, 'big.nix'), `derivation {
  name = "big";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p $out; head -c 62914560 /dev/urandom > $out/big" ];
}
`);
  // Two images: `small` (busybox) and `large` (busybox and 40 MiB of random data).
  layout = join(work, 'layout');
  const root = busyboxRoot();
  cleanups.push(root);
  await run('umoci', ['init', '--layout', layout]);
  for (const name of ['small', 'large']) {
    await run('umoci', ['new', '--image', `${layout}:${name}`]);
    await run('umoci', ['insert', '--image', `${layout}:${name}`, join(root, 'bin'), '/bin']);
  }
  const payload = join(work, 'payload');
  mkdirSync(payload);
  writeFileSync(join(payload, 'random.bin'), randomBytes(40 * MiB));
  await run('umoci', ['insert', '--image', `${layout}:large`, payload, '/data']);

  disk = mountTmpfs(48, 'nixreg-fulldisk-mnt-');
  data = join(disk.dir, 'data');
  reg = await spawnRegistry({ data, images, env: NIX_TEST_ENV });
});

after(async () => {
  try {
    if (reg) { reg.child.kill('SIGKILL'); await reg.stop(); }
  } finally {
    disk?.unmount();
    for (const d of cleanups) rmSync(d, { recursive: true, force: true });
  }
});

function assertAlive() {
  assert.equal(reg!.child.exitCode, null, `nixreg exited:\n${reg!.logs().slice(-3000)}`);
  assert.equal(reg!.child.signalCode, null, `nixreg was killed:\n${reg!.logs().slice(-3000)}`);
}

/** What a failed write may leave: nothing, in tmp/ and uploads/. */
function assertNothingLeft(when: string) {
  assert.equal(bytesIn(join(data, 'tmp')), 0, `${when}: bytes left in tmp/: ${readdirSync(join(data, 'tmp'))}`);
  assert.equal(bytesIn(join(data, 'uploads')), 0, `${when}: bytes left in uploads/`);
}

async function assertStorageFull(r: Response, what: RegExp) {
  const text = await r.text();
  assert.equal(r.status, 507, text);
  const e = (JSON.parse(text) as { errors: { code: string; message: string }[] }).errors[0]!;
  assert.equal(e.code, 'UNAVAILABLE');
  assert.match(e.message, /^the registry's storage is full: no space left to /);
  assert.match(e.message, what);
}

/** The image `name` of the layout, as served under `repo:tag`: manifest and every blob byte for byte. */
async function assertServed(repo: string, tag: string, name: string) {
  const digest = refDigest(layout, name);
  const r = await fetch(`${reg!.url}/v2/${repo}/manifests/${tag}`, { headers: { Accept: OCI_MANIFEST } });
  assert.equal(r.status, 200);
  const body = Buffer.from(await r.arrayBuffer());
  assert.deepEqual(body, ociBlob(layout, digest));
  const m = JSON.parse(body.toString()) as { config: { digest: string }; layers: { digest: string }[] };
  for (const d of [m.config.digest, ...m.layers.map((l) => l.digest)]) {
    const b = await fetch(`${reg!.url}/v2/${repo}/blobs/${d}`);
    assert.equal(b.status, 200);
    assert.equal(sha256(Buffer.from(await b.arrayBuffer())), d);
  }
  // And a real client agrees: skopeo copies it back out with the same manifest digest.
  const out = join(work, `out-${name}-${Date.now()}`);
  await skopeo(['copy', '--src-tls-verify=false', `docker://${reg!.host}/${repo}:${tag}`, `oci:${out}:${name}`]);
  assert.equal(refDigest(out, name), digest);
  rmSync(out, { recursive: true, force: true });
}

test('a small image pushed with skopeo pulls back byte for byte', { timeout: 120_000 }, async () => {
  await push(`oci:${layout}:small`, 'full/small:v1');
  await assertServed('full/small', 'v1', 'small');
});

test('a push bigger than the free space: 507 with the reason, for skopeo and over plain HTTP; nothing left behind', { timeout: 180_000 }, async () => {
  disk!.fill(20 * MiB);
  const free = disk!.free();
  const failed = await push(`oci:${layout}:large`, 'full/large:v1', false);
  assert.notEqual(failed.code, 0, 'the push failed');
  assert.match(failed.stderr, /507|insufficient storage|storage is full/i, failed.stderr);
  assertAlive();
  assertNothingLeft('after skopeo');

  // The same at the HTTP level: monolithic, and chunked (the session ends with the chunk).
  const blob = randomBytes(30 * MiB);
  const digest = sha256(blob);
  await assertStorageFull(await fetch(`${reg!.url}/v2/full/http/blobs/uploads/?digest=${digest}`, {
    method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: blob,
  }), /store this blob; nothing was kept/);
  assertNothingLeft('after a monolithic upload');
  const started = await fetch(`${reg!.url}/v2/full/http/blobs/uploads/`, { method: 'POST' });
  assert.equal(started.status, 202);
  const loc = started.headers.get('location')!;
  await assertStorageFull(await fetch(`${reg!.url}${loc}`, {
    method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream' }, body: blob,
  }), /the upload was ended/);
  assert.equal((await fetch(`${reg!.url}${loc}`)).status, 404, 'the upload session is gone');
  assertNothingLeft('after a chunked upload');
  // And curl, which shows what any client sees on the wire.
  const file = join(work, 'blob.bin');
  writeFileSync(file, blob);
  const curl = await run('curl', ['-sS', '-X', 'POST', '-H', 'Content-Type: application/octet-stream', '--data-binary', `@${file}`,
    '-w', '\n%{http_code}', `${reg!.url}/v2/full/curl/blobs/uploads/?digest=${digest}`]);
  assert.match(curl.stdout, /"code":"UNAVAILABLE","message":"the registry's storage is full: [^"]+"[^\n]*\n507$/, curl.stdout);
  assertNothingLeft('after curl');
  assertAlive();
  // What the failures wrote is free again (the index may grow by a few pages).
  assert.ok(disk!.free() >= free - MiB, `free ${disk!.free()}, was ${free}`);
});

test('a build on pull that cannot fit: 507, the process stays up, and the failure is not remembered', { timeout: 300_000 }, async () => {
  disk!.release();
  const pull = () => fetch(`${reg!.url}/v2/big/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
  await assertStorageFull(await pull(), /build the image big; build log: /);
  assertAlive();
  assertNothingLeft('after the build');
  assert.deepEqual(readdirSync(join(data, 'gcroots')), [], 'GC roots removed');
  // Space may come back any second: the next pull builds again rather than answer from memory.
  const builds = async () => ((await (await fetch(`${reg!.url}/nixreg/builds`)).json()) as { builds: unknown[] }).builds.length;
  const before = await builds();
  await assertStorageFull(await pull(), /build the image big/);
  assert.equal(await builds(), before + 1, 'the second pull built again');
  assertAlive();
  assertNothingLeft('after the second build');
});

test('acknowledged content is intact: the first image pulls byte for byte, every row has its file and every file its row', { timeout: 120_000 }, async () => {
  await assertServed('full/small', 'v1', 'small');
  const rows = await checkStore(data, 'after the failures');
  assert.ok(rows >= 3, `${rows} blob rows`);
});

test('once space is back, the push that failed succeeds without a restart', { timeout: 180_000 }, async () => {
  disk!.release();
  const pid = reg!.child.pid;
  await push(`oci:${layout}:large`, 'full/large:v1');
  await assertServed('full/large', 'v1', 'large');
  await assertServed('full/small', 'v1', 'small');
  assert.equal(reg!.child.pid, pid);
  assertAlive();
  await checkStore(data, 'at the end');
});
