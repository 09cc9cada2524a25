// A full disk and a full index, in-process and fast. The disk: a tiny tmpfs as the data
// directory, its free space set by a ballast file; the index: SQLite's max_page_count,
// past which a write fails exactly as on a full disk (SQLITE_FULL), and that same error
// injected where a B-tree page with room left would make the cap miss. Every failure is
// a 507 UNAVAILABLE saying the storage is full, leaves no temporary or upload bytes and
// no blob file without its row, and the same write succeeds once the space is back.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { makeDir } from '../../src/blobs/core.js';
import { StorageFull } from '../../src/blobs/errors.js';
import { Storage } from '../../src/blobs/storage.js';
import { stdoutSink } from '../../src/log.js';
import { OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, assertError, http, pushBlob, putManifest, sha256, startReg, type TestRegistry } from '../api/util.js';
import { tempDir } from '../helpers/registry.js';
import { checkStore, filesIn } from '../helpers/store-check.js';
import { mountTmpfs, type Tmpfs } from '../helpers/tmpfs.js';
import type { SqliteIndex } from '../../src/blobs/index/sqlite.js';

const MiB = 1024 * 1024;
const REPO = 'full/disk';

let disk: Tmpfs;
let reg: TestRegistry | undefined;

before(() => { disk = mountTmpfs(8, 'nixreg-full-'); });
after(async () => {
  await reg?.close();
  disk.unmount();
});

async function registry(): Promise<TestRegistry> {
  reg ??= await startReg({ data: join(disk.dir, 'data') });
  return reg;
}

function assertFull(r: Awaited<ReturnType<typeof http>>, method = 'POST') {
  assertError(r, 507, 'UNAVAILABLE', method);
  assert.match(r.json().errors[0].message, /^the registry's storage is full: no space left to /);
}

/** Nothing of a failed write is left: no temporary file, no upload file. */
function assertNothingLeft(data: string) {
  assert.deepEqual(filesIn(join(data, 'tmp')), [], 'temporary files left');
  assert.deepEqual(filesIn(join(data, 'uploads')), [], 'upload files left');
}

test('uploads that do not fit: 507, their bytes freed at once, and the same pushes work once space is back', async () => {
  const { url, data } = await registry();
  const blob = randomBytes(3 * MiB);
  const digest = sha256(blob);
  disk.fill(MiB);
  const before = disk.free();

  // Monolithic.
  assertFull(await http(url, 'POST', `/v2/${REPO}/blobs/uploads/?digest=${digest}`,
    { headers: { 'Content-Type': 'application/octet-stream' }, body: blob }));
  assertNothingLeft(data);

  // Chunked: one chunk that fits, then one that does not; the session ends with it.
  const start = await http(url, 'POST', `/v2/${REPO}/blobs/uploads/`);
  assert.equal(start.status, 202);
  const loc = start.headers.get('location')!;
  const first = await http(url, 'PATCH', loc, { headers: { 'Content-Range': `0-${MiB / 4 - 1}` }, body: blob.subarray(0, MiB / 4) });
  assert.equal(first.status, 202, first.text());
  const second = await http(url, 'PATCH', loc, { headers: { 'Content-Range': `${MiB / 4}-${blob.length - 1}` }, body: blob.subarray(MiB / 4) });
  assertFull(second, 'PATCH');
  assert.match(second.json().errors[0].message, /the upload was ended/);
  assertError(await http(url, 'GET', loc), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertNothingLeft(data);
  // The chunk PUT at the end of an upload (end-6 with a body) fails the same way.
  const put = await http(url, 'POST', `/v2/${REPO}/blobs/uploads/`);
  assertFull(await http(url, 'PUT', `${put.headers.get('location')!}?digest=${digest}`,
    { headers: { 'Content-Type': 'application/octet-stream' }, body: blob }), 'PUT');
  assertNothingLeft(data);
  // What the failures wrote is free again (the index may have grown a little).
  assert.ok(disk.free() >= before - 256 * 1024, `free space ${disk.free()} < ${before} less the index's growth`);
  assert.equal(await checkStore(data, 'after the failed uploads'), 0);

  disk.release();
  await pushBlob(url, REPO, blob);
  const chunked = await http(url, 'POST', `/v2/${REPO}/blobs/uploads/`);
  const other = randomBytes(3 * MiB);
  const patched = await http(url, 'PATCH', chunked.headers.get('location')!, { body: other });
  assert.equal(patched.status, 202);
  const done = await http(url, 'PUT', `${patched.headers.get('location')!}?digest=${sha256(other)}`);
  assert.equal(done.status, 201, done.text());
  for (const b of [blob, other]) {
    const got = await http(url, 'GET', `/v2/${REPO}/blobs/${sha256(b)}`);
    assert.ok(got.body.equals(b));
  }
  assert.equal(await checkStore(data, 'after space came back'), 2);
});

test('a manifest that does not fit: 507, no file without its row; stored once space is back', async () => {
  const { url, data } = await registry();
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const layer = randomBytes(1000);
  await pushBlob(url, REPO, config);
  await pushBlob(url, REPO, layer);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
    layers: [{ mediaType: OCI_LAYER, digest: sha256(layer), size: layer.length }],
    annotations: { pad: 'x'.repeat(64 * 1024) },
  }));
  disk.fill(0);
  assertFull(await putManifest(url, REPO, 'v1', manifest), 'PUT');
  assert.ok(!existsSync(reg!.storage.blobPath(sha256(manifest))), 'the manifest file was taken back');
  assertError(await http(url, 'GET', `/v2/${REPO}/manifests/v1`, { headers: { Accept: OCI_MANIFEST } }), 404, 'MANIFEST_UNKNOWN');
  assertNothingLeft(data);
  await checkStore(data, 'after the failed manifest');
  assert.ok(reg!.storage.lastFull()! > Date.now() - 60_000, 'lastFull() tells when');

  disk.release();
  const ok = await putManifest(url, REPO, 'v1', manifest);
  assert.equal(ok.status, 201, ok.text());
  const got = await http(url, 'GET', `/v2/${REPO}/manifests/v1`, { headers: { Accept: OCI_MANIFEST } });
  assert.ok(got.body.equals(manifest));
  await checkStore(data, 'after space came back');
});

test('a full index: a blob or manifest file renamed into place is taken back when its row cannot be written', async () => {
  const data = tempDir('nixreg-fullindex-');
  const s = await Storage.open(data);
  const full = () => new Database.SqliteError('database or disk is full', 'SQLITE_FULL');
  const index = s.index as unknown as Record<string, unknown>;
  try {
    // An upload begun while there was room, to be finished when there is none.
    const id = await s.startUpload(REPO);
    const upload = randomBytes(5000);
    await s.appendUpload(REPO, id, Readable.from([upload]));

    // The real thing: the index may not grow, and blobs are written until one's row
    // needs a page it cannot have.
    const db = (s.index as SqliteIndex).db;
    db.pragma(`max_page_count = ${db.pragma('page_count', { simple: true }) as number}`);
    let failure: unknown;
    let last = Buffer.alloc(0);
    for (let i = 0; i < 1000 && !failure; i++) {
      last = Buffer.from(`blob ${i} ${'y'.repeat(200)}`);
      try { await s.writeBlob(REPO, last); } catch (e) { failure = e; }
    }
    assert.ok(failure instanceof StorageFull, `a full index is StorageFull, not ${String(failure)}`);
    assert.equal(failure.reason, 'SQLITE_FULL');
    assert.equal(await s.index.blobSize(sha256(last)), undefined);
    assert.ok(!existsSync(s.blobPath(sha256(last))), 'no blob file without its row');

    // The row of a finished upload, and of a manifest, refused the same way.
    index.addBlob = () => { throw full(); };
    await assert.rejects(s.finishUpload(REPO, id, sha256(upload)), StorageFull);
    assert.ok(!existsSync(s.blobPath(sha256(upload))), 'no blob file without its row');
    await assert.rejects(s.uploadOffset(REPO, id), /upload unknown/, 'the failed upload is ended');
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: sha256('{}'), size: 2 }, layers: [] }));
    const info = { mediaType: OCI_MANIFEST, blobs: [], manifests: [] };
    index.putManifest = () => { throw full(); };
    await assert.rejects(s.putManifest(REPO, body, info, 'v1'), StorageFull);
    assert.ok(!existsSync(s.blobPath(sha256(body))), 'no manifest file without its row');
    assert.deepEqual(filesIn(join(data, 'tmp')), []);
    assert.deepEqual(filesIn(join(data, 'uploads')), []);

    // Room again: the same writes succeed, without reopening anything.
    delete index.addBlob;
    delete index.putManifest;
    db.pragma('max_page_count = 1073741823');
    await s.writeBlob(REPO, last);
    await s.writeBlob(REPO, upload);
    await s.putManifest(REPO, body, info, 'v1');
    assert.ok(readFileSync(s.blobPath(sha256(body))).equals(body));
  } finally {
    await s.close();
  }
  try {
    await checkStore(data, 'after the full index');
  } finally {
    rmSync(data, { recursive: true, force: true });
  }
});

test('the log sink drops lines while its file is on a full disk, and logs again once space is back', () => {
  const file = join(disk.dir, 'log');
  const fd = openSync(file, 'a');
  const sink = { ...stdoutSink, fd, broken: false, dropped: 0 };
  try {
    disk.fill(0);
    for (let i = 0; i < 10; i++) sink.write(`${JSON.stringify({ msg: 'x'.repeat(8192), i })}\n`);
    assert.ok(sink.dropped > 0, 'some lines could not be written');
    assert.equal(sink.broken, false, 'a full disk is no broken stdout');
    disk.release();
    sink.write('after\n');
    assert.match(readFileSync(file, 'utf8'), /after\n$/);
  } finally {
    closeSync(fd);
    disk.release();
  }
});

test('makeDir reports a directory it cannot create for lack of space as ENOSPC (Node\'s recursive mkdir says ENOENT)', async () => {
  const tiny = mountTmpfs(1, 'nixreg-inodes-', 16);
  try {
    mkdirSync(join(tiny.dir, 'a'));
    for (let i = 0; ; i++) {
      try { writeFileSync(join(tiny.dir, `f${i}`), ''); } catch { break; /* no inode left */ }
    }
    await assert.rejects(makeDir(join(tiny.dir, 'a', 'b', 'c')), { code: 'ENOSPC' });
    assert.deepEqual(await makeDir(join(tiny.dir, 'a')), [], 'an existing directory is no error');
  } finally {
    tiny.unmount();
  }
});
