// Real clients against a real nixreg process: docker push/pull/run (multi-layer,
// dedup, cross-repository mount, pull by digest, delete), and containerd's ctr.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { startContainerd, type Containerd } from '../helpers/containerd.js';
import { run } from '../helpers/exec.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { busyboxRoot, getManifest, multiLayerContext, re } from './fixtures.js';

let dockerd: Dockerd;
let containerd: Containerd;
let reg: RegistryProcess;
const cleanups: (() => void)[] = [];

before(async () => {
  const started = await Promise.allSettled([startDockerd(), startContainerd(), spawnRegistry()]);
  // Whatever did start is stopped in after(), even when another part failed.
  if (started[0].status === 'fulfilled') dockerd = started[0].value;
  if (started[1].status === 'fulfilled') containerd = started[1].value;
  if (started[2].status === 'fulfilled') reg = started[2].value;
  for (const s of started) if (s.status === 'rejected') throw s.reason;
});

after(async () => {
  await Promise.allSettled([dockerd?.stop(), containerd?.stop(), reg?.stop()]);
  for (const c of cleanups) c();
  if (reg) rmSync(reg.data, { recursive: true, force: true });
});

/** `docker build` with the classic builder: works offline with FROM scratch. */
async function build(tag: string, greeting: string): Promise<void> {
  const ctx = multiLayerContext(greeting);
  cleanups.push(ctx.cleanup);
  await run('docker', ['build', '-q', '-t', tag, ctx.dir], { env: { ...dockerd.env, DOCKER_BUILDKIT: '0' } });
}

function pushedDigest(out: string): string {
  const m = /digest: (sha256:[a-f0-9]{64}) size: \d+/.exec(out);
  assert.ok(m, `no digest in docker push output:\n${out}`);
  return m[1]!;
}

let multiRef = '';
let multiDigest = '';

test('docker: push a multi-layer image, pull it by tag and by digest, run it', { timeout: 180_000 }, async () => {
  multiRef = `${reg.host}/e2e/multi:v1`;
  await build(multiRef, 'hello from a multi-layer image');
  const push = await dockerd.docker(['push', multiRef]);
  assert.match(push.stdout, /Pushed/);
  multiDigest = pushedDigest(push.stdout);

  const m = await getManifest(reg.url, 'e2e/multi', 'v1');
  assert.equal(m.status, 200);
  assert.equal(m.digest, multiDigest);
  assert.equal(m.body.layers?.length, 3, 'one layer per COPY');

  await dockerd.docker(['rmi', multiRef]);
  await dockerd.docker(['pull', multiRef]);
  const byTag = await dockerd.docker(['run', '--rm', '--network', 'none', multiRef]);
  assert.equal(byTag.stdout.trim(), 'hello from a multi-layer image');

  const byDigestRef = `${reg.host}/e2e/multi@${multiDigest}`;
  await dockerd.docker(['rmi', multiRef]);
  const pull = await dockerd.docker(['pull', byDigestRef]);
  assert.match(pull.stdout, re(multiDigest));
  const byDigest = await dockerd.docker(['run', '--rm', '--network', 'none', byDigestRef, '/bin/busybox', 'wc', '-c', '/data/random.bin']);
  assert.match(byDigest.stdout, /^262144 /);
  await dockerd.docker(['tag', byDigestRef, multiRef]);
});

test('docker: pushing again uploads nothing ("Layer already exists")', { timeout: 180_000 }, async () => {
  assert.ok(multiRef, 'needs the first test');
  const again = await dockerd.docker(['push', multiRef]);
  assert.equal((again.stdout.match(/Layer already exists/g) ?? []).length, 3, again.stdout);
  assert.doesNotMatch(again.stdout, /Pushed/);
  assert.equal(pushedDigest(again.stdout), multiDigest, 'same manifest, same digest');
});

test('docker: a push to a second repository mounts the layers across repositories', { timeout: 180_000 }, async () => {
  assert.ok(multiRef, 'needs the first test');
  const other = `${reg.host}/e2e/other:copy`;
  await dockerd.docker(['tag', multiRef, other]);
  const push = await dockerd.docker(['push', other]);
  assert.equal((push.stdout.match(/Mounted from e2e\/multi/g) ?? []).length, 3, push.stdout);
  assert.equal(pushedDigest(push.stdout), multiDigest);
  // The mount made each layer visible in the second repository.
  const m = await getManifest(reg.url, 'e2e/other', 'copy');
  for (const l of m.body.layers ?? []) {
    const head = await fetch(`${reg.url}/v2/e2e/other/blobs/${l.digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(Number(head.headers.get('content-length')), l.size);
  }
  // And exactly one file per blob on disk: a mount is a link, not a copy.
  const files = await run('find', [join(reg.data, 'blobs'), '-type', 'f']);
  const names = files.stdout.trim().split('\n').map((f) => f.slice(f.lastIndexOf('/') + 1));
  assert.equal(new Set(names).size, names.length);
});

test('docker: after the manifest is deleted, pull fails with a clear error', { timeout: 180_000 }, async () => {
  const ref = `${reg.host}/e2e/doomed:v1`;
  await build(ref, 'doomed');
  const digest = pushedDigest((await dockerd.docker(['push', ref])).stdout);
  const del = await fetch(`${reg.url}/v2/e2e/doomed/manifests/${digest}`, { method: 'DELETE' });
  assert.equal(del.status, 202);
  await dockerd.docker(['rmi', ref]);

  const byTag = await dockerd.docker(['pull', ref], { check: false });
  assert.notEqual(byTag.code, 0);
  assert.match(byTag.stderr, /manifest unknown|not found/i, byTag.stderr);
  const byDigest = await dockerd.docker(['pull', `${reg.host}/e2e/doomed@${digest}`], { check: false });
  assert.notEqual(byDigest.code, 0);
  assert.match(byDigest.stderr, /manifest unknown|not found/i, byDigest.stderr);

  // The OCI error body, and the registry keeps serving everything else.
  const r = await getManifest(reg.url, 'e2e/doomed', digest);
  assert.equal(r.status, 404);
  assert.equal((r.body as unknown as { errors: { code: string }[] }).errors[0]!.code, 'MANIFEST_UNKNOWN');
  assert.equal((await getManifest(reg.url, 'e2e/multi', 'v1')).status, 200);
});

test('docker import, push, pull, run: a single-layer image from a tarball', { timeout: 180_000 }, async () => {
  const root = busyboxRoot();
  const tarDir = tempDir();
  cleanups.push(() => { rmSync(root, { recursive: true, force: true }); rmSync(tarDir, { recursive: true, force: true }); });
  const tarball = join(tarDir, 'rootfs.tar');
  await run('tar', ['-C', root, '-cf', tarball, '.']);
  const ref = `${reg.host}/e2e/busybox:1`;
  await dockerd.docker(['import', '-c', 'CMD ["/bin/busybox","echo","hello from nixreg"]', tarball, ref]);
  await dockerd.docker(['push', ref]);
  await dockerd.docker(['rmi', ref]);
  await dockerd.docker(['pull', ref]);
  const out = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
  assert.equal(out.stdout.trim(), 'hello from nixreg');
});

test('containerd: ctr pulls the multi-layer image over plain HTTP and runs it', { timeout: 180_000 }, async () => {
  assert.ok(multiRef, 'needs the first test');
  await containerd.ctr(['image', 'pull', '--plain-http', multiRef]);
  const list = await containerd.ctr(['image', 'ls']);
  const line = list.stdout.split('\n').find((l) => l.startsWith(`${multiRef} `));
  assert.ok(line, list.stdout);
  assert.match(line, re(multiDigest), 'containerd sees the digest docker pushed');
  // Every blob of the image is in containerd's content store, complete.
  const check = await containerd.ctr(['image', 'check']);
  const row = check.stdout.split('\n').find((l) => l.startsWith(`${multiRef} `));
  assert.ok(row, check.stdout);
  assert.match(row, /complete \(4\/4\)/, row); // config and three layers
  // Unpacked and run through runc, with no network.
  const out = await containerd.ctr(['run', '--rm', '--snapshotter', 'native', multiRef, 'e2e-multi']);
  assert.equal(out.stdout.trim(), 'hello from a multi-layer image');
});
