// Bounded disk with real clients against the real `nixreg serve`: garbage collection
// after docker pushes and a skopeo delete, the cache quota of built images pulled with
// skopeo (the least recently pulled goes, and rebuilds on its next pull; pushed images
// are never evicted), `nixreg gc` from the command line, and kill -9 in the middle of a
// collection.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { CLI, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { checkStore, inspectStore } from '../helpers/store-check.js';
import { Images, nonce } from '../build/helpers.js';
import { sha256 } from '../api/util.js';
import { getManifest, multiLayerContext } from './fixtures.js';

const MiB = 1024 * 1024;
const cleanups: (() => void)[] = [];
after(() => { for (const c of cleanups.reverse()) c(); });

const blobFile = (data: string, digest: string) => join(data, 'blobs/sha256', digest.slice(7, 9), digest.slice(7));
const post = async (url: string) => {
  const r = await fetch(url, { method: 'POST' });
  assert.equal(r.status, 200, await r.clone().text());
  return r.json() as Promise<{ blobs: number; bytes: number; manifests: number }>;
};

describe('garbage collection with docker and skopeo', () => {
  let dockerd: Dockerd;
  let reg: RegistryProcess;
  before(async () => {
    await requireTool('skopeo');
    reg = await spawnRegistry({ args: ['--gc-grace', '0', '--gc-interval', '0'] });
    cleanups.push(() => rmSync(reg.data, { recursive: true, force: true }));
    dockerd = await startDockerd();
  });
  after(async () => { await Promise.allSettled([dockerd?.stop(), reg?.stop()]); });

  test('a layer only a deleted manifest used is gone after GC; shared layers and every tagged image still pull and run', { timeout: 300_000 }, async () => {
    const docker = (args: string[]) => dockerd.docker(args);
    const build = async (tag: string, greeting: string, from?: string) => {
      const ctx = multiLayerContext(greeting);
      cleanups.push(ctx.cleanup);
      if (from) {
        // A child of `from`: shares all of its layers and adds one.
        const { writeFileSync } = await import('node:fs');
        writeFileSync(join(ctx.dir, 'Dockerfile'), `FROM ${from}\nCOPY greeting.txt /greeting.txt\n`);
      }
      await run('docker', ['build', '-q', '-t', tag, ctx.dir], { env: { ...dockerd.env, DOCKER_BUILDKIT: '0' } });
    };
    const base = `${reg.host}/gc/app:base`;
    const child = `${reg.host}/gc/app:child`;
    const doomed = `${reg.host}/gc/app:doomed`;
    await build(base, 'base');
    await build(child, 'child', base);
    await build(doomed, 'doomed');
    for (const t of [base, child, doomed]) await docker(['push', t]);
    const baseM = await getManifest(reg.url, 'gc/app', 'base');
    const doomedM = await getManifest(reg.url, 'gc/app', 'doomed');
    const shared = baseM.body.layers!.map((l) => l.digest);
    const own = doomedM.body.layers!.map((l) => l.digest).filter((d) => !shared.includes(d));
    assert.ok(own.length >= 2, 'the doomed image has layers of its own');

    // A real client deletes the image; its layers stay on disk until GC.
    await run('skopeo', ['delete', '--tls-verify=false', `docker://${doomed}`]);
    for (const d of own) assert.ok(existsSync(blobFile(reg.data, d)));
    const report = await post(`${reg.url}/nixreg/gc`);
    assert.ok(report.blobs >= own.length + 1 && report.manifests === 0, JSON.stringify(report)); // its layers and config
    for (const d of own) assert.equal(existsSync(blobFile(reg.data, d)), false, `layer ${d} of the deleted image`);
    for (const d of shared) assert.ok(existsSync(blobFile(reg.data, d)), `shared layer ${d}`);
    assert.equal((await getManifest(reg.url, 'gc/app', 'doomed')).status, 404);

    for (const t of [base, child, doomed]) await docker(['rmi', t]).catch(() => {});
    for (const [t, says] of [[base, 'base'], [child, 'child']] as const) {
      await docker(['pull', t]);
      assert.equal((await docker(['run', '--rm', '--network', 'none', t])).stdout.trim(), says);
    }
    await checkStore(reg.data, 'after the collection');
  });

  test('nixreg gc: --dry-run lists while the server runs; collecting is refused until it stops, then works', { timeout: 120_000 }, async () => {
    // Garbage: a layer uploaded without a manifest (grace 0).
    const junk = randomBytes(4096);
    const up = await fetch(`${reg.url}/v2/gc/junk/blobs/uploads/?digest=${sha256(junk)}`, { method: 'POST', body: junk as unknown as BodyInit });
    assert.equal(up.status, 201);
    await new Promise((r) => setTimeout(r, 10));
    const dry = await run(process.execPath, [CLI, 'gc', '--data', reg.data, '--dry-run', '--gc-grace', '0']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, new RegExp(`blob ${sha256(junk)} 4096`));
    assert.match(dry.stdout, /would remove \d+ manifests, \d+ links, 1 blobs \(4096 bytes\)/);
    const refused = await run(process.execPath, [CLI, 'gc', '--data', reg.data, '--gc-grace', '0'], { check: false });
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /a nixreg server \(pid \d+\) is using .*POST .*\/nixreg\/gc/);
    assert.ok(existsSync(blobFile(reg.data, sha256(junk))));
    await reg.stop();
    const done = await run(process.execPath, [CLI, 'gc', '--data', reg.data, '--gc-grace', '0']);
    assert.match(done.stdout, /removed \d+ manifests, \d+ links, 1 blobs \(4096 bytes\)/);
    assert.equal(existsSync(blobFile(reg.data, sha256(junk))), false);
    await checkStore(reg.data, 'after the collection');
  });
});

describe('the cache quota of built images, pulled with skopeo', () => {
  let reg: RegistryProcess;
  const images = new Images();
  cleanups.push(() => images.cleanup());
  /** An image of 1 MiB of random bytes: the three of them cannot share a byte. */
  const write = (name: string) => images.write(`${name}.nix`, `{
  contents = [ (derivation { name = "${name}-${nonce()}"; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" "mkdir -p $out; head -c ${MiB} /dev/urandom > $out/data" ]; }) ];
  config = { };
}
`);
  const pull = async (ref: string) => {
    const dir = tempDir('nixreg-pull-');
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    return run('skopeo', ['copy', '--src-tls-verify=false', `docker://${reg.host}/${ref}`, `oci:${dir}:x`], { check: false });
  };
  const hashOf = async (name: string) => ((await (await fetch(`${reg.url}/v2/${name}/tags/list`)).json()) as { tags: string[] }).tags.filter((t) => t !== 'latest');
  const builds = async () => ((await (await fetch(`${reg.url}/nixreg/builds`)).json()) as { builds: unknown[] }).builds.length;

  before(async () => {
    await requireTool('skopeo');
    await requireTool('nix-store');
    for (const n of ['a', 'b', 'c']) write(n);
    // Two images of a little over 1 MiB fit, three do not.
    reg = await spawnRegistry({ images: images.dir, env: NIX_TEST_ENV, args: ['--cache-max-bytes', '2600KiB', '--gc-interval', '0'] });
    cleanups.push(() => rmSync(reg.data, { recursive: true, force: true }));
  });
  after(async () => { await reg?.stop(); });

  test('three built images over a quota that holds two lose the least recently pulled, which rebuilds on its next pull; pushed images stay', { timeout: 300_000 }, async () => {
    // A pushed image of 2 MiB: over the quota on its own, and never counted or evicted.
    const layer = randomBytes(2 * MiB);
    const pushedLayer = await pushRaw(reg.url, 'pushed/app', layer);

    for (const n of ['a', 'b']) assert.equal((await pull(`${n}:latest`)).code, 0);
    const [aHash] = await hashOf('a');
    const [bHash] = await hashOf('b');
    // (Reading b's manifest is a pull of b too: before a's.)
    const bLayers = (await getManifest(reg.url, 'b', bHash!)).body.layers!.map((l) => l.digest);
    assert.equal((await pull('a:latest')).code, 0, 'a is now pulled more recently than b');
    assert.equal(await builds(), 2);

    const c = await pull('c:latest');
    assert.equal(c.code, 0, c.stderr);
    assert.deepEqual(await hashOf('b'), [], `b was evicted: its hash tag is gone ${reg.logs().split('\n').filter((l) => /quota|built/.test(l)).join('\n')}`);
    for (const d of bLayers) assert.equal(existsSync(blobFile(reg.data, d)), false, `b's layer ${d} left the disk`);
    assert.match(reg.logs(), /cache quota: evicted the least recently pulled images/);
    for (const n of ['a', 'c']) assert.equal((await hashOf(n)).length, 1, `${n} stays`);
    assert.equal(sha256(Buffer.from(await (await fetch(`${reg.url}/v2/pushed/app/blobs/${pushedLayer}`)).arrayBuffer())), pushedLayer, 'the pushed image is intact');

    // Pulling b again builds it again, under the same hash tag.
    const again = await pull(`b:${bHash}`);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await builds(), 4);
    assert.deepEqual(await hashOf('b'), [bHash]);
    assert.ok(existsSync(blobFile(reg.data, pushedLayer)), 'never evicted');

    // a is now the least recently pulled: evicted for b. Once its expression has moved
    // on, its old hash cannot be rebuilt, and the answer says so.
    assert.deepEqual(await hashOf('a'), [], 'a was evicted for b');
    write('a');
    const gone = await fetch(`${reg.url}/v2/a/manifests/${aHash}`);
    assert.equal(gone.status, 404);
    assert.match(await gone.text(), /was evicted from the cache of built images, and a now evaluates to [a-z0-9]{32}, so it cannot be rebuilt/);
    const fails = await pull(`a:${aHash}`);
    assert.notEqual(fails.code, 0);
    assert.match(fails.stderr, /evicted/);
    const stats = await (await fetch(`${reg.url}/nixreg/stats`)).json() as { server: { gc: { evictions: number } } };
    assert.equal(stats.server.gc.evictions, 2);
  });
});

/** A monolithic upload of `data` into `repo`, plus a manifest referencing it under `latest`. */
async function pushRaw(url: string, repo: string, data: Buffer): Promise<string> {
  const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
  for (const b of [config, data]) {
    const r = await fetch(`${url}/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, { method: 'POST', body: b as unknown as BodyInit });
    assert.equal(r.status, 201);
  }
  const m = JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(data), size: data.length }],
  });
  const r = await fetch(`${url}/v2/${repo}/manifests/latest`, { method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: m });
  assert.equal(r.status, 201);
  return sha256(data);
}

test('kill -9 at any moment of a collection leaves a consistent store', { timeout: 300_000 }, async () => {
  const data = tempDir('nixreg-gc-crash-');
  cleanups.push(() => rmSync(data, { recursive: true, force: true }));
  let reg = await spawnRegistry({ data, args: ['--gc-grace', '0', '--gc-interval', '0'] });
  try {
    const kept = await pushRaw(reg.url, 'keep/app', randomBytes(64 * 1024));
    /** Per crash: whether it came in the middle of a collection (some garbage rows gone, not all files). */
    const midway: boolean[] = [];
    // When to kill: at once, as soon as the collection has begun to drop rows (polled from
    // the index: then rows are gone and files not yet), and late.
    const when: (() => Promise<void>)[] = [
      () => new Promise((r) => setTimeout(r, 5)),
      () => rowsDropping(data),
      () => new Promise((r) => setTimeout(r, 300)),
    ];
    for (let round = 0; round < when.length; round++) {
      // Garbage to collect: blobs uploaded without a manifest.
      await Promise.all(Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; i < 250; i++) {
          const b = randomBytes(512);
          const r = await fetch(`${reg.url}/v2/junk/r${w}/blobs/uploads/?digest=${sha256(b)}`, { method: 'POST', body: b as unknown as BodyInit });
          assert.equal(r.status, 201);
        }
      }));
      const collecting = fetch(`${reg.url}/nixreg/gc`, { method: 'POST' }).catch(() => undefined);
      await when[round]!();
      reg.child.kill('SIGKILL');
      await reg.stop();
      await collecting;
      // Mid-collection: files whose rows were already gone.
      midway.push((await inspectStore(data, `after kill -9 in round ${round}`)).filesWithoutRows.length > 0);
      reg = await spawnRegistry({ data, args: ['--gc-grace', '0', '--gc-interval', '0'] });
      await checkStore(data, `restarted after kill -9 in round ${round}`);
      const got = await fetch(`${reg.url}/v2/keep/app/blobs/${kept}`);
      assert.equal(sha256(Buffer.from(await got.arrayBuffer())), kept);
    }
    await post(`${reg.url}/nixreg/gc`);
    assert.ok(midway[1], `the kill as rows went did not land in the middle of a collection: ${JSON.stringify(midway)}`);
    const db = new Database(join(data, 'index.db'), { readonly: true });
    try {
      assert.equal((db.prepare('SELECT count(*) AS n FROM blobs').get() as { n: number }).n, 3, 'kept: the config, the layer, the manifest');
    } finally { db.close(); }
  } finally {
    reg.child.kill('SIGKILL');
    await reg.stop();
  }
});

/** Resolves once the blob rows of the index start to go (a collection is sweeping). */
async function rowsDropping(data: string): Promise<void> {
  const db = new Database(join(data, 'index.db'), { readonly: true });
  try {
    const count = db.prepare('SELECT count(*) AS n FROM blobs');
    const start = (count.get() as { n: number }).n;
    const end = Date.now() + 30_000;
    while ((count.get() as { n: number }).n >= start) {
      if (Date.now() > end) throw new Error('the collection never began to drop rows');
      await new Promise((r) => setTimeout(r, 1));
    }
  } finally { db.close(); }
}
