// An index written by an older schema opens under the current one. From version 1: its
// unfinished uploads survive and stay resumable, and the repository rows that only
// uploads or invented names created are dropped. From version 4: referrers' annotations
// move out of the manifests rows (issue 22) without losing a byte.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { Storage } from '../../src/blobs/storage.js';
import { SCHEMA_VERSION } from '../../src/blobs/index/sqlite-schema.js';
import type { SqliteIndex } from '../../src/blobs/index/sqlite.js';
import { ROOT, tempDir } from '../helpers/registry.js';

test('schema 1 → current: uploads keep their repository and bytes; empty repositories go', async () => {
  const data = tempDir('nixreg-migrate-');
  try {
    const db = new Database(join(data, 'index.db'));
    db.exec(readFileSync(join(ROOT, 'test/fixtures/schema-v1.sql'), 'utf8'));
    db.pragma('user_version = 1');
    const t = Date.now();
    db.prepare('INSERT INTO repositories (id, name, created_at) VALUES (1, ?, ?), (2, ?, ?)').run('kept/repo', t, 'only/uploads', t);
    db.prepare('INSERT INTO blobs (digest, size, created_at) VALUES (?, 1, ?)').run(`sha256:${'a'.repeat(64)}`, t);
    db.prepare('INSERT INTO repo_blobs (repo_id, digest) VALUES (1, ?)').run(`sha256:${'a'.repeat(64)}`);
    const id = '0b7c1a5e-3f4d-4e2a-9b8c-1d2e3f4a5b6c';
    db.prepare('INSERT INTO uploads (id, repo_id, started_at, updated_at) VALUES (?, 2, ?, ?)').run(id, t, t);
    db.close();
    mkdirSync(join(data, 'blobs/sha256/aa'), { recursive: true });
    writeFileSync(join(data, `blobs/sha256/aa/${'a'.repeat(64)}`), 'x');
    mkdirSync(join(data, 'uploads'), { recursive: true });
    writeFileSync(join(data, 'uploads', id), 'partial');

    const s = await Storage.open(data);
    try {
      assert.equal(await s.uploadOffset('only/uploads', id), 7);
      assert.equal(await s.blobSize('kept/repo', `sha256:${'a'.repeat(64)}`), 1);
      assert.equal(await s.repositoryExists('kept/repo'), true);
      assert.equal(await s.repositoryExists('only/uploads'), false);
      const db = (s.index as SqliteIndex).db;
      assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      const plan = db.prepare(`EXPLAIN QUERY PLAN SELECT digest FROM manifests WHERE repo_id = 1 AND subject = 'x' AND digest > '' ORDER BY digest LIMIT 10`).all() as { detail: string }[];
      assert.ok(plan.some((p) => /manifests_referrers/.test(p.detail)), JSON.stringify(plan));
    } finally { await s.close(); }
  } finally { rmSync(data, { recursive: true, force: true }); }
});

test('schema 4 → current: referrers\' annotations leave the manifests rows in batches, whole and byte-exact; tags stay', async () => {
  const data = tempDir('nixreg-migrate-');
  try {
    const db = new Database(join(data, 'index.db'));
    db.exec(readFileSync(join(ROOT, 'test/fixtures/schema-v4.sql'), 'utf8'));
    db.pragma('user_version = 4');
    const t = Date.now();
    db.prepare('INSERT INTO repositories (id, name, created_at) VALUES (1, ?, ?)').run('refs/a', t);
    const digest = (i: number) => `sha256:${createHash('sha256').update(`m${i}`).digest('hex')}`;
    const subject = digest(0);
    const blob = db.prepare('INSERT INTO blobs (digest, size, created_at) VALUES (?, 1, ?)');
    const manifest = db.prepare(`INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, annotations, created_at)
      VALUES (1, ?, 'application/vnd.oci.image.manifest.v1+json', 1, ?, ?, ?, ?)`);
    // 600 referrers (more than a batch of rows), 30 of them of 2 MB (more than a batch of
    // bytes), some with text whose UTF-8 is longer than its characters; and 300 manifests
    // without a subject, whose annotations nothing lists.
    const annotations = new Map<string, string>();
    db.transaction(() => {
      for (let i = 0; i <= 900; i++) {
        const d = digest(i);
        blob.run(d, t);
        mkdirSync(join(data, 'blobs/sha256', d.slice(7, 9)), { recursive: true });
        writeFileSync(join(data, 'blobs/sha256', d.slice(7, 9), d.slice(7)), 'x');
        const a = i === 0 ? null : JSON.stringify({ n: String(i), text: i % 20 === 0 ? 'y'.repeat(2_000_000) : `é…${i}` });
        const referrer = i > 0 && i <= 600;
        if (referrer) annotations.set(d, a!);
        manifest.run(d, referrer ? 'application/x-ref' : null, referrer ? subject : null, a, t);
      }
      db.prepare('INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (1, ?, ?, ?)').run('latest', subject, t);
    })();
    db.close();

    const s = await Storage.open(data);
    try {
      const idx = (s.index as SqliteIndex).db;
      assert.equal(idx.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      // Moved, and NULL behind (the column stays, see sqlite-schema.ts).
      assert.equal((idx.prepare('SELECT count(*) AS n FROM manifests WHERE annotations IS NOT NULL').get() as { n: number }).n, 0);
      assert.equal((idx.prepare('SELECT count(*) AS n FROM manifests').get() as { n: number }).n, 901);
      assert.equal((idx.prepare('SELECT count(*) AS n FROM referrer_annotations').get() as { n: number }).n, 600);
      assert.equal(await s.index.resolveTag('refs/a', 'latest'), subject);
      const rows = await s.referrers('refs/a', subject, { after: '', limit: 1000 });
      assert.deepEqual(rows.map((r) => r.digest), [...annotations.keys()].sort());
      for (const r of rows) {
        const want = annotations.get(r.digest)!;
        assert.equal(r.annotations_bytes, Buffer.byteLength(want));
        assert.equal((await s.referrerAnnotations('refs/a', r.digest))!.toString(), want);
      }
      // Annotations go with their manifest.
      assert.equal(await s.deleteManifest('refs/a', rows[0]!.digest), true);
      assert.equal(await s.referrerAnnotations('refs/a', rows[0]!.digest), undefined);
    } finally { await s.close(); }
    // A nixreg of schema 4 still running on the index writes its annotations where it
    // always did: the next open moves them too.
    const old = new Database(join(data, 'index.db'));
    const late = digest(1000);
    old.prepare('INSERT INTO blobs (digest, size, created_at) VALUES (?, 1, ?)').run(late, t);
    mkdirSync(join(data, 'blobs/sha256', late.slice(7, 9)), { recursive: true });
    writeFileSync(join(data, 'blobs/sha256', late.slice(7, 9), late.slice(7)), 'x');
    old.prepare(`INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, annotations, created_at)
      VALUES (1, ?, 'application/vnd.oci.image.manifest.v1+json', 1, 'application/x-ref', ?, '{"late":"yes"}', ?)`).run(late, subject, t);
    old.close();
    const again = await Storage.open(data);
    try {
      assert.equal((await again.referrers('refs/a', subject, { after: '', limit: 1000 })).length, 600);
      assert.equal((await again.referrerAnnotations('refs/a', late))!.toString(), '{"late":"yes"}');
    } finally { await again.close(); }
  } finally { rmSync(data, { recursive: true, force: true }); }
});
