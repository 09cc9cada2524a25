// skopeo in both directions (oci: layouts and docker-archive:), digests preserved,
// `skopeo inspect`, and a multi-arch index copied with --all. Layouts are made with umoci.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { requireTool, run } from '../helpers/exec.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { busyboxRoot, getManifest } from './fixtures.js';

let reg: RegistryProcess;
let work: string;
let root: string;
let layout: string;
/** digest of each image in `layout`, by ref name */
const refs: Record<string, string> = {};

interface OciIndex { manifests: { mediaType: string; digest: string; size: number; annotations?: Record<string, string>; platform?: object }[] }

function ociIndex(dir: string): OciIndex {
  return JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as OciIndex;
}
function refDigest(dir: string, ref: string): string {
  const m = ociIndex(dir).manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === ref);
  assert.ok(m, `no ${ref} in ${dir}`);
  return m.digest;
}
function ociBlob(dir: string, digest: string): Buffer {
  return readFileSync(join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)));
}

const skopeo = (args: string[]) => run('skopeo', ['--insecure-policy', ...args]);
const push = (src: string, dest: string, all = false) =>
  skopeo(['copy', ...(all ? ['--all'] : []), '--dest-tls-verify=false', src, `docker://${reg.host}/${dest}`]);
const pull = (src: string, dest: string, all = false) =>
  skopeo(['copy', ...(all ? ['--all'] : []), '--src-tls-verify=false', `docker://${reg.host}/${src}`, dest]);
async function inspect(ref: string, ...extra: string[]) {
  const r = await skopeo(['inspect', '--tls-verify=false', ...extra, `docker://${reg.host}/${ref}`]);
  return JSON.parse(r.stdout) as { Digest: string; Architecture: string; Layers: string[]; mediaType?: string; manifests?: unknown[] };
}

before(async () => {
  await requireTool('skopeo');
  await requireTool('umoci');
  work = tempDir('nixreg-skopeo-');
  root = busyboxRoot();
  layout = join(work, 'layout');
  await run('umoci', ['init', '--layout', layout]);
  // Two single-layer images that differ only in platform, and an index over both.
  for (const [ref, arch] of [['amd', 'amd64'], ['arm', 'arm64']] as const) {
    await run('umoci', ['new', '--image', `${layout}:${ref}`]);
    await run('umoci', ['insert', '--image', `${layout}:${ref}`, join(root, 'bin'), '/bin']);
    await run('umoci', ['config', '--image', `${layout}:${ref}`, '--architecture', arch, '--os', 'linux',
      '--config.cmd', '/bin/busybox', '--config.cmd', 'echo', '--config.cmd', arch]);
    refs[ref] = refDigest(layout, ref);
  }
  const idx = ociIndex(layout);
  const index = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: (['amd', 'arm'] as const).map((ref, i) => {
      const d = idx.manifests.find((m) => m.digest === refs[ref])!;
      return { mediaType: d.mediaType, digest: d.digest, size: d.size, platform: { architecture: i ? 'arm64' : 'amd64', os: 'linux' } };
    }),
  }));
  const indexDigest = `sha256:${createHash('sha256').update(index).digest('hex')}`;
  writeFileSync(join(layout, 'blobs', 'sha256', indexDigest.slice(7)), index);
  idx.manifests.push({ mediaType: 'application/vnd.oci.image.index.v1+json', digest: indexDigest, size: index.length,
    annotations: { 'org.opencontainers.image.ref.name': 'multi' } });
  writeFileSync(join(layout, 'index.json'), JSON.stringify(idx));
  refs.multi = indexDigest;
  reg = await spawnRegistry();
});

after(async () => {
  await reg?.stop();
  for (const d of [work, root, reg?.data]) if (d) rmSync(d, { recursive: true, force: true });
});

test('skopeo copy oci: → nixreg keeps the manifest digest; skopeo inspect reads it back', { timeout: 120_000 }, async () => {
  await push(`oci:${layout}:amd`, 'sk/oci:amd');
  const info = await inspect('sk/oci:amd');
  assert.equal(info.Digest, refs.amd);
  assert.equal(info.Architecture, 'amd64');
  const manifest = JSON.parse(ociBlob(layout, refs.amd!).toString()) as { layers: { digest: string }[] };
  assert.deepEqual(info.Layers, manifest.layers.map((l) => l.digest));
  // Byte for byte: the registry serves exactly what the layout holds.
  const r = await fetch(`${reg.url}/v2/sk/oci/manifests/amd`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
  assert.equal(r.status, 200);
  assert.deepEqual(Buffer.from(await r.arrayBuffer()), ociBlob(layout, refs.amd!));
});

test('skopeo copy nixreg → oci: and → docker-archive:, and docker-archive: → nixreg', { timeout: 120_000 }, async () => {
  await push(`oci:${layout}:amd`, 'sk/out:amd');
  const out = join(work, 'out');
  await pull('sk/out:amd', `oci:${out}:copy`);
  const digest = refDigest(out, 'copy');
  assert.equal(digest, refs.amd, 'oci → registry → oci keeps the manifest digest');
  const manifest = JSON.parse(ociBlob(out, digest).toString()) as { config: { digest: string }; layers: { digest: string }[] };
  for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
    assert.equal(`sha256:${createHash('sha256').update(ociBlob(out, d)).digest('hex')}`, d, 'every blob arrived intact');
  }

  const archive = join(work, 'image.tar');
  await pull('sk/out:amd', `docker-archive:${archive}:sk/archive:amd`);
  const archived = JSON.parse((await skopeo(['inspect', '--raw', `docker-archive:${archive}`])).stdout) as { config: { digest: string } };
  assert.equal(archived.config.digest, manifest.config.digest, 'the image config survives the archive unchanged');

  await push(`docker-archive:${archive}`, 'sk/from-archive:amd');
  const back = await getManifest(reg.url, 'sk/from-archive', 'amd');
  assert.equal(back.status, 200);
  assert.equal(back.body.config?.digest, manifest.config.digest);
  const info = await inspect('sk/from-archive:amd');
  assert.equal(info.Digest, back.digest);
  assert.equal(info.Architecture, 'amd64');
  // docker-archive holds uncompressed layers; pulling them back out must reproduce the archive's layers.
  const again = join(work, 'again.tar');
  await pull('sk/from-archive:amd', `docker-archive:${again}:sk/archive:amd`);
  const againManifest = JSON.parse((await skopeo(['inspect', '--raw', `docker-archive:${again}`])).stdout) as { config: { digest: string }; layers: { digest: string }[] };
  const firstManifest = JSON.parse((await skopeo(['inspect', '--raw', `docker-archive:${archive}`])).stdout) as { layers: { digest: string }[] };
  assert.deepEqual(againManifest.layers.map((l) => l.digest), firstManifest.layers.map((l) => l.digest));
});

test('skopeo copy --all: a multi-arch OCI index goes in and comes out with the same digests', { timeout: 120_000 }, async () => {
  await push(`oci:${layout}:multi`, 'sk/multi:v1', true);
  const idx = await getManifest(reg.url, 'sk/multi', 'v1');
  assert.equal(idx.status, 200);
  assert.equal(idx.digest, refs.multi);
  assert.deepEqual(idx.body.manifests?.map((m) => m.digest), [refs.amd, refs.arm]);
  for (const d of [refs.amd!, refs.arm!]) assert.equal((await getManifest(reg.url, 'sk/multi', d)).status, 200);

  const raw = JSON.parse((await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/sk/multi:v1`])).stdout) as { manifests: unknown[] };
  assert.equal(raw.manifests.length, 2);
  assert.equal((await inspect('sk/multi:v1', '--override-arch', 'arm64')).Architecture, 'arm64');
  assert.equal((await inspect('sk/multi:v1', '--override-arch', 'amd64')).Digest, refs.multi, 'Digest names the index');

  const out = join(work, 'multi-out');
  await pull('sk/multi:v1', `oci:${out}:multi`, true);
  assert.equal(refDigest(out, 'multi'), refs.multi);
  for (const d of [refs.amd!, refs.arm!]) assert.deepEqual(ociBlob(out, d), ociBlob(layout, d));
});

test('skopeo inspect of a missing repository or tag fails with the OCI error', { timeout: 120_000 }, async () => {
  const probe = (ref: string) => run('skopeo', ['--insecure-policy', 'inspect', '--tls-verify=false', `docker://${reg.host}/${ref}`], { check: false });
  const noRepo = await probe('sk/nothing:here');
  assert.notEqual(noRepo.code, 0);
  assert.match(noRepo.stderr, /name unknown/i, noRepo.stderr);
  await push(`oci:${layout}:amd`, 'sk/tagged:amd');
  const noTag = await probe('sk/tagged:missing');
  assert.notEqual(noTag.code, 0);
  assert.match(noTag.stderr, /manifest unknown/i, noTag.stderr);
});
