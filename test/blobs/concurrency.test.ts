// Concurrent pushes of one blob, and what a repository can see.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { assertError, http, pushBlob, sha256, startReg, type TestRegistry } from '../api/util.js';

let reg: TestRegistry;
before(async () => { reg = await startReg(); });
after(async () => { await reg?.destroy(); });

const blobFiles = (reg: TestRegistry) => readdirSync(join(reg.data, 'blobs'), { recursive: true, withFileTypes: true })
  .filter((e) => e.isFile()).map((e) => e.name);

test('50 concurrent pushes of the same blob (monolithic and chunked, many repos and one): one file, linked everywhere', async () => {
  const data = randomBytes(256 * 1024);
  const digest = sha256(data);
  const repos = Array.from({ length: 50 }, (_, i) => (i % 2 === 0 ? `conc/repo${i}` : 'conc/shared'));
  const push = async (repo: string, i: number) => {
    if (i % 3 === 0) {
      const r = await http(reg.url, 'POST', `/v2/${repo}/blobs/uploads/?digest=${digest}`, { body: data });
      return r.status;
    }
    const post = await http(reg.url, 'POST', `/v2/${repo}/blobs/uploads/`);
    let loc = post.headers.get('location')!;
    for (const [a, b] of [[0, 100_000], [100_000, 200_000]] as const) {
      const p = await http(reg.url, 'PATCH', loc, { headers: { 'Content-Range': `${a}-${b - 1}` }, body: data.subarray(a, b) });
      assert.equal(p.status, 202, p.text());
      loc = p.headers.get('location')!;
    }
    const r = await http(reg.url, 'PUT', `${loc}?digest=${digest}`, { body: data.subarray(200_000) });
    return r.status;
  };
  const statuses = await Promise.all(repos.map((r, i) => push(r, i)));
  assert.deepEqual(statuses, repos.map(() => 201));
  assert.deepEqual(blobFiles(reg).filter((f) => f === digest.slice(7)), [digest.slice(7)], 'exactly one file');
  for (const repo of new Set(repos)) {
    const g = await http(reg.url, 'GET', `/v2/${repo}/blobs/${digest}`);
    assert.equal(g.status, 200, repo);
    assert.deepEqual(g.body, data);
  }
  assert.deepEqual(readdirSync(join(reg.data, 'tmp')), [], 'no temporary files left');
  assert.deepEqual(readdirSync(join(reg.data, 'uploads')), [], 'no upload sessions left');
  // Deleting it from every repository but one keeps the file; from the last, removes it.
  const unique = [...new Set(repos)];
  for (const repo of unique.slice(1)) assert.equal((await http(reg.url, 'DELETE', `/v2/${repo}/blobs/${digest}`)).status, 202);
  assert.ok(blobFiles(reg).includes(digest.slice(7)));
  assert.equal((await http(reg.url, 'GET', `/v2/${unique[0]}/blobs/${digest}`)).status, 200);
  assert.equal((await http(reg.url, 'DELETE', `/v2/${unique[0]}/blobs/${digest}`)).status, 202);
  assert.ok(!blobFiles(reg).includes(digest.slice(7)), 'the last unlink removes the file');
});

test('concurrent push and delete of one blob never leave a row without a file', async () => {
  const data = randomBytes(64 * 1024);
  const digest = sha256(data);
  const ops: Promise<unknown>[] = [];
  for (let i = 0; i < 30; i++) {
    ops.push(pushBlob(reg.url, `race/r${i % 3}`, data));
    ops.push(http(reg.url, 'DELETE', `/v2/race/r${i % 3}/blobs/${digest}`));
  }
  await Promise.all(ops);
  for (let i = 0; i < 3; i++) {
    const h = await http(reg.url, 'HEAD', `/v2/race/r${i}/blobs/${digest}`);
    if (h.status === 200) {
      const g = await http(reg.url, 'GET', `/v2/race/r${i}/blobs/${digest}`);
      assert.deepEqual(g.body, data, 'a visible blob is always readable');
    } else {
      assert.equal(h.status, 404);
    }
  }
  const visible = (await reg.storage.index.blobSize(digest)) !== undefined;
  assert.equal(blobFiles(reg).includes(digest.slice(7)), visible, 'row present ⇔ file present');
});

test('a blob is visible in a repository only when linked there', async () => {
  const digest = await pushBlob(reg.url, 'vis/a', 'only in a');
  assert.equal((await http(reg.url, 'HEAD', `/v2/vis/a/blobs/${digest}`)).status, 200);
  assertError(await http(reg.url, 'GET', `/v2/vis/b/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
  assertError(await http(reg.url, 'HEAD', `/v2/vis/b/blobs/${digest}`), 404, 'BLOB_UNKNOWN', 'HEAD');
  assertError(await http(reg.url, 'DELETE', `/v2/vis/b/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
  // Pushing it to b (deduplicated, no new file) links it.
  await pushBlob(reg.url, 'vis/b', 'only in a');
  assert.equal((await http(reg.url, 'GET', `/v2/vis/b/blobs/${digest}`)).status, 200);
  assert.equal((await http(reg.url, 'DELETE', `/v2/vis/a/blobs/${digest}`)).status, 202);
  assertError(await http(reg.url, 'GET', `/v2/vis/a/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
  assert.equal((await http(reg.url, 'GET', `/v2/vis/b/blobs/${digest}`)).status, 200);
});
