// Build on pull against the real Nix CLI, through the registry's HTTP API (in process):
// tags, caching, single flight, errors, logs, reproducibility, layer sharing.
import assert from 'node:assert/strict';
import { readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { nixProcessCount } from '../../src/build/nix/nix.js';
import { requireTool } from '../helpers/exec.js';
import { dockerArchive, layerTar, tarOf } from '../ingest/archives.js';
import { DOCKER, Images, OCI, PKGS, errorOf, get, nonce, startNixRegistry } from './helpers.js';

type Reg = Awaited<ReturnType<typeof startNixRegistry>>;

interface Manifest { config: { digest: string }; layers: { digest: string }[] }

let images: Images;
let r: Reg;

before(async () => {
  await requireTool('nix-instantiate');
  await requireTool('nix-store');
  images = new Images();
  r = await startNixRegistry(images.dir);
});
after(async () => {
  await r?.stop();
  images?.cleanup();
});

const hashTags = (tags: string[]) => tags.filter((t) => /^[0-9a-df-np-sv-z]{32}$/.test(t));

describe('tags', () => {
  test('latest builds and serves OCI, the hash tag is listed and served without Nix, Docker clients get schema2', async () => {
    images.image('hello.nix', { nonce: nonce(), greeting: 'tags test' });
    // Before any build, the repository exists and answers latest.
    const unbuilt = await get(`${r.url}/v2/hello/tags/list`);
    assert.equal(unbuilt.status, 200, unbuilt.text);
    assert.deepEqual(unbuilt.json().tags, ['latest']);
    const latest = await get(`${r.url}/v2/hello/manifests/latest`);
    assert.equal(latest.status, 200, latest.text);
    assert.equal(latest.headers.get('content-type'), OCI);
    const digest = latest.headers.get('docker-content-digest')!;

    const tags = (await get(`${r.url}/v2/hello/tags/list`)).json().tags as string[];
    const hashes = hashTags(tags);
    assert.ok(tags.includes('latest'), JSON.stringify(tags));
    assert.equal(hashes.length, 1, JSON.stringify(tags));

    const before = nixProcessCount();
    const byHash = await get(`${r.url}/v2/hello/manifests/${hashes[0]}`);
    assert.equal(byHash.status, 200, byHash.text);
    assert.equal(byHash.headers.get('docker-content-digest'), digest);
    const docker = await get(`${r.url}/v2/hello/manifests/${hashes[0]}`, DOCKER);
    assert.equal(docker.status, 200, docker.text);
    assert.equal(docker.headers.get('content-type'), DOCKER);
    assert.notEqual(docker.headers.get('docker-content-digest'), digest);
    assert.equal(nixProcessCount(), before, 'a built hash must be served without running Nix');

    // By digest: plain storage.
    const byDigest = await get(`${r.url}/v2/hello/manifests/${digest}`);
    assert.equal(byDigest.status, 200);

    // The config carries the spec and the platform of the derivations' system.
    const m = latest.json() as Manifest;
    const cfg = (await get(`${r.url}/v2/hello/blobs/${m.config.digest}`)).json();
    assert.deepEqual(cfg.config.Cmd, ['/bin/hello']);
    assert.equal(cfg.os, 'linux');
    assert.equal(cfg.architecture, process.arch === 'arm64' ? 'arm64' : 'amd64');
    // The GC roots that protected the closure during the build are gone.
    assert.deepEqual(readdirSync(join(r.reg.data, 'gcroots')), []);
  });

  test('an unknown hash names the hash the expression yields now; other tags are refused', async () => {
    images.image('other.nix', { nonce: nonce() });
    const unknown = await get(`${r.url}/v2/other/manifests/${'0'.repeat(32)}`);
    assert.equal(unknown.status, 404);
    const e = errorOf(unknown);
    assert.equal(e.code, 'MANIFEST_UNKNOWN');
    const current = /evaluates to ([0-9a-z]{32})/.exec(e.message)?.[1];
    assert.ok(current, e.message);
    // …and that hash is then buildable by name.
    const ok = await get(`${r.url}/v2/other/manifests/${current}`);
    assert.equal(ok.status, 200, ok.text);
    const bad = await get(`${r.url}/v2/other/manifests/v1`);
    assert.equal(bad.status, 404);
    assert.match(errorOf(bad).message, /latest/);
  });
});

describe('caching and single flight', () => {
  test('20 concurrent pulls of an unbuilt image share one evaluation and one build', async () => {
    images.image('crowd.nix', { nonce: nonce() });
    const { builder: b, evaluator: e } = r.source;
    const [evals, builds] = [e.evaluationsStarted, b.buildsStarted];
    const res = await Promise.all(Array.from({ length: 20 }, () => get(`${r.url}/v2/crowd/manifests/latest`)));
    for (const x of res) assert.equal(x.status, 200, x.text);
    assert.equal(new Set(res.map((x) => x.headers.get('docker-content-digest'))).size, 1);
    assert.equal(e.evaluationsStarted - evals, 1);
    assert.equal(b.buildsStarted - builds, 1);
    const records = (await get(`${r.url}/nixreg/builds`)).json().builds.filter((x: { repository: string }) => x.repository === 'crowd');
    assert.equal(records.length, 1);
    assert.equal(records[0].status, 'done');
  });

  test('HEAD then GET costs one evaluation; a changed file is evaluated again at once', async () => {
    const file = images.image('ttl.nix', { nonce: nonce(), greeting: 'one' });
    const e = r.source.evaluator;
    const evals = e.evaluationsStarted;
    const head = await get(`${r.url}/v2/ttl/manifests/latest`, `${OCI}, ${DOCKER}`, 'HEAD');
    assert.equal(head.status, 200);
    const first = await get(`${r.url}/v2/ttl/manifests/latest`);
    assert.equal(e.evaluationsStarted - evals, 1);
    images.image('ttl.nix', { nonce: nonce(), greeting: 'two' });
    // Same second, maybe the same size: the inode or mtime must still tell.
    utimesSync(file, new Date(), new Date(Date.now() + 5000));
    const second = await get(`${r.url}/v2/ttl/manifests/latest`);
    assert.equal(e.evaluationsStarted - evals, 2);
    assert.notEqual(second.headers.get('docker-content-digest'), first.headers.get('docker-content-digest'));
    const tags = hashTags((await get(`${r.url}/v2/ttl/tags/list`)).json().tags);
    assert.equal(tags.length, 2, 'both builds keep their hash tags');
  });
});

describe('errors', () => {
  test('missing file is NAME_UNKNOWN; evaluation errors carry the Nix error', async () => {
    const missing = await get(`${r.url}/v2/nothere/manifests/latest`);
    assert.equal(missing.status, 404);
    assert.equal(errorOf(missing).code, 'NAME_UNKNOWN');

    images.write('undef.nix', '{ contents = [ undefinedThing ]; }\n');
    const undef = await get(`${r.url}/v2/undef/manifests/latest`);
    assert.equal(undef.status, 404);
    assert.equal(errorOf(undef).code, 'MANIFEST_UNKNOWN');
    assert.match(errorOf(undef).message, /undefined variable 'undefinedThing'/);
    assert.ok(errorOf(undef).message.length < 2000, 'the essential lines, not the whole trace');

    images.write('unknownkey.nix', '{ contents = [ ]; entrypoint = [ "x" ]; }\n');
    assert.match(errorOf(await get(`${r.url}/v2/unknownkey/manifests/latest`)).message, /unknown image spec attribute\(s\): entrypoint/);

    images.write('badcmd.nix', '{ contents = [ ]; config.Cmd = "echo hi"; }\n');
    assert.match(errorOf(await get(`${r.url}/v2/badcmd/manifests/latest`)).message, /config\.Cmd must be a list of strings/);

    images.write('badcfg.nix', '{ contents = [ ]; config.Cmnd = [ "x" ]; }\n');
    assert.match(errorOf(await get(`${r.url}/v2/badcfg/manifests/latest`)).message, /unknown config attribute Cmnd/);

    images.write('needsargs.nix', '{ pkgs }: { contents = [ ]; }\n');
    assert.match(errorOf(await get(`${r.url}/v2/needsargs/manifests/latest`)).message, /required arguments \(pkgs\)/);
  });

  test('a build failure names the derivation and links its log; it is cached until the file changes', async () => {
    const file = images.image('broken.nix', { pkg: 'broken', nonce: nonce() });
    const b = r.source.builder;
    const builds = b.buildsStarted;
    const res = await get(`${r.url}/v2/broken/manifests/latest`);
    assert.equal(res.status, 404, res.text);
    const e = errorOf(res);
    assert.match(e.message, /\/nix\/store\/[0-9a-z]{32}-broken\.drv/);
    const logUrl = /build log: (\S+)/.exec(e.message)?.[1];
    assert.ok(logUrl?.startsWith(r.url), e.message);
    const log = await get(logUrl!);
    assert.equal(log.status, 200);
    assert.match(log.headers.get('content-type')!, /^text\/plain/);
    assert.match(log.text, /fatal: this package is broken on purpose/);
    const rec = (await get(`${r.url}/nixreg/builds`)).json().builds.find((x: { repository: string }) => x.repository === 'broken');
    assert.equal(rec.status, 'failed');
    assert.match(rec.drv, /-broken\.drv$/);

    // Negative cache: the same answer without another build…
    const again = await get(`${r.url}/v2/broken/manifests/latest`);
    assert.equal(errorOf(again).message, e.message);
    assert.equal(b.buildsStarted - builds, 1);
    // …until the file changes.
    utimesSync(file, new Date(), new Date(Date.now() + 10_000));
    await get(`${r.url}/v2/broken/manifests/latest`);
    assert.equal(b.buildsStarted - builds, 2);
  });

  test('an expression-backed repository is read-only', async () => {
    images.image('ro.nix', { nonce: '' });
    const put = await fetch(`${r.url}/v2/ro/manifests/latest`, {
      method: 'PUT', headers: { 'content-type': OCI }, body: JSON.stringify({ schemaVersion: 2, mediaType: OCI, config: {}, layers: [] }),
    });
    assert.equal(put.status, 403);
    assert.equal(((await put.json()) as { errors: { code: string }[] }).errors[0]!.code, 'DENIED');
    const upload = await fetch(`${r.url}/v2/ro/blobs/uploads/`, { method: 'POST' });
    assert.equal(upload.status, 403);
  });
});

describe('resolution', () => {
  test('names with slashes map to subfolders and default.nix', async () => {
    images.image('team/app.nix', { nonce: '' });
    images.image('tools/default.nix', { nonce: '' });
    for (const name of ['team/app', 'tools']) {
      const res = await get(`${r.url}/v2/${name}/manifests/latest`);
      assert.equal(res.status, 200, `${name}: ${res.text}`);
    }
    const none = await get(`${r.url}/v2/team/manifests/latest`);
    assert.equal(errorOf(none).code, 'NAME_UNKNOWN');
  });
});

describe('images', () => {
  test('the same expression gives identical digests, rebuilt into a fresh data dir', async () => {
    images.image('repro.nix', { nonce: nonce() });
    const a = await get(`${r.url}/v2/repro/manifests/latest`);
    assert.equal(a.status, 200, a.text);
    const r2 = await startNixRegistry(images.dir);
    try {
      const b = await get(`${r2.url}/v2/repro/manifests/latest`);
      assert.equal(b.status, 200, b.text);
      assert.equal(b.headers.get('docker-content-digest'), a.headers.get('docker-content-digest'));
      assert.equal(b.text, a.text);
      assert.equal(r2.source.builder.buildsStarted, 1, 'the second registry really built it');
      const d1 = await get(`${r.url}/v2/repro/manifests/latest`, DOCKER);
      const d2 = await get(`${r2.url}/v2/repro/manifests/latest`, DOCKER);
      assert.equal(d1.headers.get('docker-content-digest'), d2.headers.get('docker-content-digest'));
    } finally {
      await r2.stop();
    }
  });

  test('two images sharing store paths share layer blobs', async () => {
    const n = nonce();
    images.image('share-a.nix', { nonce: n, pkg: 'hello' });
    images.image('share-b.nix', { nonce: n, pkg: 'date', cmd: ['/bin/date'] });
    const a = (await get(`${r.url}/v2/share-a/manifests/latest`)).json() as Manifest;
    const b = (await get(`${r.url}/v2/share-b/manifests/latest`)).json() as Manifest;
    const la = new Set(a.layers.map((l) => l.digest));
    const shared = b.layers.filter((l) => la.has(l.digest));
    assert.ok(shared.length >= 1, 'busybox is in both closures: its layer is one blob');
    assert.ok(shared.length < b.layers.length, 'and the images still differ');
  });
});

describe('image archives', () => {
  test('a derivation whose output is a docker archive is ingested and tagged with its own hash', async () => {
    const n = nonce();
    const archive = join(images.dir, 'archive.tar');
    writeFileSync(archive, await tarOf(dockerArchive([await layerTar({ 'hello.txt': `hi ${n}\n` })]).members));
    images.write('archived.nix', `derivation {
  name = "archived.tar"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  src = ${archive}; args = [ "-c" "cp $src $out" ];
}
`);
    const res = await get(`${r.url}/v2/archived/manifests/latest`);
    assert.equal(res.status, 200, res.text);
    const tags = hashTags((await get(`${r.url}/v2/archived/tags/list`)).json().tags);
    assert.equal(tags.length, 1);
    const rec = (await get(`${r.url}/nixreg/builds`)).json().builds.find((x: { repository: string }) => x.repository === 'archived');
    const log = await get(`${r.url}${rec.log}`);
    // The tag is the hash part of the derivation's own output path.
    assert.match(log.text, new RegExp(`/nix/store/${tags[0]}-archived\\.tar is an image archive`));
    const before = nixProcessCount();
    const again = await get(`${r.url}/v2/archived/manifests/${tags[0]}`);
    assert.equal(again.headers.get('docker-content-digest'), res.headers.get('docker-content-digest'));
    assert.equal(nixProcessCount(), before);
    assert.equal((await r.source.image('archived', 'latest')).hash, tags[0], 'latest reports the archive\'s tag');
  });
});

describe('limits', () => {
  test('builds queue beyond --max-builds, time out, and evaluations expire after the TTL', async () => {
    const imgs = new Images();
    const small = await startNixRegistry(imgs.dir, { maxBuilds: 1, buildTimeoutMs: 4000, evalTtlMs: 300 });
    try {
      const slow = (name: string, s: number) => imgs.write(name, `let pkgs = import ${PKGS} { nonce = "${nonce()}"; }; in pkgs.slow ${s}\n`);
      slow('s1.nix', 1);
      slow('s2.nix', 1);
      slow('forever.nix', 60);
      const [a, b] = await Promise.all([get(`${small.url}/v2/s1/manifests/latest`), get(`${small.url}/v2/s2/manifests/latest`)]);
      assert.equal(a.status, 200, a.text);
      assert.equal(b.status, 200, b.text);
      const recs = (await get(`${small.url}/nixreg/builds`)).json().builds as { buildStarted: string; buildEnded: string }[];
      assert.equal(recs.length, 2);
      const [x, y] = recs.sort((p, q) => p.buildStarted.localeCompare(q.buildStarted));
      assert.ok(x!.buildEnded <= y!.buildStarted, `builds overlapped with --max-builds 1: ${JSON.stringify(recs)}`);

      const t0 = Date.now();
      const to = await get(`${small.url}/v2/forever/manifests/latest`);
      assert.equal(to.status, 404, to.text);
      assert.match(errorOf(to).message, /timed out after 4/);
      assert.ok(Date.now() - t0 < 20_000);

      const evals = small.source.evaluator.evaluationsStarted;
      await get(`${small.url}/v2/s1/manifests/latest`);
      await new Promise((res) => setTimeout(res, 500));
      await get(`${small.url}/v2/s1/manifests/latest`);
      assert.equal(small.source.evaluator.evaluationsStarted - evals, 2, 'an evaluation older than the TTL is redone');
    } finally {
      await small.stop();
      imgs.cleanup();
    }
  });
});
