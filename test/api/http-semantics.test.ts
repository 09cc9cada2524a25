// HTTP semantics of the read endpoints: HEAD equals GET without a body, ranges, ETags,
// the API version header on every response, and the OCI error body on every error.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { OCI_MANIFEST, assertError, http, pushBlob, pushImage, raw, sha256, startReg, type TestRegistry } from './util.js';

let reg: TestRegistry;
let img: Awaited<ReturnType<typeof pushImage>>;
const blob = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
let blobDigest: string;

before(async () => {
  reg = await startReg();
  img = await pushImage(reg.url, 'sem/app', 'v1');
  blobDigest = await pushBlob(reg.url, 'sem/app', blob);
});
after(async () => { await reg?.destroy(); });

const HEAD_FIELDS = ['content-length', 'content-type', 'docker-content-digest', 'etag', 'docker-distribution-api-version'];

test('HEAD blob equals GET blob: same headers, no body', async () => {
  const g = await http(reg.url, 'GET', `/v2/sem/app/blobs/${blobDigest}`);
  const h = await http(reg.url, 'HEAD', `/v2/sem/app/blobs/${blobDigest}`);
  assert.equal(g.status, 200);
  assert.equal(h.status, 200);
  for (const f of HEAD_FIELDS) assert.equal(h.headers.get(f), g.headers.get(f), f);
  assert.equal(g.headers.get('content-length'), String(blob.length));
  assert.equal(g.headers.get('docker-content-digest'), blobDigest);
  assert.deepEqual(g.body, blob);
  assert.equal(h.body.length, 0);
});

test('HEAD manifest equals GET manifest, by tag and by digest', async () => {
  for (const ref of ['v1', img.digest]) {
    const g = await http(reg.url, 'GET', `/v2/sem/app/manifests/${ref}`);
    const h = await http(reg.url, 'HEAD', `/v2/sem/app/manifests/${ref}`);
    assert.equal(g.status, 200);
    assert.equal(h.status, 200);
    for (const f of HEAD_FIELDS) assert.equal(h.headers.get(f), g.headers.get(f), `${ref} ${f}`);
    assert.equal(g.headers.get('content-type'), OCI_MANIFEST);
    assert.equal(g.headers.get('content-length'), String(img.manifest.length));
    assert.equal(g.headers.get('docker-content-digest'), img.digest);
    assert.deepEqual(g.body, img.manifest);
    assert.equal(h.body.length, 0);
  }
});

test('Range GET: 206 with Content-Range for a, a-b, -suffix; 416 with bytes */len beyond the end', async () => {
  const path = `/v2/sem/app/blobs/${blobDigest}`;
  let r = await http(reg.url, 'GET', path, { headers: { Range: 'bytes=10-19' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers.get('content-range'), `bytes 10-19/${blob.length}`);
  assert.equal(r.headers.get('content-length'), '10');
  assert.deepEqual(r.body, blob.subarray(10, 20));
  r = await http(reg.url, 'GET', path, { headers: { Range: 'bytes=990-' } });
  assert.equal(r.status, 206);
  assert.deepEqual(r.body, blob.subarray(990));
  r = await http(reg.url, 'GET', path, { headers: { Range: 'bytes=-5' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers.get('content-range'), `bytes 995-999/${blob.length}`);
  assert.deepEqual(r.body, blob.subarray(995));
  r = await http(reg.url, 'GET', path, { headers: { Range: 'bytes=990-5000' } });
  assert.equal(r.status, 206, 'an end past the size is clamped');
  assert.deepEqual(r.body, blob.subarray(990));
  r = await http(reg.url, 'GET', path, { headers: { Range: `bytes=${blob.length}-` } });
  assertError(r, 416, 'RANGE_INVALID');
  assert.equal(r.headers.get('content-range'), `bytes */${blob.length}`);
  r = await http(reg.url, 'GET', path, { headers: { Range: 'bytes=5000-6000' } });
  assertError(r, 416, 'RANGE_INVALID');
  assert.equal(r.headers.get('content-range'), `bytes */${blob.length}`);
  // A syntactically invalid or multi-range header is ignored: the whole blob.
  r = await http(reg.url, 'GET', path, { headers: { Range: 'bytes=1-2,5-6' } });
  assert.equal(r.status, 200);
  assert.deepEqual(r.body, blob);
});

test('ETag and If-None-Match give 304 for blobs and manifests', async () => {
  for (const path of [`/v2/sem/app/blobs/${blobDigest}`, '/v2/sem/app/manifests/v1', `/v2/sem/app/manifests/${img.digest}`]) {
    const g = await http(reg.url, 'GET', path);
    const etag = g.headers.get('etag');
    assert.ok(etag, path);
    assert.match(etag, /^"sha256:[0-9a-f]{64}"$/);
    const c = await http(reg.url, 'GET', path, { headers: { 'If-None-Match': etag } });
    assert.equal(c.status, 304, path);
    assert.equal(c.body.length, 0);
    assert.equal(c.headers.get('docker-distribution-api-version'), 'registry/2.0');
    const list = await http(reg.url, 'GET', path, { headers: { 'If-None-Match': `"other", ${etag}` } });
    assert.equal(list.status, 304);
    const other = await http(reg.url, 'GET', path, { headers: { 'If-None-Match': `"${sha256('x')}"` } });
    assert.equal(other.status, 200);
  }
});

test('Docker-Distribution-API-Version on every response, including errors and unknown paths', async () => {
  const cases: [string, string][] = [
    ['GET', '/v2/'], ['HEAD', '/v2/'], ['GET', '/v2'], ['GET', '/v2/_catalog'],
    ['GET', '/v2/sem/app/tags/list'], ['GET', '/v2/nope/tags/list'], ['GET', '/v2/sem/app/manifests/missing'],
    ['GET', `/v2/sem/app/blobs/${sha256('missing')}`], ['GET', '/nothing/here'], ['GET', '/v2/sem/app/what'],
    ['PATCH', '/v2/sem/app/manifests/v1'], ['GET', '/v2/BAD/tags/list'], ['POST', '/v2/sem/app/blobs/uploads/'],
  ];
  for (const [method, path] of cases) {
    const r = await http(reg.url, method, path);
    assert.equal(r.headers.get('docker-distribution-api-version'), 'registry/2.0', `${method} ${path}`);
  }
});

test('error bodies: spec code and status for each kind of error', async () => {
  assertError(await http(reg.url, 'GET', '/v2/nope/tags/list'), 404, 'NAME_UNKNOWN');
  assertError(await http(reg.url, 'GET', '/v2/Upper/tags/list'), 400, 'NAME_INVALID');
  assertError(await http(reg.url, 'GET', '/v2/sem/app/manifests/missing'), 404, 'MANIFEST_UNKNOWN');
  assertError(await http(reg.url, 'GET', '/v2/nope/manifests/missing'), 404, 'NAME_UNKNOWN');
  assertError(await http(reg.url, 'GET', `/v2/sem/app/blobs/${sha256('missing')}`), 404, 'BLOB_UNKNOWN');
  assertError(await http(reg.url, 'GET', '/v2/sem/app/blobs/sha256:abc'), 400, 'DIGEST_INVALID');
  assertError(await http(reg.url, 'GET', '/v2/sem/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e'), 400, 'DIGEST_INVALID');
  assertError(await http(reg.url, 'PATCH', '/v2/sem/app/manifests/v1'), 405, 'UNSUPPORTED');
  assertError(await http(reg.url, 'GET', '/v2/sem/app/blobs/uploads/00000000-0000-4000-8000-000000000000'), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(await http(reg.url, 'GET', '/v2/sem/app/blobs/uploads/not-an-id'), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(await http(reg.url, 'GET', '/v2/sem/app/tags/list?n=-1'), 400, 'PAGINATION_NUMBER_INVALID');
  assertError(await http(reg.url, 'PUT', '/v2/sem/app/manifests/v2', { headers: { 'Content-Type': OCI_MANIFEST }, body: 'nope' }), 400, 'MANIFEST_INVALID');
  assertError(await http(reg.url, 'PUT', '/v2/sem/app/manifests/-bad', { headers: { 'Content-Type': OCI_MANIFEST }, body: img.manifest }), 400, 'TAG_INVALID');
  // Malformed percent-encoding never reaches a handler (fetch would refuse to send it).
  const r = await raw(reg.url, 'GET', '/v2/sem%zz/tags/list');
  assert.equal(r.status, 400);
  assert.equal(r.headers['docker-distribution-api-version'], 'registry/2.0');
  assert.equal(JSON.parse(r.body.toString()).errors[0].code, 'NAME_INVALID');
});

test('GET /v2/ answers 200 with a JSON body', async () => {
  const r = await http(reg.url, 'GET', '/v2/');
  assert.equal(r.status, 200);
  assert.deepEqual(r.json(), {});
});
