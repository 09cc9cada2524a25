// ingestImageOutput against a real Storage, with hand-made archives: every layout and
// compression it accepts, and every malformation it must refuse without storing anything.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { Storage } from '../../src/blobs/storage.js';
import { ingestImageOutput, isImageOutput } from '../../src/build/ingest/ingest.js';
import { ArchiveError } from '../../src/build/errors.js';
import { registryErrorOf } from '../../src/registry/errors.js';
import { requireTool, run } from '../helpers/exec.js';
import { tempDir } from '../helpers/registry.js';
import { dockerArchive, layerTar, ociArchive, sha, streamScript, tarOf, type Member } from './archives.js';

const REPO = 'ingest/test';
const OPTS = { hash: '0123456789abcdfghijklmnpqrsvwxyz', timeoutMs: 30_000 };
let dir: string;
let storage: Storage;
let n = 0;

before(() => { dir = tempDir('nixreg-ingest-'); });
after(() => { rmSync(dir, { recursive: true, force: true }); });
beforeEach(async () => {
  await storage?.close();
  storage = await Storage.open(join(dir, `data${n++}`));
});
after(() => storage?.close());

async function file(members: Member[] | Buffer, name = `a${n}-${randomBytes(4).toString('hex')}.tar`): Promise<string> {
  const p = join(dir, name);
  writeFileSync(p, Buffer.isBuffer(members) ? members : await tarOf(members));
  return p;
}

function blob(digest: string): Buffer {
  return readFileSync(storage.blobPath(digest));
}

/** Nothing of a refused archive may remain: no blob, no manifest, no temporary file. */
async function assertNothingStored() {
  assert.deepEqual(await storage.index.blobsAfter('', 1000), [], 'no blob rows');
  assert.equal(await storage.repositoryExists(REPO) && (await storage.listTags(REPO, '', 100))!.length > 0, false, 'no tags');
  assert.deepEqual(readdirSync(storage.layout.tmpDir), [], 'no temporary files');
  const blobsDir = storage.layout.blobsDir;
  const files = readdirSync(blobsDir, { recursive: true }).filter((f) => String(f).split('/').length === 3);
  assert.deepEqual(files, [], 'no blob files');
}

async function refused(path: string, message: RegExp) {
  await assert.rejects(ingestImageOutput(storage, REPO, path, OPTS), (e: unknown) => {
    assert.ok(e instanceof ArchiveError, `an ArchiveError, got ${String(e)}`);
    // What a client pulling the image is answered.
    assert.equal(registryErrorOf(e)?.code, 'MANIFEST_UNKNOWN');
    assert.match(e.message, message);
    assert.ok(e.message.includes(path), 'the message names the archive');
    return true;
  });
  await assertNothingStored();
}

describe('accepted archives', () => {
  test('docker archive, uncompressed layers, manifest.json last: schema2 + OCI, config byte for byte', async () => {
    const layers = [await layerTar({ 'a.txt': 'one' }), await layerTar({ 'b.txt': 'two' })];
    const a = dockerArchive(layers);
    const built = await ingestImageOutput(storage, REPO, await file(a.members), OPTS);
    assert.equal(built.hash, OPTS.hash);
    assert.equal(built.manifest.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const m = JSON.parse((await storage.readManifest(built.manifest)).toString());
    assert.equal(m.config.mediaType, 'application/vnd.docker.container.image.v1+json');
    assert.equal(m.config.digest, `sha256:${sha(a.config)}`);
    assert.deepEqual(blob(m.config.digest), a.config);
    assert.equal(m.layers.length, 2);
    for (const [i, l] of m.layers.entries()) {
      assert.equal(l.mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip');
      const stored = blob(l.digest);
      assert.equal(stored.length, l.size);
      assert.deepEqual(gunzipSync(stored), layers[i], 'the stored layer is the gzip of the archive layer');
    }
    assert.equal(built.alternate?.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    const oci = JSON.parse((await storage.readManifest(built.alternate!)).toString());
    assert.equal(oci.config.digest, m.config.digest, 'same config, so the same image ID');
    assert.deepEqual(oci.layers.map((l: { digest: string }) => l.digest), m.layers.map((l: { digest: string }) => l.digest));
    assert.deepEqual(readdirSync(storage.layout.tmpDir), []);
  });

  test('gzip layers keep their bytes; the diff_id is checked on the decompressed tar', async () => {
    const layers = [await layerTar({ 'x': 'gz' })];
    const a = dockerArchive(layers, { gzipLayers: true });
    const gz = a.members[0]!.data as Buffer;
    const built = await ingestImageOutput(storage, REPO, await file(a.members), OPTS);
    const m = JSON.parse((await storage.readManifest(built.manifest)).toString());
    assert.equal(m.layers[0].digest, `sha256:${sha(gz)}`);
    assert.deepEqual(blob(m.layers[0].digest), gz);
  });

  test('a large layer streams through a temporary file (bounded memory), before manifest.json', async () => {
    const big = randomBytes(3 * 1024 * 1024);
    const layers = [await layerTar({ 'big.bin': big })];
    const built = await ingestImageOutput(storage, REPO, await file(dockerArchive(layers).members), OPTS);
    const m = JSON.parse((await storage.readManifest(built.manifest)).toString());
    assert.deepEqual(gunzipSync(blob(m.layers[0].digest)), layers[0]);
  });

  test('a 256 MiB layer is ingested in bounded memory', async (t) => {
    const src = join(dir, 'bigroot');
    mkdirSync(src);
    await run('sh', ['-c', 'head -c 32M /dev/urandom > "$1/rand" && head -c 224M /dev/zero > "$1/zero"', 'sh', src]);
    const cfgDir = join(dir, 'bigimg');
    mkdirSync(cfgDir);
    const layerFile = join(cfgDir, 'layer.tar');
    await run('tar', ['-C', src, '-cf', layerFile, '.']);
    rmSync(src, { recursive: true });
    const diffId = `sha256:${(await run('sha256sum', [layerFile])).stdout.split(' ')[0]}`;
    writeFileSync(join(cfgDir, 'config.json'), JSON.stringify({ rootfs: { type: 'layers', diff_ids: [diffId] } }));
    writeFileSync(join(cfgDir, 'manifest.json'), JSON.stringify([{ Config: 'config.json', Layers: ['layer.tar'] }]));
    const archive = join(dir, 'big.tar');
    // Layer first, manifest.json last, as streamLayeredImage writes them.
    await run('tar', ['-C', cfgDir, '-cf', archive, 'layer.tar', 'config.json', 'manifest.json']);
    rmSync(cfgDir, { recursive: true });

    global.gc?.();
    const base = process.memoryUsage().rss;
    let peak = base;
    const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
    try {
      const built = await ingestImageOutput(storage, REPO, archive, OPTS);
      assert.equal(JSON.parse((await storage.readManifest(built.manifest)).toString()).layers.length, 1);
    } finally {
      clearInterval(timer);
      rmSync(archive);
    }
    const grew = (peak - base) / 1024 / 1024;
    t.diagnostic(`RSS grew by ${grew.toFixed(0)} MiB`);
    assert.ok(grew < 128, `RSS grew by ${grew.toFixed(0)} MiB while ingesting a 256 MiB layer`);
  });

  test('whole-archive gzip and zstd compression (buildImage / buildLayeredImage compressors)', async () => {
    await requireTool('zstd');
    const layers = [await layerTar({ 'c': 'compressed archive' })];
    const plain = await tarOf(dockerArchive(layers).members);
    const gz = await ingestImageOutput(storage, REPO, await file(gzipSync(plain), 'x.tar.gz'), OPTS);
    const zpath = join(dir, 'x.tar.zst');
    await run('zstd', ['-q', '-f', '-o', zpath, await file(plain, 'x-for-zstd.tar')]);
    assert.equal(await isImageOutput(zpath), true);
    const zs = await ingestImageOutput(storage, REPO, zpath, OPTS);
    assert.equal(zs.manifest.digest, gz.manifest.digest, 'same image either way');
  });

  test('docker save aliases: a layer entry that links to another layer in the archive', async () => {
    const layer = await layerTar({ 'same': 'x' });
    const a = dockerArchive([layer, layer]);
    a.members[1] = { name: a.layerPaths[1]!, type: 'symlink', linkname: `../${a.layerPaths[0]}` };
    const built = await ingestImageOutput(storage, REPO, await file(a.members), OPTS);
    const m = JSON.parse((await storage.readManifest(built.manifest)).toString());
    assert.equal(m.layers.length, 2);
    assert.equal(m.layers[0].digest, m.layers[1].digest);
  });

  test('OCI archive with gzip layers: the manifest is kept byte for byte', async () => {
    const a = ociArchive([await layerTar({ 'o': 'oci' }), await layerTar({ 'p': 'two' })], { gzip: true });
    const built = await ingestImageOutput(storage, REPO, await file(a.members), OPTS);
    assert.equal(built.manifest.digest, `sha256:${sha(a.manifest)}`);
    assert.deepEqual(await storage.readManifest(built.manifest), a.manifest);
    for (const [d, b] of a.blobs) if (d !== built.manifest.digest) assert.deepEqual(blob(d), b);
  });

  test('OCI archive with uncompressed layers: layers gzip-compressed, manifest rewritten to match', async () => {
    const layers = [await layerTar({ 'u': 'uncompressed' })];
    const a = ociArchive(layers, { gzip: false });
    const built = await ingestImageOutput(storage, REPO, await file(a.members), OPTS);
    assert.notEqual(built.manifest.digest, `sha256:${sha(a.manifest)}`);
    const m = JSON.parse((await storage.readManifest(built.manifest)).toString());
    assert.equal(m.layers[0].mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
    assert.deepEqual(gunzipSync(blob(m.layers[0].digest)), layers[0]);
    assert.deepEqual(blob(m.config.digest), a.config);
  });

  test('a stream script: run without a shell, its stdout ingested', async () => {
    const archive = await file(dockerArchive([await layerTar({ 's': 'streamed' })]).members);
    const sdir = join(dir, 'script-ok');
    mkdirSync(sdir);
    const script = streamScript(sdir, archive);
    assert.equal(await isImageOutput(script), true);
    const built = await ingestImageOutput(storage, REPO, script, OPTS);
    assert.equal(built.manifest.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  });

  test('isImageOutput: archives and stream scripts yes; packages and other executables no', async () => {
    const pkg = join(dir, 'pkg');
    mkdirSync(pkg);
    const exe = join(dir, '0123456789abcdfghijklmnpqrsvwxyz-hello');
    writeFileSync(exe, '#!/bin/sh\necho hi\n');
    chmodSync(exe, 0o755);
    assert.equal(await isImageOutput(pkg), false);
    assert.equal(await isImageOutput(exe), false);
    assert.equal(await isImageOutput(join(dir, 'missing')), false);
    assert.equal(await isImageOutput(await file(await layerTar({ a: 'b' }))), true);
    assert.equal(await isImageOutput(await file(gzipSync(await layerTar({ a: 'b' })), 'y.tar.gz')), true);
  });
});

describe('refused archives: a clear error, and nothing stored', () => {
  test('truncated in the middle of a layer', async () => {
    const tarball = await tarOf(dockerArchive([await layerTar({ 'big': randomBytes(200_000) })]).members);
    await refused(await file(tarball.subarray(0, 100_000)), /truncated|Unexpected end/i);
  });

  test('truncated gzip archive', async () => {
    const tarball = gzipSync(await tarOf(dockerArchive([await layerTar({ 'big': randomBytes(2_000_000) })]).members));
    await refused(await file(tarball.subarray(0, tarball.length - 5000), 'cut.tar.gz'), /truncated|unexpected end/i);
  });

  test('missing manifest.json', async () => {
    const a = dockerArchive([await layerTar({ 'a': 'b' })]);
    await refused(await file(a.members.filter((m) => m.name !== 'manifest.json')), /neither manifest\.json .* nor index\.json/);
  });

  test('a layer whose diff_id does not match the config', async () => {
    const a = dockerArchive([await layerTar({ 'a': 'b' })], { diffIds: [`sha256:${sha('something else')}`] });
    await refused(await file(a.members), /layer 1 \(layer0\/layer\.tar\) has diff_id sha256:[0-9a-f]{64}, but the config's rootfs\.diff_ids\[0\] is/);
  });

  test('a large layer whose diff_id does not match (streamed path): its temporary file is removed', async () => {
    const a = dockerArchive([await layerTar({ 'big': randomBytes(2 * 1024 * 1024) })], { diffIds: [`sha256:${sha('x')}`] });
    await refused(await file(a.members), /has diff_id/);
  });

  test('path traversal in the archive\'s own names: ../ and absolute paths', async () => {
    const a = dockerArchive([await layerTar({ 'a': 'b' })]);
    await refused(await file([{ name: '../evil', data: 'x' }, ...a.members]), /"\.\.\/evil" climbs out of the archive/);
    await refused(await file([{ name: '/etc/evil', data: 'x' }, ...a.members]), /"\/etc\/evil" has an absolute path/);
    // The manifest may not point outside either.
    const m = a.members.map((x) => (x.name === 'manifest.json'
      ? { ...x, data: String(x.data).replace('layer0/layer.tar', '../../layer0/layer.tar') } : x));
    await refused(await file(m), /climbs out of the archive/);
  });

  test('a layer entry that is a symlink out of the archive', async () => {
    const a = dockerArchive([await layerTar({ 'a': 'b' })]);
    const abs = a.members.map((m) => (m.name === a.layerPaths[0] ? { name: m.name, type: 'symlink' as const, linkname: '/etc/passwd' } : m));
    await refused(await file(abs), /layer0\/layer\.tar is a symlink to the absolute path "\/etc\/passwd"/);
    const rel = a.members.map((m) => (m.name === a.layerPaths[0] ? { name: m.name, type: 'symlink' as const, linkname: '../../etc/passwd' } : m));
    await refused(await file(rel), /is a symlink to "\.\.\/\.\.\/etc\/passwd", outside the archive/);
    const dangling = a.members.map((m) => (m.name === a.layerPaths[0] ? { name: m.name, type: 'symlink' as const, linkname: 'nothing' } : m));
    await refused(await file(dangling), /layer 1: layer0\/layer\.tar is a link to layer0\/nothing, which is not a file in the archive/);
  });

  test('an OCI blob whose content does not match its digest', async () => {
    const a = ociArchive([await layerTar({ 'o': 'oci' })], { gzip: true });
    const layerDigest = [...a.blobs.keys()][1]!;
    const members = a.members.map((m) => (m.name === `blobs/sha256/${layerDigest.slice(7)}` ? { ...m, data: gzipSync(Buffer.from('tampered')) } : m));
    await refused(await file(members), /layer 1: blobs\/sha256\/[0-9a-f]{64} has digest sha256:/);
  });

  test('an OCI manifest to be rewritten (uncompressed layers) with a field nested 10,000 deep', async () => {
    const a = ociArchive([await layerTar({ 'u': 'deep' })], { gzip: false });
    const body = Buffer.from(`${a.manifest.toString().slice(0, -1)},"x":${'['.repeat(10_000)}${']'.repeat(10_000)}}`);
    const d = sha(body);
    const members = a.members.map((m) => (m.name === 'index.json'
      ? { ...m, data: String(m.data).replace(sha(a.manifest), d).replace(`"size":${a.manifest.length}`, `"size":${body.length}`) } : m));
    await refused(await file([...members, { name: `blobs/sha256/${d}`, data: body }]), /is nested too deeply to be rewritten|nests deeper than 64 levels/);
  });

  test('not an archive, or an empty file', async () => {
    await refused(await file(Buffer.from('just text, no tar\n'.repeat(100))), /not a tar archive/);
    await refused(await file(Buffer.alloc(0)), /the archive is empty/);
  });

  test('special files and duplicate names', async () => {
    const a = dockerArchive([await layerTar({ 'a': 'b' })]);
    await refused(await file([{ name: 'pipe', type: 'fifo' }, ...a.members]), /entry pipe is a fifo/);
    await refused(await file([...a.members, { name: 'manifest.json', data: '[]' }]), /entry manifest\.json appears twice/);
  });

  test('a stream script that fails, and one that runs too long', async () => {
    const sdir = join(dir, 'script-bad');
    mkdirSync(sdir);
    const failing = streamScript(sdir, '', 'echo "no closure for you" >&2; exit 3');
    await refused(failing, /stream script .* failed \(exit 3\): no closure for you/);
    rmSync(failing);
    const slow = streamScript(sdir, '', 'sleep 30');
    const t0 = Date.now();
    await assert.rejects(ingestImageOutput(storage, REPO, slow, { ...OPTS, timeoutMs: 500 }), /took longer than 500 ms/);
    assert.ok(Date.now() - t0 < 10_000, 'the script was killed');
    await assertNothingStored();
  });
});
