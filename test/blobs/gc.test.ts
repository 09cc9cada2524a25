// Garbage collection through the HTTP API, on real storage: what is collected, what is
// spared (tags, pushes by digest, index children, referrers of live subjects, anything
// younger than the grace period, links a client just looked at), dry runs, and
// collections racing pushes and pulls.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, http, pushBlob, pushImage, putManifest, sha256, startReg, type TestRegistry } from '../api/util.js';
import type { SqliteIndex } from '../../src/blobs/index/sqlite.js';

let reg: TestRegistry;
before(async () => { reg = await startReg({ storage: { gcGraceMs: 0, gcIntervalMs: 0 } }); });
after(async () => { await reg?.destroy(); });

const onDisk = (digest: string) => existsSync(reg.storage.blobPath(digest));
const gc = async (query = '') => {
  const r = await http(reg.url, 'POST', `/nixreg/gc${query}`);
  assert.equal(r.status, 200, r.text());
  return r.json() as { manifests: number; links: number; blobs: number; bytes: number; dryRun: boolean; items?: { manifests: { repo: string; digest: string }[]; blobs: { digest: string }[] } };
};

function manifestOf(config: Buffer, layers: Buffer[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
    layers: layers.map((l) => ({ mediaType: OCI_LAYER, digest: sha256(l), size: l.length })),
    ...extra,
  }));
}

async function image(repo: string, ref: string, layers: Buffer[], extra: Record<string, unknown> = {}) {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, n: Math.random() }));
  await pushBlob(reg.url, repo, config);
  for (const l of layers) await pushBlob(reg.url, repo, l);
  const body = manifestOf(config, layers, extra);
  const r = await putManifest(reg.url, repo, ref, body);
  assert.equal(r.status, 201, r.text());
  return { digest: sha256(body), config: sha256(config), body };
}

const blob = (s: string) => Buffer.from(`${s} ${Math.random()}`);
const pulls = async (repo: string, ref: string) => (await http(reg.url, 'GET', `/v2/${repo}/manifests/${ref}`, { headers: { accept: OCI_MANIFEST } })).status;

describe('what is collected', () => {
  test('a layer only a deleted manifest used goes from disk; a shared layer and every tagged image stay and pull', async () => {
    const shared = blob('shared');
    const only = blob('only-old');
    const keep = await image('gc/app', 'v2', [shared, blob('v2 own')]);
    const old = await image('gc/app', 'v1', [shared, only]);
    assert.equal((await http(reg.url, 'DELETE', `/v2/gc/app/manifests/${old.digest}`)).status, 202);
    assert.ok(onDisk(sha256(only)));
    const r = await gc();
    assert.ok(r.blobs >= 2 && r.bytes > 0, JSON.stringify(r));
    assert.equal(onDisk(sha256(only)), false, 'the layer only the deleted manifest used');
    assert.equal(onDisk(old.config), false, 'its config');
    assert.equal(onDisk(sha256(shared)), true);
    assert.equal(await pulls('gc/app', 'v2'), 200);
    for (const d of [sha256(shared), keep.config]) assert.equal((await http(reg.url, 'GET', `/v2/gc/app/blobs/${d}`)).status, 200);
    assert.equal((await http(reg.url, 'HEAD', `/v2/gc/app/blobs/${sha256(only)}`)).status, 404);
  });

  test('a layer linked in another repository is only unlinked here, never removed', async () => {
    const layer = blob('two repos');
    const a = await image('gc/a', 'x', [layer]);
    await image('gc/b', 'x', [layer]);
    await http(reg.url, 'DELETE', `/v2/gc/a/manifests/${a.digest}`);
    await gc();
    assert.equal((await http(reg.url, 'HEAD', `/v2/gc/a/blobs/${sha256(layer)}`)).status, 404, 'not visible where nothing references it');
    assert.equal((await http(reg.url, 'GET', `/v2/gc/b/blobs/${sha256(layer)}`)).status, 200);
    assert.ok(onDisk(sha256(layer)));
  });

  test('a manifest whose tag moved away goes; one pushed by digest stays, untagged', async () => {
    const first = await image('gc/retag', 'latest', [blob('first')]);
    const second = await image('gc/retag', 'latest', [blob('second')]);
    const pinned = blob('pinned layer');
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    await pushBlob(reg.url, 'gc/retag', config);
    await pushBlob(reg.url, 'gc/retag', pinned);
    const body = manifestOf(config, [pinned]);
    assert.equal((await putManifest(reg.url, 'gc/retag', sha256(body), body)).status, 201);
    await gc();
    assert.equal(await pulls('gc/retag', first.digest), 404, 'moved away from: collected');
    assert.equal(await pulls('gc/retag', second.digest), 200);
    assert.equal(await pulls('gc/retag', sha256(body)), 200, 'pushed by digest: kept');
    assert.ok(onDisk(sha256(pinned)));
  });

  test('an index keeps its children; a referrer lives while its subject does', async () => {
    const child = await image('gc/multi', 'child', [blob('child layer')]);
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: child.digest, size: child.body.length }] }));
    assert.equal((await putManifest(reg.url, 'gc/multi', 'all', index, OCI_INDEX)).status, 201);
    // The child's own tag goes: only the index keeps it now.
    const tags = (await http(reg.url, 'GET', '/v2/gc/multi/tags/list')).json().tags as string[];
    for (const t of tags.filter((t) => t !== 'all')) assert.equal((await http(reg.url, 'DELETE', `/v2/gc/multi/manifests/${t}`)).status, 202);
    const subject = await image('gc/multi', 'signed', [blob('subject layer')]);
    const sigLayer = blob('signature');
    const sig = await image('gc/multi', 'unused-sig-tag', [sigLayer], { subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.body.length } });
    assert.equal((await http(reg.url, 'DELETE', '/v2/gc/multi/manifests/unused-sig-tag')).status, 202);
    await gc();
    assert.equal(await pulls('gc/multi', child.digest), 200, 'child of a tagged index');
    assert.equal(await pulls('gc/multi', sig.digest), 200, 'referrer of a live subject');
    // Delete the subject: its referrer goes with it.
    assert.equal((await http(reg.url, 'DELETE', `/v2/gc/multi/manifests/${subject.digest}`)).status, 202);
    await gc();
    assert.equal(await pulls('gc/multi', sig.digest), 404, 'referrer of a deleted subject');
    assert.equal(onDisk(sha256(sigLayer)), false);
  });
});

describe('what is spared', () => {
  test('the grace period spares layers pushed without a manifest yet, and old links a client just looked at', async () => {
    const graced = await startReg({ storage: { gcGraceMs: 1000, gcIntervalMs: 0 } });
    try {
      const young = blob('no manifest yet');
      const looked = blob('looked at');
      const old = blob('old and unreferenced');
      await pushBlob(graced.url, 'gc/pending', looked);
      await pushBlob(graced.url, 'gc/pending', old);
      await new Promise((r) => setTimeout(r, 1200));
      await pushBlob(graced.url, 'gc/pending', young);
      // docker push HEADs the layers it will not upload again, then pushes the manifest.
      assert.equal((await http(graced.url, 'HEAD', `/v2/gc/pending/blobs/${sha256(looked)}`)).status, 200);
      const r = await http(graced.url, 'POST', '/nixreg/gc');
      assert.equal(r.json().blobs, 1, r.text());
      const exists = (d: string) => existsSync(graced.storage.blobPath(d));
      assert.equal(exists(sha256(old)), false, 'older than the grace period, unreferenced, unlooked-at');
      assert.ok(exists(sha256(young)), 'younger than the grace period');
      assert.ok(exists(sha256(looked)), 'looked at by a client within the grace period');
    } finally { await graced.destroy(); }
  });

  test('a manifest younger than the grace period keeps its old layers, though its tag moved on', async () => {
    const graced = await startReg({ storage: { gcGraceMs: 1000, gcIntervalMs: 0 } });
    try {
      const repo = 'gc/young';
      const layer = blob('old layer');
      await pushBlob(graced.url, repo, layer);
      await new Promise((r) => setTimeout(r, 1200));
      // Pushed now, referencing the layer uploaded long ago; then the tag moves on.
      const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
      await pushBlob(graced.url, repo, config);
      const young = manifestOf(config, [layer]);
      assert.equal((await putManifest(graced.url, repo, 'x', young)).status, 201);
      assert.equal((await putManifest(graced.url, repo, 'x', manifestOf(config, []))).status, 201);
      assert.equal((await http(graced.url, 'POST', '/nixreg/gc')).status, 200);
      // Still there (younger than the grace period), so still whole.
      assert.equal((await http(graced.url, 'GET', `/v2/${repo}/manifests/${sha256(young)}`, { headers: { accept: OCI_MANIFEST } })).status, 200);
      assert.equal((await http(graced.url, 'GET', `/v2/${repo}/blobs/${sha256(layer)}`)).status, 200, 'the layer it references');
    } finally { await graced.destroy(); }
  });

  test('a dry run reports exactly what the collection then removes', async () => {
    const shared = blob('dry shared');
    const gone = await image('gc/dry', 'v1', [blob('dry run'), shared]);
    await image('gc/dry', 'v2', [shared]);
    await image('gc/dry-other', 'x', [shared]);
    await http(reg.url, 'DELETE', `/v2/gc/dry/manifests/${gone.digest}`);
    // A tag moved away (a manifest to remove), and a layer uploaded for nothing.
    await image('gc/dry', 'moving', [blob('first')]);
    await image('gc/dry', 'moving', [blob('second')]);
    await pushBlob(reg.url, 'gc/dry', blob('for nothing'));
    // Let the "just looked at" protection of the pushes lapse: the grace here is 0.
    await new Promise((r) => setTimeout(r, 5));
    const dry = await gc('?dry-run=1');
    assert.ok(dry.items!.blobs.some((b) => b.digest === gone.config), JSON.stringify(dry));
    assert.ok(onDisk(gone.config), 'a dry run removes nothing');
    assert.ok(dry.manifests >= 1 && dry.links >= 4 && dry.blobs >= 5, JSON.stringify(dry));
    const real = await gc();
    for (const k of ['manifests', 'links', 'blobs', 'bytes'] as const) assert.equal(real[k], dry[k], k);
    assert.equal(onDisk(gone.config), false);
  });
});

// The fuzz asked for collections faster than a collection paced behind its traffic could
// finish; queued one by one, the last waited over 30 s. Now a burst is at most one
// collection running and one waiting per kind.
test('a burst of collection requests joins the one waiting its turn: at most one runs after the running one', async () => {
  const runs = reg.storage.gcTotals.runs;
  // Asked for together, before any started: one collection for all.
  const first = [reg.storage.gc(), reg.storage.gc()];
  assert.equal(first[0], first[1]);
  await Promise.all(first);
  assert.equal(reg.storage.gcTotals.runs - runs, 1);
  // Something to mark, so that a collection spans several turns of the event loop.
  await image('gc/burst', 'v1', [blob('burst')]);
  let settled = false;
  const running = reg.storage.gc();
  void running.then(() => { settled = true; }, () => { settled = true; });
  await new Promise((r) => setImmediate(r));
  assert.equal(settled, false, 'the collection is under way');
  const burst = Array.from({ length: 10 }, () => reg.storage.gc());
  const dry = [reg.storage.gc({ dryRun: true }), reg.storage.gc({ dryRun: true })];
  assert.ok(burst.every((p) => p === burst[0]), 'every later call joined the waiting collection');
  assert.notEqual(burst[0], running, 'but not the running one, which may have missed what they saw');
  assert.equal(dry[0], dry[1]);
  assert.notEqual(dry[0], burst[0], 'a dry run does not stand for a collection, nor the other way round');
  await Promise.all([running, ...burst, ...dry]);
  assert.equal(reg.storage.gcTotals.runs - runs, 3);
});

test('collections racing pushes, pulls and deletes lose nothing that is referenced', { timeout: 120_000 }, async () => {
  const racing = await startReg({ storage: { gcGraceMs: 2_000, gcIntervalMs: 0 } });
  try {
    let stop = false;
    const collections = (async () => {
      let n = 0;
      while (!stop) { assert.equal((await http(racing.url, 'POST', '/nixreg/gc')).status, 200); n++; }
      return n;
    })();
    const kept: { repo: string; tag: string; digest: string }[] = [];
    for (let i = 0; i < 60; i++) {
      const repo = `race/r${i % 5}`;
      const img = await pushImage(racing.url, repo, `t${i}`, { salt: String(i) });
      kept.push({ repo, tag: `t${i}`, digest: img.digest });
      // Every third image is deleted again: its blobs become garbage while others push.
      if (i % 3 === 0) { await http(racing.url, 'DELETE', `/v2/${repo}/manifests/${img.digest}`); kept.pop(); }
    }
    stop = true;
    assert.ok(await collections > 0);
    for (const k of kept) {
      const m = await http(racing.url, 'GET', `/v2/${k.repo}/manifests/${k.tag}`, { headers: { accept: OCI_MANIFEST } });
      assert.equal(m.status, 200, `${k.repo}:${k.tag}`);
      const parsed = m.json() as { config: { digest: string }; layers: { digest: string }[] };
      for (const d of [parsed.config.digest, ...parsed.layers.map((l) => l.digest)]) {
        const b = await http(racing.url, 'GET', `/v2/${k.repo}/blobs/${d}`);
        assert.equal(b.status, 200, `${k.repo} ${d}`);
        assert.equal(sha256(b.body), d);
      }
    }
    // Every row has its file, byte for byte.
    for (const { digest } of await racing.storage.index.blobsAfter('', Number.MAX_SAFE_INTEGER)) {
      assert.equal(sha256(readFileSync(racing.storage.blobPath(digest))), digest);
    }
  } finally { await racing.destroy(); }
});

test('work in progress (a build linking layers before its manifest) holds off collection of what it made', async () => {
  const release = reg.storage.hold();
  const layer = blob('being built');
  await new Promise((r) => setTimeout(r, 5));
  await pushBlob(reg.url, 'gc/building', layer);
  await new Promise((r) => setTimeout(r, 5));
  await gc();
  assert.ok(onDisk(sha256(layer)), 'created after the hold began');
  release();
  await gc();
  assert.equal(onDisk(sha256(layer)), false, 'collected once released (grace 0)');
});

// The race a mark from a snapshot loses: a manifest pushed while the sweep is under way
// references a layer the mark found unreferenced. The sweep must take the push in before
// its next transaction, and go on collecting the rest of the repository.
test('a manifest pushed between two transactions of a sweep keeps the old layer it references; the sweep goes on', async () => {
  const own = await startReg({ storage: { gcGraceMs: 0, gcIntervalMs: 0 } });
  try {
    // Forced busy: a pause after each transaction long enough for a push to land in.
    own.storage.busy = () => true;
    const repo = 'gc/between';
    const push = async (ref: string, layers: Buffer[], config: Buffer) => {
      for (const b of [config, ...layers]) await pushBlob(own.url, repo, b);
      const r = await putManifest(own.url, repo, ref, manifestOf(config, layers));
      assert.equal(r.status, 201, r.text());
    };
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    // A layer whose digest sorts after every other link of the repository: swept last.
    let layer: Buffer;
    do layer = randomBytes(64); while (!sha256(layer).startsWith('sha256:fff'));
    await push('v', [layer], config);
    await push('v', [blob('next')], config); // the tag moves on: `layer` is garbage
    // More garbage than one transaction takes.
    const junk = Array.from({ length: 700 }, (_, i) => blob(`junk ${i}`));
    for (let i = 0; i < junk.length; i += 50) await Promise.all(junk.slice(i, i + 50).map((j) => pushBlob(own.url, repo, j)));
    await new Promise((r) => setTimeout(r, 5));
    const db = (own.storage.index as SqliteIndex).db;
    const id = (await own.storage.index.repository(repo))!.id;
    const links = () => (db.prepare('SELECT count(*) AS n FROM repo_blobs WHERE repo_id = ?').get(id) as { n: number }).n;
    const before = links();
    const collecting = http(own.url, 'POST', '/nixreg/gc');
    while (links() >= before) await new Promise((r) => setTimeout(r, 1));
    assert.ok(existsSync(own.storage.blobPath(sha256(layer))), 'the first transaction left the last link');
    // Referenced without being uploaded again (a client need not look first).
    const body = manifestOf(config, [layer]);
    const put = await putManifest(own.url, repo, 'w', body);
    assert.equal(put.status, 201, put.text());
    const report = (await collecting).json() as { blobs: number; deferred: number };
    assert.equal(report.deferred, 0);
    assert.ok(report.blobs >= junk.length, `the rest of the repository was swept too: ${JSON.stringify(report)}`);
    for (const j of junk) assert.equal(existsSync(own.storage.blobPath(sha256(j))), false);
    const got = await http(own.url, 'GET', `/v2/${repo}/blobs/${sha256(layer)}`);
    assert.equal(got.status, 200, 'the layer the push referenced');
    assert.deepEqual(got.body, layer);
    assert.equal((await http(own.url, 'GET', `/v2/${repo}/manifests/w`, { headers: { accept: OCI_MANIFEST } })).status, 200);
  } finally { await own.destroy(); }
});
