// assembleImage on real Nix store paths: blobs and manifests in the store, reuse of
// layers, and the image as a client sees it (skopeo → oci layout → umoci unpack),
// compared with the Nix closure file by file.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createGunzip } from 'node:zlib';
import { assembleImage, type AssembleStats } from '../../src/build/assembly/assemble.js';
import { closureOf } from '../../src/build/nix/nix.js';
import type { ImageSpec, StorePathInfo } from '../../src/build/types.js';
import { Storage } from '../../src/blobs/storage.js';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { startTestRegistry, tempDir } from '../helpers/registry.js';
import { assertSameTree } from './trees.js';

const dirs: string[] = [];
const temp = (p = 'nixreg-asm-') => { const d = tempDir(p); dirs.push(d); return d; };
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

// Test-controlled Nix source (no request data): three packages, `app` and `app2` both
// depend on `lib` and `big`. `lib` holds every awkward kind of entry.
const NIX = `
{ tag }:
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" script ];
  };
  long = builtins.concatStringsSep "" (builtins.genList (_: "x") 150);
in rec {
  big = mk "big-\${tag}" ''
    mkdir -p $out/share
    yes "big data \${tag}" | head -c 3000000 > $out/share/big.txt
  '';
  lib = mk "lib-\${tag}" ''
    mkdir -p $out/bin $out/share/doc "$out/dir with space/ñ" $out/empty-dir
    printf '#!/bin/sh\\necho hello\\n' > $out/bin/hello
    chmod 555 $out/bin/hello
    ln -s hello $out/bin/hi
    printf 'x' > "$out/with space.txt"
    printf 'u' > "$out/ünïcödé-ファイル.txt"
    printf 'l' > "$out/${'$'}{long}"
    printf 'd' > "$out/dir with space/ñ/${'$'}{long}"
    ln -s "/nix/store/${'$'}{long}" $out/long-dangling-link
    ln -s ../bin/hello $out/share/doc/relative
    : > $out/share/doc/empty
    head -c 200000 /dev/zero | tr '\\0' 'z' > $out/share/doc/zzz
  '';
  app = mk "app-\${tag}" ''
    mkdir -p $out/bin $out/share
    printf '#!/bin/sh\\n${'$'}{lib}/bin/hello\\n' > $out/bin/app
    chmod 555 $out/bin/app
    ln -s ${'$'}{lib}/bin/hello $out/bin/lib-hello
    echo ${'$'}{big} > $out/share/big-path
  '';
  app2 = mk "app2-\${tag}" ''
    mkdir -p $out/bin
    echo ${'$'}{lib} ${'$'}{big} > $out/bin/app2
  '';
}
`;

let nixFile: string;
const built: Record<string, string> = {};
let closureApp: StorePathInfo[];
let closureApp2: StorePathInfo[];

before(async () => {
  await requireTool('nix-build');
  nixFile = join(temp(), 'pkgs.nix');
  writeFileSync(nixFile, NIX);
  const tag = createHash('sha256').update(String(process.pid) + Date.now()).digest('hex').slice(0, 8);
  for (const attr of ['app', 'app2', 'lib', 'big']) {
    const r = await run('nix-build', [nixFile, '-A', attr, '--argstr', 'tag', tag, '--no-out-link'], { env: NIX_TEST_ENV });
    built[attr] = r.stdout.trim();
  }
  closureApp = await closureOf([built.app!], { env: NIX_TEST_ENV });
  closureApp2 = await closureOf([built.app2!], { env: NIX_TEST_ENV });
  assert.equal(closureApp.length, 3);
});

const spec = (over: Partial<ImageSpec> = {}): ImageSpec => ({
  name: 'asm', contents: [built.app!, built.lib!], config: { Env: ['A=1'], Cmd: ['/bin/app'] },
  maxLayers: 4, created: '1970-01-01T00:00:01Z', architecture: 'amd64', os: 'linux', ...over,
});

async function sha256File(path: string, gunzip = false): Promise<string> {
  const h = createHash('sha256');
  const src = createReadStream(path);
  for await (const c of gunzip ? src.pipe(createGunzip()) : src) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

const json = (storage: Storage, digest: string) => JSON.parse(readFileSync(storage.blobPath(digest), 'utf8')) as Record<string, any>;

test('assembleImage stores layers, config and both manifests, consistent with each other', async () => {
  const storage = await Storage.open(temp());
  try {
    const stats: AssembleStats = { built: 0, reused: 0, tarBytes: 0 };
    const img = await assembleImage(storage, 'asm/one', spec(), closureApp, 'h'.repeat(32), stats);
    assert.equal(img.hash, 'h'.repeat(32));
    assert.equal(img.manifest.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(img.alternate?.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    const oci = json(storage, img.manifest.digest);
    const docker = json(storage, img.alternate!.digest);
    assert.equal(oci.config.mediaType, 'application/vnd.oci.image.config.v1+json');
    assert.equal(docker.config.mediaType, 'application/vnd.docker.container.image.v1+json');
    assert.equal(oci.config.digest, docker.config.digest, 'one config blob for both');
    assert.ok(oci.layers.length <= 4 && oci.layers.length >= 2);
    assert.equal(stats.built, oci.layers.length);
    const config = json(storage, oci.config.digest);
    assert.deepEqual(Object.keys(config), ['created', 'architecture', 'os', 'config', 'rootfs', 'history']);
    assert.deepEqual(config.config, { Cmd: ['/bin/app'], Env: ['A=1'] });
    assert.equal(config.rootfs.diff_ids.length, oci.layers.length);
    assert.equal(config.history.length, oci.layers.length);
    // Every store path is named in exactly one history entry.
    for (const p of closureApp) assert.equal(config.history.filter((h: any) => h.comment.includes(p.path)).length, 1, p.path);
    for (const [i, l] of (oci.layers as any[]).entries()) {
      assert.equal(l.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
      assert.equal(docker.layers[i].mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip');
      assert.equal(docker.layers[i].digest, l.digest);
      assert.equal(statSync(storage.blobPath(l.digest)).size, l.size);
      assert.equal(await sha256File(storage.blobPath(l.digest)), l.digest);
      assert.equal(await sha256File(storage.blobPath(l.digest), true), config.rootfs.diff_ids[i]);
      assert.equal((await storage.blobSize('asm/one', l.digest)), l.size, 'layer linked into the repository');
    }
    // Served like a pushed image: resolvable by digest, nothing tagged.
    assert.ok((await storage.resolveManifest('asm/one', { digest: img.manifest.digest })));
    assert.ok((await storage.resolveManifest('asm/one', { digest: img.alternate!.digest })));
    assert.deepEqual((await storage.listTags('asm/one', '', 100)), []);
    assert.deepEqual(readdirSync(storage.layout.tmpDir), [], 'no temporary files left');

    // The same build again reuses every layer and gives the same manifests.
    const again: AssembleStats = { built: 0, reused: 0, tarBytes: 0 };
    const img2 = await assembleImage(storage, 'asm/one', spec(), closureApp, 'h'.repeat(32), again);
    assert.deepEqual(img2, img);
    assert.equal(again.built, 0);
    assert.equal(again.reused, oci.layers.length);
  } finally { await storage.close(); }
});

test('the closure is recorded as a referrer of the image manifest: store path → layer, NAR size, references', async () => {
  const a = await Storage.open(temp());
  const b = await Storage.open(temp());
  try {
    const img = await assembleImage(a, 'asm/closure', spec(), closureApp, 'h');
    const rows = await a.referrers('asm/closure', img.manifest.digest, { after: '', limit: 10, artifactType: 'application/vnd.nixreg.closure.v1+json' });
    assert.equal(rows.length, 1, 'one closure referrer');
    const ref = json(a, rows[0]!.digest);
    assert.equal(ref.subject.digest, img.manifest.digest);
    const doc = json(a, ref.layers[0].digest);
    const oci = json(a, img.manifest.digest);
    const config = json(a, oci.config.digest);
    assert.equal(doc.layers.length, oci.layers.length);
    assert.deepEqual(doc.paths.map((p: any) => p.path), closureApp.map((p) => p.path).sort());
    for (const p of doc.paths) {
      const info = closureApp.find((c) => c.path === p.path)!;
      assert.equal(p.narSize, info.narSize);
      assert.ok(config.history[p.layer].comment.includes(p.path), `${p.path} in layer ${p.layer}`);
    }
    const at = (path: string) => doc.paths.findIndex((p: any) => p.path === path);
    assert.deepEqual(doc.roots, [at(built.app!), at(built.lib!)].sort((x, y) => x - y));
    assert.deepEqual(doc.paths[at(built.app!)].references, [at(built.big!), at(built.lib!)].sort((x, y) => x - y));
    // Deterministic: another store, the closure in another order, the same referrer.
    const img2 = await assembleImage(b, 'asm/closure', spec(), [...closureApp].reverse(), 'h');
    assert.equal(img2.manifest.digest, img.manifest.digest);
    const rows2 = await b.referrers('asm/closure', img2.manifest.digest, { after: '', limit: 10 });
    assert.deepEqual(rows2.map((r) => r.digest), [rows[0]!.digest]);
  } finally { a.close(); b.close(); }
});

test('reproducible: a fresh store builds byte-identical blobs and manifests', async () => {
  const a = await Storage.open(temp());
  const b = await Storage.open(temp());
  try {
    for (const maxLayers of [1, 2, 4, 100]) {
      const x = await assembleImage(a, 'r', spec({ maxLayers }), closureApp, 'h');
      const y = await assembleImage(b, 'r', spec({ maxLayers }), [...closureApp].reverse(), 'h');
      assert.deepEqual(x, y, `maxLayers ${maxLayers}`);
      const layers = json(a, x.manifest.digest).layers as unknown[];
      assert.ok(layers.length <= maxLayers, `maxLayers ${maxLayers}: ${layers.length} layers`);
      if (maxLayers === 1) assert.equal(layers.length, 1);
    }
  } finally { await a.close(); await b.close(); }
});

test('two closures sharing store paths share their layer blobs, across repositories', async () => {
  const storage = await Storage.open(temp());
  try {
    const one = await assembleImage(storage, 'share/one', spec(), closureApp, 'h1');
    const stats: AssembleStats = { built: 0, reused: 0, tarBytes: 0 };
    const two = await assembleImage(storage, 'share/two', spec({ contents: [built.app2!] }), closureApp2, 'h2', stats);
    const l1 = (json(storage, one.manifest.digest).layers as any[]).map((l) => l.digest);
    const l2 = (json(storage, two.manifest.digest).layers as any[]).map((l) => l.digest);
    // budget 3: big and lib alone, the app alone: two of three store layers are shared.
    const shared = l1.filter((d) => l2.includes(d));
    assert.equal(shared.length, 2, `shared ${shared.length} of ${l1.length}`);
    assert.equal(stats.reused, 2);
    assert.equal(stats.built, 2, 'app2 and the root filesystem');
    for (const d of shared) assert.ok((await storage.blobSize('share/two', d)) !== undefined, 'reused layer linked into the new repository');
  } finally { await storage.close(); }
});

test('concurrent builds of the same layers build each layer once', async () => {
  const storage = await Storage.open(temp());
  try {
    const stats = [0, 1, 2].map((): AssembleStats => ({ built: 0, reused: 0, tarBytes: 0 }));
    const imgs = await Promise.all(stats.map((s, i) => assembleImage(storage, `conc/${i}`, spec(), closureApp, 'h', s)));
    const layers = (json(storage, imgs[0]!.manifest.digest).layers as unknown[]).length;
    assert.equal(stats.reduce((n, s) => n + s.built, 0), layers, 'each layer built by one caller only');
    for (const img of imgs) assert.equal(img.manifest.digest, imgs[0]!.manifest.digest);
    for (const [i] of imgs.entries()) {
      for (const l of json(storage, imgs[0]!.manifest.digest).layers as any[]) assert.ok((await storage.blobSize(`conc/${i}`, l.digest)) !== undefined);
    }
  } finally { await storage.close(); }
});

test('clients see the Nix closure: skopeo copy + umoci unpack, compared file by file', async () => {
  await requireTool('skopeo');
  await requireTool('umoci');
  const reg = await startTestRegistry({ data: temp() });
  try {
    for (const maxLayers of [1, 4]) {
      const repo = `asm/e2e${maxLayers}`;
      const img = await assembleImage(reg.storage, repo, spec({ maxLayers }), closureApp, 'h');
      await reg.storage.tag(repo, 'latest', img.manifest.digest);
      const host = reg.url.replace(/^http:\/\//, '');
      const work = temp();
      const layout = join(work, 'oci');
      for (const [ref, name] of [[`${repo}@${img.manifest.digest}`, 'bydigest'], [`${repo}:latest`, 'latest']] as const) {
        await run('skopeo', ['--insecure-policy', 'copy', '--src-tls-verify=false', `docker://${host}/${ref}`, `oci:${layout}:${name}`]);
      }
      // The Docker schema2 encoding is served by digest too.
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/${img.alternate!.digest}`, {
        headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'application/vnd.docker.distribution.manifest.v2+json');
      await run('umoci', ['raw', 'unpack', '--image', `${layout}:bydigest`, join(work, 'rootfs')]);
      const rootfs = join(work, 'rootfs');
      for (const p of closureApp) assertSameTree(p.path, join(rootfs, p.path));
      assert.deepEqual(readdirSync(join(rootfs, 'nix/store')).sort(), closureApp.map((p) => p.path.slice('/nix/store/'.length)).sort());
      assert.equal(lstatSync(join(rootfs, 'nix/store')).mode & 0o7777, 0o555);
      assert.deepEqual(readdirSync(rootfs).sort(), ['bin', 'dir with space', 'empty-dir', 'long-dangling-link', 'nix', 'share', 'tmp', 'with space.txt', 'x'.repeat(150), 'ünïcödé-ファイル.txt'].sort());
      assert.equal(lstatSync(join(rootfs, 'tmp')).mode & 0o7777, 0o1777);
      const link = (p: string) => readlinkSync(join(rootfs, p));
      assert.equal(link('bin/app'), `${built.app}/bin/app`);
      assert.equal(link('bin/hello'), `${built.lib}/bin/hello`);
      assert.equal(link('bin/lib-hello'), `${built.app}/bin/lib-hello`);
      assert.equal(link('share/big-path'), `${built.app}/share/big-path`);
      assert.equal(link('share/doc'), `${built.lib}/share/doc`);
      assert.equal(link('ünïcödé-ファイル.txt'), `${built.lib}/ünïcödé-ファイル.txt`);
      assert.equal(link('x'.repeat(150)), `${built.lib}/${'x'.repeat(150)}`);
      // Links resolve inside the unpacked image.
      const inImage = (p: string) => join(rootfs, link(p));
      assert.equal(readFileSync(inImage('bin/hello'), 'utf8'), '#!/bin/sh\necho hello\n');
    }
  } finally { await reg.close(); }
});
