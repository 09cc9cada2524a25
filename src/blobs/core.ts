// What the parts of storage share: the layout, the index, the per-digest locks, the
// per-repository generations that invalidate caches, and the durable-write primitives.
// Owns no policy; blob files, uploads and manifests (files.ts, uploads.ts, manifests.ts)
// each build on it.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';
import type { Index } from './index.js';
import type { Layout } from './layout.js';
import { KeyedLock } from './lock.js';

export class StoreCore {
  readonly locks = new KeyedLock();
  /**
   * A counter per repository that every write or delete in it bumps: caches key their
   * entries by it, so invalidation is per repository and O(1).
   */
  private readonly generations = new Map<string, number>();

  constructor(readonly layout: Layout, readonly index: Index) {}

  generation(repo: string): number {
    return this.generations.get(repo) ?? 0;
  }

  bump(repo: string): void {
    this.generations.set(repo, this.generation(repo) + 1);
  }

  /**
   * The durable half of every blob write: fsync the finished file, rename it to its blob
   * path, fsync the directory. Callers hold the digest's lock and add the index row after.
   */
  async place(file: string, digest: string): Promise<string> {
    const fh = await fs.open(file, 'r+');
    try { await fh.sync(); } finally { await fh.close(); }
    const dest = this.layout.blobPath(digest);
    await ensureDir(dirname(dest));
    await fs.rename(file, dest);
    await fsyncDir(dirname(dest));
    return dest;
  }
}

export async function readdirSafe(dir: string): Promise<string[]> {
  try { return await fs.readdir(dir); } catch { return []; }
}

/**
 * mkdir -p that also makes the new directory entries durable: a renamed blob is only
 * as durable as the chain of directories that leads to it.
 */
async function ensureDir(dir: string): Promise<void> {
  const first = await fs.mkdir(dir, { recursive: true });
  if (first === undefined) return;
  for (let d = dir; ; d = dirname(d)) {
    await fsyncDir(dirname(d));
    if (d === first) break;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}
