// The index contract (index-contract.ts) on the embedded SQLite index, each index a file
// of a temp dir; the older schema is version 1 (test/fixtures/schema-v1.sql), as
// migration.test.ts makes it.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import Database from 'better-sqlite3';
import { openIndex } from '../../src/blobs/index/open.js';
import { ROOT } from '../helpers/registry.js';
import { OLD_BLOB, OLD_UPLOAD, indexContract } from './index-contract.js';

const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
const file = () => {
  const d = mkdtempSync(join(tmpdir(), 'nixreg-index-'));
  dirs.push(d);
  return join(d, 'index.db');
};

indexContract('sqlite', {
  fresh: () => openIndex({ sqlitePath: file() }),
  async older() {
    const path = file();
    const db = new Database(path);
    db.exec(readFileSync(join(ROOT, 'test/fixtures/schema-v1.sql'), 'utf8'));
    db.pragma('user_version = 1');
    const t = Date.now();
    db.prepare('INSERT INTO repositories (id, name, created_at) VALUES (1, ?, ?), (2, ?, ?)').run('kept/repo', t, 'only/uploads', t);
    db.prepare('INSERT INTO blobs (digest, size, created_at) VALUES (?, 1, ?)').run(OLD_BLOB, t);
    db.prepare('INSERT INTO repo_blobs (repo_id, digest) VALUES (1, ?)').run(OLD_BLOB);
    db.prepare('INSERT INTO uploads (id, repo_id, started_at, updated_at) VALUES (?, 2, ?, ?)').run(OLD_UPLOAD, t, t);
    db.close();
    return openIndex({ sqlitePath: path });
  },
});
