// Input grammar: names, tags, digests, upload ids, pagination, and path traversal.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { OCI_MANIFEST, assertError, http, pushBlob, pushImage, raw, sha256, startReg, type TestRegistry } from './util.js';

let reg: TestRegistry;
before(async () => { reg = await startReg(); });
after(async () => { await reg?.destroy(); });

test('repository names: the spec regex, and at most 255 characters', async () => {
  const valid = ['a', 'a/b', 'a0/b-c/d.e/f_g', 'a__b', 'a---b', 'x'.repeat(255), `${'a/'.repeat(126)}ab`];
  for (const name of valid) assert.equal((await http(reg.url, 'POST', `/v2/${name}/blobs/uploads/`)).status, 202, name);
  const invalid = ['A', 'a_', '_a', 'a..b', 'a/', 'a//b', 'a___b', 'a.-b', '-a', 'a:b', 'a b', 'x'.repeat(256), 'ä'];
  for (const name of invalid) {
    assertError(await http(reg.url, 'POST', `/v2/${encodeURI(name)}/blobs/uploads/`), 400, 'NAME_INVALID');
  }
});

test('tags: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}', async () => {
  const { manifest } = await pushImage(reg.url, 'g/tags', 'seed');
  for (const tag of ['a', 'A_b.c-d', '_x', '0', 'x'.repeat(128)]) {
    const r = await http(reg.url, 'PUT', `/v2/g/tags/manifests/${tag}`, { headers: { 'Content-Type': OCI_MANIFEST }, body: manifest });
    assert.equal(r.status, 201, tag);
  }
  for (const tag of ['.a', '-a', 'x'.repeat(129), 'a+b']) {
    const r = await http(reg.url, 'PUT', `/v2/g/tags/manifests/${encodeURIComponent(tag)}`, { headers: { 'Content-Type': OCI_MANIFEST }, body: manifest });
    assertError(r, 400, 'TAG_INVALID');
  }
});

test('digests: sha256 is 64 lowercase hex, sha512 128; anything else is DIGEST_INVALID', async () => {
  const hex = sha256('x').slice(7);
  const bad = [
    `sha256:${hex.toUpperCase()}`, `sha256:${hex.slice(1)}`, `sha256:${hex}0`, `sha512:${hex}`, `md5:${hex.slice(0, 32)}`,
    `sha256:${hex.slice(0, 63)}g`, 'sha256:', ':abc', `SHA256:${hex}`, `sha256+b64u:${hex}`,
  ];
  for (const d of bad) {
    assertError(await http(reg.url, 'GET', `/v2/g/tags/blobs/${d}`), 400, 'DIGEST_INVALID');
    assertError(await http(reg.url, 'POST', `/v2/g/tags/blobs/uploads/?digest=${encodeURIComponent(d)}`, { body: 'x' }), 400, 'DIGEST_INVALID');
  }
});

test('upload ids: generated as UUIDs, and anything else is BLOB_UPLOAD_UNKNOWN', async () => {
  const r = await http(reg.url, 'POST', '/v2/g/ids/blobs/uploads/');
  const id = r.headers.get('docker-upload-uuid')!;
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(r.headers.get('location'), `/v2/g/ids/blobs/uploads/${id}`);
  for (const bad of [id.toUpperCase(), `${id}0`, id.replaceAll('-', ''), '1', 'abc']) {
    assertError(await http(reg.url, 'PATCH', `/v2/g/ids/blobs/uploads/${bad}`, { body: 'x' }), 404, 'BLOB_UPLOAD_UNKNOWN');
  }
  // A real id is scoped to its repository.
  assertError(await http(reg.url, 'GET', `/v2/g/other/blobs/uploads/${id}`), 404, 'BLOB_UPLOAD_UNKNOWN');
});

test('pagination: n clamped, negative/absurd/non-numeric n is 400, and n never drives an allocation', async () => {
  await pushImage(reg.url, 'g/page', 'one');
  const ok = await http(reg.url, 'GET', '/v2/g/page/tags/list?n=999999999');
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json().tags, ['one']);
  for (const n of ['-1', '1e3', 'abc', '', '9999999999999999999999', '0x10', '1.5', ' 1']) {
    assertError(await http(reg.url, 'GET', `/v2/g/page/tags/list?n=${encodeURIComponent(n)}`), 400, 'PAGINATION_NUMBER_INVALID');
    assertError(await http(reg.url, 'GET', `/v2/_catalog?n=${encodeURIComponent(n)}`), 400, 'PAGINATION_NUMBER_INVALID');
  }
  assertError(await http(reg.url, 'GET', '/v2/g/page/tags/list?n=1&n=2'), 400, 'PAGINATION_NUMBER_INVALID');
  // The catalog pages like tags do.
  const cat = await http(reg.url, 'GET', '/v2/_catalog?n=1');
  assert.equal(cat.status, 200);
  assert.equal(cat.json().repositories.length, 1);
  assert.match(cat.headers.get('link') ?? '', /^<\/v2\/_catalog\?n=1&last=[^>]+>; rel="next"$/);
  const all = await http(reg.url, 'GET', '/v2/_catalog');
  assert.ok(all.json().repositories.includes('g/page'));
});

test('path traversal in names, digests and upload ids never touches the filesystem', async () => {
  const before = snapshot(reg.data);
  const hex = sha256('x').slice(7);
  const attempts = [
    '/v2/../../etc/passwd/blobs/uploads/',
    '/v2/a/../../b/tags/list',
    '/v2/%2e%2e/%2e%2e/tags/list',
    '/v2/a%2F..%2F..%2Fb/tags/list',
    '/v2/a%2fb/blobs/uploads/',
    `/v2/a/blobs/sha256:..%2F..%2F${hex}`,
    `/v2/a/blobs/..%2F..%2Findex.db`,
    '/v2/a/blobs/sha256:../../../index.db',
    '/v2/a/blobs/uploads/..%2F..%2Findex.db',
    '/v2/a/blobs/uploads/../../index.db',
    '/v2/a/blobs/uploads/%2e%2e',
    '/v2/a/manifests/..%2F..%2Findex.db',
    '/v2/a/manifests/sha256:..%5C..%5Cindex.db',
    '/v2/a%00b/tags/list',
    '/v2/a/blobs/uploads/00000000-0000-4000-8000-000000000000%00',
  ];
  for (const path of attempts) {
    for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']) {
      const r = await raw(reg.url, method, path, { 'Content-Length': '1' }, Buffer.from('x'));
      assert.ok(r.status >= 400 && r.status < 500, `${method} ${path} → ${r.status}`);
      assert.equal(r.headers['docker-distribution-api-version'], 'registry/2.0');
      const body = JSON.parse(r.body.toString()) as { errors: { code: string }[] };
      assert.ok(body.errors[0]?.code, `${method} ${path}: ${r.body.toString()}`);
    }
  }
  assert.deepEqual(snapshot(reg.data), before, 'nothing was created or removed under the data directory');
  // The registry is still healthy.
  assert.equal((await pushBlob(reg.url, 'g/after', 'still fine')), sha256('still fine'));
});

function snapshot(dir: string): string[] {
  return readdirSync(dir, { recursive: true }).map(String).filter((p) => !p.startsWith('index.db')).sort();
}
