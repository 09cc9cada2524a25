// Manifest push and pull: bytes kept exactly, the four manifest types, Accept
// negotiation, and every way a manifest is refused.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
  assertError, http, pushBlob, pushImage, putManifest, sha256, sha512, startReg, type TestRegistry,
} from './util.js';

let reg: TestRegistry;
let config: string;
let layer: string;
const configBody = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
const layerBody = Buffer.from('not really a tarball');

before(async () => {
  reg = await startReg();
  config = await pushBlob(reg.url, 'm/app', configBody);
  layer = await pushBlob(reg.url, 'm/app', layerBody);
});
after(async () => { await reg?.destroy(); });

const image = (mediaType: string | undefined, cfgType = OCI_CONFIG) => ({
  schemaVersion: 2,
  ...(mediaType ? { mediaType } : {}),
  config: { mediaType: cfgType, digest: config, size: configBody.length },
  layers: [{ mediaType: OCI_LAYER, digest: layer, size: layerBody.length }],
});

test('a manifest is stored and served byte for byte (odd whitespace, key order, trailing newline)', async () => {
  const body = Buffer.from(`{
      "layers" :[ {"size": ${layerBody.length},"digest":"${layer}", "mediaType":"${OCI_LAYER}"} ] ,
  "schemaVersion":2,"config":{"digest":"${config}","mediaType":"${OCI_CONFIG}","size":${configBody.length}},
    "mediaType":   "${OCI_MANIFEST}"   }\n\n`);
  const r = await putManifest(reg.url, 'm/app', 'odd', body);
  assert.equal(r.status, 201, r.text());
  assert.equal(r.headers.get('docker-content-digest'), sha256(body));
  assert.equal(r.headers.get('location'), `/v2/m/app/manifests/${sha256(body)}`);
  for (const ref of ['odd', sha256(body)]) {
    const g = await http(reg.url, 'GET', `/v2/m/app/manifests/${ref}`);
    assert.deepEqual(g.body, body);
    assert.equal(g.headers.get('docker-content-digest'), sha256(body));
  }
});

test('Docker schema2, Docker manifest list, OCI manifest and OCI index are accepted and served with their type', async () => {
  const docker = Buffer.from(JSON.stringify(image(DOCKER_MANIFEST, DOCKER_CONFIG)));
  const oci = Buffer.from(JSON.stringify(image(OCI_MANIFEST)));
  const cases: [string, Buffer, string][] = [['docker', docker, DOCKER_MANIFEST], ['oci', oci, OCI_MANIFEST]];
  for (const [tag, body, type] of cases) assert.equal((await putManifest(reg.url, 'm/app', tag, body, type)).status, 201);
  const entry = (b: Buffer, t: string) => ({ mediaType: t, digest: sha256(b), size: b.length, platform: { architecture: 'amd64', os: 'linux' } });
  const list = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: DOCKER_LIST, manifests: [entry(docker, DOCKER_MANIFEST)] }));
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [entry(oci, OCI_MANIFEST)] }));
  cases.push(['list', list, DOCKER_LIST], ['index', index, OCI_INDEX]);
  assert.equal((await putManifest(reg.url, 'm/app', 'list', list, DOCKER_LIST)).status, 201);
  assert.equal((await putManifest(reg.url, 'm/app', 'index', index, OCI_INDEX)).status, 201);
  for (const [tag, body, type] of cases) {
    const g = await http(reg.url, 'GET', `/v2/m/app/manifests/${tag}`, { headers: { Accept: type } });
    assert.equal(g.status, 200, tag);
    assert.equal(g.headers.get('content-type'), type);
    assert.deepEqual(g.body, body);
  }
});

test('a manifest without mediaType takes its type from Content-Type', async () => {
  const body = Buffer.from(JSON.stringify(image(undefined, DOCKER_CONFIG)));
  assert.equal((await putManifest(reg.url, 'm/app', 'untyped', body, DOCKER_MANIFEST)).status, 201);
  const g = await http(reg.url, 'GET', '/v2/m/app/manifests/untyped');
  assert.equal(g.headers.get('content-type'), DOCKER_MANIFEST);
});

test('Accept negotiation: served only when Accept admits the stored type, never converted', async () => {
  const get = (tag: string, accept?: string) => http(reg.url, 'GET', `/v2/m/app/manifests/${tag}`, { headers: accept ? { Accept: accept } : {} });
  // No Accept, or a wildcard: anything.
  assert.equal((await get('oci')).status, 200);
  assert.equal((await get('oci', '*/*')).status, 200);
  assert.equal((await get('oci', 'application/*')).status, 200);
  // A list that includes the type (with parameters and q-values) admits it.
  assert.equal((await get('oci', `${DOCKER_MANIFEST}, ${OCI_MANIFEST};q=0.5`)).status, 200);
  // A Docker-only client never gets an OCI manifest (nor an index, nor vice versa): 404.
  assertError(await get('oci', DOCKER_MANIFEST), 404, 'MANIFEST_UNKNOWN');
  assertError(await get('index', `${DOCKER_MANIFEST}, ${DOCKER_LIST}`), 404, 'MANIFEST_UNKNOWN');
  assertError(await get('docker', OCI_MANIFEST), 404, 'MANIFEST_UNKNOWN');
  // q=0 means "not this one".
  assertError(await get('oci', `${OCI_MANIFEST};q=0, ${DOCKER_MANIFEST}`), 404, 'MANIFEST_UNKNOWN');
  // HEAD negotiates the same way.
  assertError(await http(reg.url, 'HEAD', '/v2/m/app/manifests/oci', { headers: { Accept: DOCKER_MANIFEST } }), 404, 'MANIFEST_UNKNOWN', 'HEAD');
});

test('a manifest that is both image and index is MANIFEST_INVALID', async () => {
  const both = { ...image(OCI_MANIFEST), manifests: [] };
  assertError(await putManifest(reg.url, 'm/app', 'both', JSON.stringify(both)), 400, 'MANIFEST_INVALID');
  const idx = { ...image(undefined), mediaType: OCI_INDEX, manifests: [] };
  assertError(await putManifest(reg.url, 'm/app', 'both', JSON.stringify(idx), OCI_INDEX), 400, 'MANIFEST_INVALID');
});

test('mediaType that disagrees with Content-Type is MANIFEST_INVALID', async () => {
  const body = JSON.stringify(image(OCI_MANIFEST));
  assertError(await putManifest(reg.url, 'm/app', 'mismatch', body, DOCKER_MANIFEST), 400, 'MANIFEST_INVALID');
  assertError(await putManifest(reg.url, 'm/app', 'mismatch', body, OCI_INDEX), 400, 'MANIFEST_INVALID');
});

test('malformed manifests are MANIFEST_INVALID and nothing is stored', async () => {
  const bad = [
    'not json', '[]', '{"schemaVersion":1}', JSON.stringify({ ...image(OCI_MANIFEST), layers: 'x' }),
    JSON.stringify({ ...image(OCI_MANIFEST), config: { mediaType: OCI_CONFIG, digest: 'sha256:xyz', size: 1 } }),
    JSON.stringify({ ...image(OCI_MANIFEST), config: { mediaType: OCI_CONFIG, digest: config, size: -1 } }),
    JSON.stringify({ ...image('application/vnd.example.unknown+json') }),
    JSON.stringify({ ...image(OCI_MANIFEST), annotations: { a: 1 } }),
  ];
  for (const b of bad) assertError(await putManifest(reg.url, 'm/app', 'bad', b), 400, 'MANIFEST_INVALID');
  assertError(await http(reg.url, 'GET', '/v2/m/app/manifests/bad'), 404, 'MANIFEST_UNKNOWN');
});

test('missing referenced blobs or child manifests: MANIFEST_BLOB_UNKNOWN, nothing stored', async () => {
  const missingLayer = { ...image(OCI_MANIFEST), layers: [{ mediaType: OCI_LAYER, digest: sha256('absent'), size: 6 }] };
  const body = JSON.stringify(missingLayer);
  const r = await putManifest(reg.url, 'm/app', 'missing', body);
  assertError(r, 404, 'MANIFEST_BLOB_UNKNOWN');
  assert.deepEqual(r.json().errors[0].detail.missing, [sha256('absent')]);
  assertError(await http(reg.url, 'GET', `/v2/m/app/manifests/${sha256(body)}`), 404, 'MANIFEST_UNKNOWN');
  // A blob stored in another repository is not visible here.
  await pushBlob(reg.url, 'm/other', 'elsewhere');
  const foreign = { ...image(OCI_MANIFEST), layers: [{ mediaType: OCI_LAYER, digest: sha256('elsewhere'), size: 9 }] };
  assertError(await putManifest(reg.url, 'm/app', 'foreign', JSON.stringify(foreign)), 404, 'MANIFEST_BLOB_UNKNOWN');
  const index = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: sha256('no manifest'), size: 11 }] };
  assertError(await putManifest(reg.url, 'm/app', 'idx', JSON.stringify(index), OCI_INDEX), 404, 'MANIFEST_BLOB_UNKNOWN');
  // No orphan manifest file was left in the store.
  const stored = readdirSync(join(reg.data, 'blobs/sha256'), { recursive: true }).map(String);
  assert.ok(!stored.some((p) => p.endsWith(sha256(body).slice(7))));
});

test('a manifest body over 4 MiB is refused with 413 and not read into memory', async () => {
  const big = Buffer.alloc(4 * 1024 * 1024 + 1, 0x20);
  const r = await putManifest(reg.url, 'm/app', 'big', big);
  assertError(r, 413, 'MANIFEST_TOO_LARGE');
  // Exactly 4 MiB is allowed through to validation.
  const edge = Buffer.alloc(4 * 1024 * 1024, 0x20);
  const body = Buffer.from(JSON.stringify(image(OCI_MANIFEST)));
  body.copy(edge);
  const ok = await putManifest(reg.url, 'm/app', 'edge', edge);
  assert.equal(ok.status, 201, ok.text());
  assert.deepEqual((await http(reg.url, 'GET', '/v2/m/app/manifests/edge')).body, edge);
});

test('manifest PUT by digest must match the body, in its algorithm', async () => {
  const body = Buffer.from(JSON.stringify(image(OCI_MANIFEST)) + ' ');
  assertError(await putManifest(reg.url, 'm/app', sha256('other'), body), 400, 'DIGEST_INVALID');
  assert.equal((await putManifest(reg.url, 'm/app', sha256(body), body)).status, 201);
});

test('sha512 end to end: upload, blob GET, manifest by sha512 digest', async () => {
  const data = Buffer.from('a blob addressed by sha512');
  const d = sha512(data);
  // Monolithic, and POST/PATCH/PUT.
  assert.equal((await pushBlob(reg.url, 'm/sha512', data, d)), d);
  const data2 = Buffer.from('another sha512 blob, chunked');
  const post = await http(reg.url, 'POST', '/v2/m/sha512/blobs/uploads/');
  const patch = await http(reg.url, 'PATCH', post.headers.get('location')!, { headers: { 'Content-Range': `0-${data2.length - 1}` }, body: data2 });
  assert.equal(patch.status, 202);
  const put = await http(reg.url, 'PUT', `${patch.headers.get('location')}?digest=${sha512(data2)}`);
  assert.equal(put.status, 201, put.text());
  for (const [b, dg] of [[data, d], [data2, sha512(data2)]] as const) {
    const g = await http(reg.url, 'GET', `/v2/m/sha512/blobs/${dg}`);
    assert.equal(g.status, 200);
    assert.deepEqual(g.body, b);
    assert.equal(g.headers.get('docker-content-digest'), dg);
  }
  // A wrong sha512 is DIGEST_INVALID.
  assertError(await http(reg.url, 'POST', `/v2/m/sha512/blobs/uploads/?digest=${sha512('x')}`, { body: 'y' }), 400, 'DIGEST_INVALID');
  // A manifest referencing a sha512 config, pushed and fetched by its sha512 digest.
  const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: OCI_CONFIG, digest: d, size: data.length }, layers: [] }));
  const md = sha512(m);
  const r = await putManifest(reg.url, 'm/sha512', md, m);
  assert.equal(r.status, 201, r.text());
  assert.equal(r.headers.get('docker-content-digest'), md);
  const g = await http(reg.url, 'GET', `/v2/m/sha512/manifests/${md}`);
  assert.equal(g.status, 200);
  assert.deepEqual(g.body, m);
  assert.equal(g.headers.get('docker-content-digest'), md);
  assert.equal((await http(reg.url, 'DELETE', `/v2/m/sha512/manifests/${md}`)).status, 202);
  assertError(await http(reg.url, 'GET', `/v2/m/sha512/manifests/${md}`), 404, 'MANIFEST_UNKNOWN');
});

test('re-tagging moves a tag; pushing the same manifest twice is idempotent', async () => {
  const a = await pushImage(reg.url, 'm/retag', 'latest', { salt: 'a' });
  const b = await pushImage(reg.url, 'm/retag', 'latest', { salt: 'b' });
  assert.notEqual(a.digest, b.digest);
  assert.equal((await http(reg.url, 'GET', '/v2/m/retag/manifests/latest')).headers.get('docker-content-digest'), b.digest);
  assert.equal((await putManifest(reg.url, 'm/retag', 'latest', b.manifest)).status, 201);
  assert.equal((await http(reg.url, 'GET', `/v2/m/retag/manifests/${a.digest}`)).status, 200, 'the old manifest stays by digest');
});
