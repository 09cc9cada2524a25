// An index written by the previous schema (version 1) opens under the current one: its
// unfinished uploads survive and stay resumable, and the repository rows that only
// uploads or invented names created are dropped.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { Storage } from '../../src/blobs/storage.js';
import { SCHEMA_VERSION } from '../../src/blobs/schema.js';
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
      assert.equal(s.blobSize('kept/repo', `sha256:${'a'.repeat(64)}`), 1);
      assert.equal(s.repositoryExists('kept/repo'), true);
      assert.equal(s.repositoryExists('only/uploads'), false);
      assert.equal(s.index.db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      const plan = s.index.db.prepare(`EXPLAIN QUERY PLAN SELECT digest FROM manifests WHERE repo_id = 1 AND subject = 'x' AND digest > '' ORDER BY digest LIMIT 10`).all() as { detail: string }[];
      assert.ok(plan.some((p) => /manifests_referrers/.test(p.detail)), JSON.stringify(plan));
    } finally { s.close(); }
  } finally { rmSync(data, { recursive: true, force: true }); }
});
