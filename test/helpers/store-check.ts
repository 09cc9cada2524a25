// What must hold on disk whatever failed: every blob file is named by its digest and has
// its index row, and every index row (blob or manifest) has its complete file.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { digestFile } from '../../src/oci/digest.js';

/** Files (not directories) under `dir`, recursively; none if it does not exist. */
export function filesIn(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name)) : [];
}

/** Bytes held by the files under `dir`. */
export function bytesIn(dir: string): number {
  return filesIn(dir).reduce((n, f) => n + statSync(f).size, 0);
}

/**
 * The invariants that hold at every instant, a kill -9 included, checked through a
 * read-only connection: every blob file sits at the path of its digest and hashes to it,
 * and every index row (blob or manifest) has its complete file. Files without a row may
 * exist right after a crash (startup reconciliation removes them): they are returned.
 */
export async function inspectStore(data: string, when: string): Promise<{ blobs: number; filesWithoutRows: string[] }> {
  const blobs = join(data, 'blobs');
  const onDisk = new Map<string, number>();
  for (const f of filesIn(blobs)) {
    const rel = f.slice(blobs.length + 1).split('/');
    assert.equal(rel.length, 3, `${when}: unexpected path ${f}`);
    const [alg, prefix, hex] = rel as [string, string, string];
    assert.equal(prefix, hex.slice(0, 2), `${when}: ${f} is under the wrong prefix`);
    assert.equal(await digestFile(f, alg as 'sha256'), `${alg}:${hex}`, `${when}: ${f} does not hash to its name`);
    onDisk.set(`${alg}:${hex}`, statSync(f).size);
  }
  const db = new Database(join(data, 'index.db'), { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare('SELECT digest, size FROM blobs').all() as { digest: string; size: number }[];
    for (const r of rows) {
      assert.ok(onDisk.has(r.digest), `${when}: index row ${r.digest} has no file`);
      assert.equal(onDisk.get(r.digest), r.size, `${when}: index row ${r.digest} has the wrong size`);
    }
    for (const { digest } of db.prepare('SELECT digest FROM manifests').all() as { digest: string }[]) {
      assert.ok(onDisk.has(digest), `${when}: manifest ${digest} has no file`);
    }
    const known = new Set(rows.map((r) => r.digest));
    return { blobs: rows.length, filesWithoutRows: [...onDisk.keys()].filter((d) => !known.has(d)) };
  } finally {
    db.close();
  }
}

/** inspectStore, and every blob file has its index row (the settled state); returns the blob count. */
export async function checkStore(data: string, when: string): Promise<number> {
  const { blobs, filesWithoutRows } = await inspectStore(data, when);
  for (const d of filesWithoutRows) assert.fail(`${when}: blob file ${d} has no index row`);
  return blobs;
}
