// Startup reconciliation after a crash, and the purge of stale uploads (including its
// command-line flag and environment variable).
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { UploadUnknown } from '../../src/blobs/errors.js';
import { Storage } from '../../src/blobs/storage.js';
import { registryErrorOf } from '../../src/registry/errors.js';
import { spawnRegistry, tempDir } from '../helpers/registry.js';
import { assertError, http, pushBlob, pushImage, sha256, startReg } from '../api/util.js';
import type { SqliteIndex } from '../../src/blobs/index/sqlite.js';

test('startup: index row without file is dropped, file without row is removed, tmp is cleared', async () => {
  const reg = await startReg();
  const data = reg.data;
  try {
    const img = await pushImage(reg.url, 'rec/app', 'v1');
    const lone = await pushBlob(reg.url, 'rec/app', 'a blob whose file will vanish');
    await reg.close();

    // A crash between unlink and row delete (or an operator's rm): row without file.
    unlinkSync(reg.storage.layout.blobPath(lone));
    // The manifest's file vanishes too: its manifest row and tags must go with it.
    unlinkSync(reg.storage.layout.blobPath(img.digest));
    // A crash between rename and row insert: file without row at a final path.
    const orphan = sha256('orphan file');
    const orphanPath = reg.storage.layout.blobPath(orphan);
    mkdirSync(join(orphanPath, '..'), { recursive: true });
    writeFileSync(orphanPath, 'orphan file');
    // A crash mid-write: a temporary file.
    writeFileSync(join(data, 'tmp', 'half-written'), 'partial');

    const s = await Storage.open(data);
    try {
      assert.equal(await s.index.blobSize(lone), undefined);
      assert.equal(await s.index.blobSize(img.digest), undefined);
      assert.equal(await s.resolveManifest('rec/app', { tag: 'v1' }), undefined);
      assert.equal((await s.listTags('rec/app', '', 10))?.length, 0);
      assert.ok(!existsSync(orphanPath), 'orphan file removed');
      assert.deepEqual(readdirSync(join(data, 'tmp')), []);
      // What was consistent survives.
      assert.equal(await s.blobSize('rec/app', sha256(img.config)), img.config.length);
      assert.equal(await s.blobSize('rec/app', sha256(img.layer)), img.layer.length);
      const again = await s.reconcile();
      assert.deepEqual(again, { rowsDropped: 0, filesRemoved: 0, uploadsPurged: 0 }, 'reconciliation is idempotent');
    } finally {
      await s.close();
    }
    // And through HTTP after a restart, the dropped things are clean 404s.
    const reg2 = await startReg({ data });
    try {
      assertError(await http(reg2.url, 'GET', `/v2/rec/app/blobs/${lone}`), 404, 'BLOB_UNKNOWN');
      assertError(await http(reg2.url, 'GET', '/v2/rec/app/manifests/v1'), 404, 'MANIFEST_UNKNOWN');
      assert.equal((await http(reg2.url, 'GET', `/v2/rec/app/blobs/${sha256(img.config)}`)).status, 200);
    } finally {
      await reg2.close();
    }
  } finally {
    rmSync(data, { recursive: true, force: true });
  }
});

test('stale uploads older than uploadMaxAgeMs are purged; fresh ones and unknown files are handled', async () => {
  const data = tempDir('nixreg-rec-');
  try {
    let s = await Storage.open(data, { uploadMaxAgeMs: 60_000 });
    const stale = await s.startUpload('rec/up');
    const fresh = await s.startUpload('rec/up');
    const gone = await s.startUpload('rec/up');
    (s.index as SqliteIndex).db.prepare('UPDATE uploads SET updated_at = ? WHERE id = ?').run(Date.now() - 120_000, stale);
    unlinkSync(s.layout.uploadPath(gone));
    writeFileSync(join(data, 'uploads', 'stray-file'), 'x');
    await s.close();

    s = await Storage.open(data, { uploadMaxAgeMs: 60_000 });
    try {
      assert.equal(await s.index.getUpload(stale), undefined);
      assert.equal(await s.index.getUpload(gone), undefined, 'an upload whose file is gone is dropped');
      assert.ok(await s.index.getUpload(fresh));
      assert.deepEqual(readdirSync(join(data, 'uploads')), [fresh]);
      await assert.rejects(s.uploadOffset('rec/up', stale),
        (e) => e instanceof UploadUnknown && registryErrorOf(e)?.code === 'BLOB_UPLOAD_UNKNOWN');
      assert.equal(await s.uploadOffset('rec/up', fresh), 0);
      // An upload in use is never purged under the client's feet, even if old.
      (s.index as SqliteIndex).db.prepare('UPDATE uploads SET updated_at = ? WHERE id = ?').run(Date.now() - 120_000, fresh);
      const { PassThrough } = await import('node:stream');
      const body = new PassThrough();
      const append = s.appendUpload('rec/up', fresh, body);
      await new Promise((r) => setImmediate(r));
      assert.equal(await s.purgeStaleUploads(), 0);
      body.end('data');
      assert.equal(await append, 4);
      assert.equal(await s.purgeStaleUploads(), 0, 'the append touched it');
    } finally {
      await s.close();
    }
  } finally {
    rmSync(data, { recursive: true, force: true });
  }
});

test('a purge running while an upload starts never removes the new upload', async () => {
  const data = tempDir('nixreg-rec-');
  try {
    const s = await Storage.open(data);
    try {
      await s.startUpload('rec/race');
      // The purge snapshots the upload rows, then awaits; the new upload starts meanwhile.
      const purge = s.purgeStaleUploads();
      const id = await s.startUpload('rec/race');
      await purge;
      assert.ok(existsSync(s.layout.uploadPath(id)), 'the new upload keeps its file');
      const { Readable } = await import('node:stream');
      assert.equal(await s.appendUpload('rec/race', id, Readable.from([Buffer.from('abc')])), 3);
      assert.equal(await s.finishUpload('rec/race', id, sha256('abc')), 3);
    } finally {
      await s.close();
    }
  } finally {
    rmSync(data, { recursive: true, force: true });
  }
});

test('--upload-max-age and NIXREG_UPLOAD_MAX_AGE set the purge age of the real CLI', async () => {
  for (const opts of [{ args: ['--upload-max-age', '1'] }, { env: { NIXREG_UPLOAD_MAX_AGE: '1' } }]) {
    const proc = await spawnRegistry(opts);
    try {
      const r = await http(proc.url, 'POST', '/v2/rec/cli/blobs/uploads/');
      assert.equal(r.status, 202);
      const loc = r.headers.get('location')!;
      assert.equal((await http(proc.url, 'GET', loc)).status, 204);
      let status = 204;
      for (let i = 0; i < 40 && status === 204; i++) {
        await new Promise((res) => setTimeout(res, 250));
        status = (await http(proc.url, 'GET', loc)).status;
      }
      assert.equal(status, 404, `upload purged after its max age (${JSON.stringify(opts)})`);
    } finally {
      await proc.stop();
      rmSync(proc.data, { recursive: true, force: true });
    }
  }
  const data = tempDir('nixreg-rec-');
  try {
    await assert.rejects(spawnRegistry({ data, args: ['--upload-max-age', 'soon'] }), /exited 2[\s\S]*upload-max-age/);
  } finally {
    rmSync(data, { recursive: true, force: true });
  }
});
