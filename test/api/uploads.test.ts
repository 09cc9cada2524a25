// Every way to upload a blob, the session endpoints, and resuming after a restart.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { assertError, http, sha256, startReg, type TestRegistry } from './util.js';

let reg: TestRegistry;
before(async () => { reg = await startReg(); });
after(async () => { await reg?.destroy(); });

const start = async (repo: string) => {
  const r = await http(reg.url, 'POST', `/v2/${repo}/blobs/uploads/`);
  assert.equal(r.status, 202);
  assert.equal(r.headers.get('range'), '0-0');
  assert.equal(r.headers.get('content-length'), '0');
  return r.headers.get('location')!;
};
const getBlob = (repo: string, d: string) => http(reg.url, 'GET', `/v2/${repo}/blobs/${d}`);
const storedFiles = () => readdirSync(join(reg.data, 'blobs'), { recursive: true }).map(String).filter((p) => /[0-9a-f]{64}/.test(p));
const uploadFiles = () => readdirSync(join(reg.data, 'uploads'));

test('monolithic POST ?digest= stores the blob: 201, Location, Docker-Content-Digest', async () => {
  const data = randomBytes(5000);
  const r = await http(reg.url, 'POST', `/v2/up/mono/blobs/uploads/?digest=${sha256(data)}`, { body: data });
  assert.equal(r.status, 201);
  assert.equal(r.headers.get('location'), `/v2/up/mono/blobs/${sha256(data)}`);
  assert.equal(r.headers.get('docker-content-digest'), sha256(data));
  assert.deepEqual((await getBlob('up/mono', sha256(data))).body, data);
});

test('POST then PUT with the whole body', async () => {
  const data = randomBytes(3000);
  const loc = await start('up/put');
  const r = await http(reg.url, 'PUT', `${loc}?digest=${sha256(data)}`, { body: data });
  assert.equal(r.status, 201, r.text());
  assert.deepEqual((await getBlob('up/put', sha256(data))).body, data);
  assertError(await http(reg.url, 'GET', loc), 404, 'BLOB_UPLOAD_UNKNOWN');
});

test('chunked PATCH with Content-Range, status between chunks, final chunk in the PUT', async () => {
  const data = randomBytes(10_000);
  let loc = await start('up/chunked');
  const cuts = [0, 4000, 7000, 10_000];
  for (let i = 0; i < 2; i++) {
    const [a, b] = [cuts[i]!, cuts[i + 1]!];
    const r = await http(reg.url, 'PATCH', loc, { headers: { 'Content-Range': `${a}-${b - 1}` }, body: data.subarray(a, b) });
    assert.equal(r.status, 202, r.text());
    assert.equal(r.headers.get('range'), `0-${b - 1}`);
    loc = r.headers.get('location')!;
    const s = await http(reg.url, 'GET', loc);
    assert.equal(s.status, 204);
    assert.equal(s.headers.get('range'), `0-${b - 1}`);
    assert.equal(s.headers.get('docker-upload-uuid'), loc.split('/').pop());
  }
  // A chunk that skips ahead, or repeats, is 416 and changes nothing.
  assertError(await http(reg.url, 'PATCH', loc, { headers: { 'Content-Range': '8000-8999' }, body: data.subarray(8000, 9000) }), 416, 'RANGE_INVALID');
  assertError(await http(reg.url, 'PATCH', loc, { headers: { 'Content-Range': '0-3999' }, body: data.subarray(0, 4000) }), 416, 'RANGE_INVALID');
  // Content-Range and Content-Length that disagree.
  assertError(await http(reg.url, 'PATCH', loc, { headers: { 'Content-Range': '7000-7009' }, body: data.subarray(7000, 7005) }), 416, 'RANGE_INVALID');
  assert.equal((await http(reg.url, 'GET', loc)).headers.get('range'), '0-6999');
  const r = await http(reg.url, 'PUT', `${loc}?digest=${sha256(data)}`, { headers: { 'Content-Range': '7000-9999' }, body: data.subarray(7000) });
  assert.equal(r.status, 201, r.text());
  assert.deepEqual((await getBlob('up/chunked', sha256(data))).body, data);
});

test("Docker's way: one streaming PATCH without Content-Range (chunked encoding), then an empty PUT", async () => {
  const parts = Array.from({ length: 20 }, () => randomBytes(64 * 1024));
  const data = Buffer.concat(parts);
  const loc = await start('up/docker');
  let i = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(c) { if (i < parts.length) c.enqueue(parts[i++]!); else c.close(); },
  });
  const p = await http(reg.url, 'PATCH', loc, { headers: { 'Content-Type': 'application/octet-stream' }, body });
  assert.equal(p.status, 202, p.text());
  assert.equal(p.headers.get('range'), `0-${data.length - 1}`);
  const r = await http(reg.url, 'PUT', `${p.headers.get('location')}?digest=${sha256(data)}`);
  assert.equal(r.status, 201, r.text());
  const g = await getBlob('up/docker', sha256(data));
  assert.equal(g.headers.get('content-length'), String(data.length));
  assert.deepEqual(g.body, data);
});

test('DELETE of an upload: 204, then BLOB_UPLOAD_UNKNOWN everywhere, and its file is gone', async () => {
  const loc = await start('up/cancel');
  await http(reg.url, 'PATCH', loc, { body: 'partial' });
  const id = loc.split('/').pop()!;
  assert.ok(uploadFiles().includes(id));
  const d = await http(reg.url, 'DELETE', loc);
  assert.equal(d.status, 204);
  assert.equal(d.headers.get('docker-distribution-api-version'), 'registry/2.0');
  assert.ok(!uploadFiles().includes(id));
  assertError(await http(reg.url, 'GET', loc), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(await http(reg.url, 'PATCH', loc, { body: 'x' }), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(await http(reg.url, 'PUT', `${loc}?digest=${sha256('partial')}`), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(await http(reg.url, 'DELETE', loc), 404, 'BLOB_UPLOAD_UNKNOWN');
});

test('digest mismatch: DIGEST_INVALID and nothing stored (monolithic and session)', async () => {
  const files = storedFiles();
  const wrong = sha256('something else');
  assertError(await http(reg.url, 'POST', `/v2/up/bad/blobs/uploads/?digest=${wrong}`, { body: 'content' }), 400, 'DIGEST_INVALID');
  const loc = await start('up/bad');
  await http(reg.url, 'PATCH', loc, { body: 'content' });
  assertError(await http(reg.url, 'PUT', `${loc}?digest=${wrong}`), 400, 'DIGEST_INVALID');
  assertError(await getBlob('up/bad', wrong), 404, 'BLOB_UNKNOWN');
  assertError(await getBlob('up/bad', sha256('content')), 404, 'BLOB_UNKNOWN');
  assert.deepEqual(storedFiles(), files);
  // The failed session is over, its file removed (Distribution does the same).
  assertError(await http(reg.url, 'GET', loc), 404, 'BLOB_UPLOAD_UNKNOWN');
  assert.ok(!uploadFiles().includes(loc.split('/').pop()!));
  assert.deepEqual(readdirSync(join(reg.data, 'tmp')), []);
  // PUT without digest is refused too.
  const loc2 = await start('up/bad');
  assertError(await http(reg.url, 'PUT', loc2), 400, 'DIGEST_INVALID');
});

test('an upload is resumable after a registry restart', async () => {
  const data = randomBytes(200_000);
  const first = await startReg();
  let loc = await (async () => {
    const r = await http(first.url, 'POST', '/v2/up/resume/blobs/uploads/');
    return r.headers.get('location')!;
  })();
  const p = await http(first.url, 'PATCH', loc, { headers: { 'Content-Range': '0-119999' }, body: data.subarray(0, 120_000) });
  assert.equal(p.status, 202);
  await first.close();

  const second = await startReg({ data: first.data });
  try {
    const s = await http(second.url, 'GET', loc);
    assert.equal(s.status, 204);
    assert.equal(s.headers.get('range'), '0-119999', 'the offset survives the restart');
    assertError(await http(second.url, 'PATCH', loc, { headers: { 'Content-Range': '0-9' }, body: data.subarray(0, 10) }), 416, 'RANGE_INVALID');
    const p2 = await http(second.url, 'PATCH', loc, { headers: { 'Content-Range': '120000-179999' }, body: data.subarray(120_000, 180_000) });
    assert.equal(p2.status, 202, p2.text());
    loc = p2.headers.get('location')!;
    const r = await http(second.url, 'PUT', `${loc}?digest=${sha256(data)}`, { body: data.subarray(180_000) });
    assert.equal(r.status, 201, r.text());
    const g = await http(second.url, 'GET', `/v2/up/resume/blobs/${sha256(data)}`);
    assert.deepEqual(g.body, data);
  } finally {
    await second.destroy();
  }
});

test('a client that aborts mid-PATCH leaves a consistent, resumable upload', async () => {
  const loc = await start('up/abort');
  const ac = new AbortController();
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      if (sent >= 3) { ac.abort(); await new Promise((r) => setTimeout(r, 50)); c.close(); return; }
      sent++;
      c.enqueue(randomBytes(32 * 1024));
      await new Promise((r) => setTimeout(r, 20));
    },
  });
  await assert.rejects(fetch(reg.url + loc, { method: 'PATCH', body, signal: ac.signal, duplex: 'half' } as RequestInit));
  // The server sees the abort asynchronously; then the upload reports what it kept.
  let offset = -1;
  for (let i = 0; i < 50; i++) {
    const s = await http(reg.url, 'GET', loc);
    assert.equal(s.status, 204);
    offset = Number(s.headers.get('range')!.split('-')[1]) + 1;
    if (offset > 1) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(offset > 1 && offset <= 3 * 32 * 1024, `offset ${offset}`);
  const rest = randomBytes(100);
  const p = await http(reg.url, 'PATCH', loc, { headers: { 'Content-Range': `${offset}-${offset + 99}` }, body: rest });
  assert.equal(p.status, 202, p.text());
});
