// The manifest cache is per repository: a write or delete in one repository is seen at
// once there, and a read in another repository (with every cache warm) never undoes it.
// Over an index other processes write (shared), tags and existence are not cached at all.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { Storage } from '../../src/blobs/storage.js';
import { assertError, http, pushImage, putManifest, startReg, type TestRegistry } from '../api/util.js';
import { tempDir } from '../helpers/registry.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';

let reg: TestRegistry;
before(async () => { reg = await startReg(); });
after(async () => { await reg?.destroy(); });

const warm = async (repos: string[], refs: string[]) => {
  for (let i = 0; i < 3; i++) {
    for (const repo of repos) for (const ref of refs) await http(reg.url, 'GET', `/v2/${repo}/manifests/${ref}`);
  }
};

test('manifest delete in repo A is not undone by reads of the same digest and tag in repo B', async () => {
  const a = await pushImage(reg.url, 'cache/a', 'latest', { salt: 'same' });
  const b = await pushImage(reg.url, 'cache/b', 'latest', { salt: 'same' });
  // Same config and layer bytes in both repositories, so the same manifest digest.
  const body = (await http(reg.url, 'GET', '/v2/cache/a/manifests/latest')).body;
  assert.deepEqual(body, (await http(reg.url, 'GET', '/v2/cache/b/manifests/latest')).body);
  assert.equal(a.digest, b.digest);
  await warm(['cache/a', 'cache/b'], ['latest', a.digest]);

  assert.equal((await http(reg.url, 'DELETE', `/v2/cache/a/manifests/${a.digest}`)).status, 202);
  for (let i = 0; i < 3; i++) {
    assert.equal((await http(reg.url, 'GET', `/v2/cache/b/manifests/${a.digest}`)).status, 200);
    assert.equal((await http(reg.url, 'GET', '/v2/cache/b/manifests/latest')).status, 200);
    assertError(await http(reg.url, 'GET', `/v2/cache/a/manifests/${a.digest}`), 404, 'MANIFEST_UNKNOWN');
    assertError(await http(reg.url, 'GET', '/v2/cache/a/manifests/latest'), 404, 'MANIFEST_UNKNOWN');
    assertError(await http(reg.url, 'HEAD', '/v2/cache/a/manifests/latest'), 404, 'MANIFEST_UNKNOWN', 'HEAD');
  }
  // Pushing it again to A makes it visible again, at once.
  assert.equal((await putManifest(reg.url, 'cache/a', 'latest', a.manifest)).status, 201);
  assert.equal((await http(reg.url, 'GET', '/v2/cache/a/manifests/latest')).status, 200);
});

test('tag delete and re-tag in repo A are seen at once in A, with B untouched', async () => {
  const one = await pushImage(reg.url, 'cache/c', 'v', { salt: 'one' });
  await pushImage(reg.url, 'cache/d', 'v', { salt: 'one' });
  await warm(['cache/c', 'cache/d'], ['v', one.digest]);
  assert.equal((await http(reg.url, 'DELETE', '/v2/cache/c/manifests/v')).status, 202);
  await warm(['cache/d'], ['v']);
  assertError(await http(reg.url, 'GET', '/v2/cache/c/manifests/v'), 404, 'MANIFEST_UNKNOWN');
  assert.equal((await http(reg.url, 'GET', `/v2/cache/c/manifests/${one.digest}`)).status, 200, 'the manifest outlives its tag');
  assert.equal((await http(reg.url, 'GET', '/v2/cache/d/manifests/v')).status, 200);
  // Re-tag in C to another manifest: C sees the new one immediately, D the old one.
  const two = await pushImage(reg.url, 'cache/c', 'v', { salt: 'two' });
  const c = await http(reg.url, 'GET', '/v2/cache/c/manifests/v');
  const d = await http(reg.url, 'GET', '/v2/cache/d/manifests/v');
  assert.equal(c.headers.get('docker-content-digest'), two.digest);
  assert.equal(d.headers.get('docker-content-digest'), one.digest);
});

test('the storage cache itself: resolveManifest is per repository and invalidated by every write', async () => {
  const s = reg.storage;
  const img = await pushImage(reg.url, 'cache/e', 't', { salt: 'e' });
  await pushImage(reg.url, 'cache/f', 't', { salt: 'e' });
  for (let i = 0; i < 2; i++) {
    assert.equal((await s.resolveManifest('cache/e', { tag: 't' }))?.digest, img.digest);
    assert.equal((await s.resolveManifest('cache/f', { tag: 't' }))?.digest, img.digest);
    assert.equal((await s.resolveManifest('cache/f', { digest: img.digest }))?.digest, img.digest);
  }
  assert.equal(await s.deleteTag('cache/e', 't'), true);
  assert.equal((await s.resolveManifest('cache/e', { tag: 't' })), undefined);
  assert.equal((await s.resolveManifest('cache/f', { tag: 't' }))?.digest, img.digest);
  assert.equal(await s.deleteManifest('cache/f', img.digest), true);
  assert.equal((await s.resolveManifest('cache/f', { digest: img.digest })), undefined);
  assert.equal((await s.resolveManifest('cache/e', { digest: img.digest }))?.digest, img.digest);
  // A cached hit answers without SQLite: close the statement path and it still resolves.
  await s.resolveManifest('cache/e', { digest: img.digest });
  const lookup = s.index.lookup;
  let dbCalls = 0;
  s.index.lookup = (...args) => { dbCalls++; return lookup.apply(s.index, args); };
  try {
    for (let i = 0; i < 100; i++) assert.equal((await s.resolveManifest('cache/e', { digest: img.digest }))?.digest, img.digest);
    const r = await http(reg.url, 'GET', `/v2/cache/e/manifests/${img.digest}`);
    assert.equal(r.status, 200);
    assert.equal(dbCalls, 0, 'hot path: no SQLite on a cached manifest GET');
  } finally {
    s.index.lookup = lookup;
  }
});

test('per-repository generations are bounded, and evicting one never serves a stale entry', async () => {
  const s = reg.storage;
  const one = await pushImage(reg.url, 'cache/evicted', 'v', { salt: 'one' });
  const two = await pushImage(reg.url, 'cache/evicted', 'w', { salt: 'two' });
  const evict = () => { for (let i = 0; i < 10_050; i++) (s as unknown as { core: { bump(r: string): void } }).core.bump(`cache/filler${i}`); };
  evict();
  assert.ok((await s.stats()).trackedRepositories <= 10_000);
  // Cached while the repository's generation was evicted…
  assert.equal((await s.resolveManifest('cache/evicted', { tag: 'v' }))?.digest, one.digest);
  // …then changed (a new generation), then evicted again: the old entry must not return.
  await s.tag('cache/evicted', 'v', two.digest);
  evict();
  assert.equal((await s.resolveManifest('cache/evicted', { tag: 'v' }))?.digest, two.digest);
});

test('an index other processes write (shared): every resolve asks it, so a tag moved or a manifest deleted elsewhere is seen at once', async () => {
  const data = tempDir('nixreg-shared-');
  // Two storages over one index, as two replicas over one database would be.
  const here = await Storage.open(data, { gcIntervalMs: 0 });
  const there = await Storage.open(data, { gcIntervalMs: 0 });
  try {
    (here.index as { shared: boolean }).shared = true;
    const info = { mediaType: OCI, blobs: [], manifests: [] };
    const one = await there.putManifest('shared/r', Buffer.from('{"one":1}'), info, 't');
    const two = await there.putManifest('shared/r', Buffer.from('{"two":2}'), info);
    for (let i = 0; i < 3; i++) assert.equal((await here.resolveManifest('shared/r', { tag: 't' }))?.digest, one.digest);
    assert.ok(await here.resolveManifest('shared/r', { digest: one.digest }));
    await there.tag('shared/r', 't', two.digest);
    assert.equal((await here.resolveManifest('shared/r', { tag: 't' }))?.digest, two.digest, 'the tag moved elsewhere');
    assert.equal(await there.deleteManifest('shared/r', one.digest), true);
    assert.equal(await here.resolveManifest('shared/r', { digest: one.digest }), undefined, 'deleted elsewhere');
    // Bodies stay cached by digest: content-addressed, never stale.
    assert.deepEqual(await here.readManifest(two), Buffer.from('{"two":2}'));
  } finally {
    await here.close();
    await there.close();
    rmSync(data, { recursive: true, force: true });
  }
});
