// The blob store on the local disk, the embedded default: <data>/blobs/<alg>/<xx>/<hex>,
// uploads as <data>/uploads/<id>, staging in <data>/tmp (same filesystem: renames are
// atomic). Owns the durable half of every blob write: fsync the finished file, rename it
// to its blob path, fsync the directory (and every directory it had to create), so a
// crash leaves at worst a complete file without a row, never a partial file at a final
// path. An upload's file is the truth for its offset (a chunk cut short keeps what
// reached the file).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { randomUUID } from 'node:crypto';
import { closeSync, createWriteStream, openSync, promises as fs } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { makeDir, readdirSafe } from '../core.js';
import { BlobMissing } from '../errors.js';
import type { Layout } from '../layout.js';
import type { BlobStore, ByteRange, ListedBlob, PendingBlob, Staged, UploadStaging } from './blob-store.js';

/**
 * Socket reads arrive in 64 KiB chunks; letting up to 1 MiB queue before the file
 * stream pushes back lets it write them in one writev, a tenth of the syscalls.
 */
export const WRITE_BUFFER = 1024 * 1024;

const missing = (digest: string) => (e: unknown) => {
  throw (e as NodeJS.ErrnoException).code === 'ENOENT' ? new BlobMissing(digest) : e;
};

export class DiskStore implements BlobStore {
  readonly remote = false;
  readonly staging: UploadStaging;

  constructor(private readonly layout: Layout) {
    this.staging = new DiskStaging(layout);
  }

  get description() { return `disk ${this.layout.blobsDir}`; }

  localPath(digest: string): string { return this.layout.blobPath(digest); }

  async write(digest: string, source: Readable | Buffer): Promise<PendingBlob> {
    const tmp = join(this.layout.tmpDir, randomUUID());
    let size: number;
    try {
      if (Buffer.isBuffer(source)) {
        await fs.writeFile(tmp, source);
        size = source.length;
      } else {
        const out = createWriteStream(tmp, { highWaterMark: WRITE_BUFFER });
        await pipeline(source, out);
        size = out.bytesWritten;
      }
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
    return this.pending(digest, tmp, size);
  }

  async writeFile(digest: string, file: string, size: number): Promise<PendingBlob> {
    return this.pending(digest, file, size);
  }

  private pending(digest: string, file: string, size: number): PendingBlob {
    return {
      size,
      publish: () => place(file, this.layout.blobPath(digest)),
      discard: () => fs.rm(file, { force: true }),
    };
  }

  read(digest: string): Promise<Buffer> {
    return fs.readFile(this.layout.blobPath(digest)).catch(missing(digest));
  }

  async open(digest: string, range?: ByteRange): Promise<Readable> {
    const fh = await fs.open(this.layout.blobPath(digest), 'r').catch(missing(digest));
    return fh.createReadStream(range ? { start: range.start, end: range.end } : {});
  }

  async stat(digest: string): Promise<number | undefined> {
    try { return (await fs.stat(this.layout.blobPath(digest))).size; } catch { return undefined; }
  }

  async delete(digest: string): Promise<void> {
    await fs.rm(this.layout.blobPath(digest), { force: true, recursive: true });
  }

  /** Walks <alg>/<xx>/ in name order, from `after`'s directory on. */
  async list(after: string, limit: number): Promise<ListedBlob[]> {
    const out: ListedBlob[] = [];
    const root = this.layout.blobsDir;
    for (const alg of (await readdirSafe(root)).sort()) {
      if (alg !== 'sha256' && alg !== 'sha512') continue;
      if (after && alg < after.slice(0, after.indexOf(':'))) continue;
      for (const prefix of (await readdirSafe(join(root, alg))).sort()) {
        const digestPrefix = `${alg}:${prefix}`;
        if (after && digestPrefix < after.slice(0, digestPrefix.length)) continue;
        for (const hex of (await readdirSafe(join(root, alg, prefix))).sort()) {
          const digest = `${alg}:${hex}`;
          if (digest <= after || !/^[a-f0-9]{64,128}$/.test(hex)) continue;
          let st;
          try { st = await fs.stat(join(root, alg, prefix, hex)); } catch { continue; }
          out.push({ digest, size: st.size, modifiedMs: st.mtimeMs });
          if (out.length >= limit) return out;
        }
      }
    }
    return out;
  }

  async ping(): Promise<void> {}
  close(): void {}
}

class DiskStaging implements UploadStaging {
  constructor(private readonly layout: Layout) {}

  create(id: string): Staged {
    closeSync(openSync(this.layout.uploadPath(id), 'wx'));
    return { offset: 0 };
  }

  async resume(id: string): Promise<Staged | undefined> {
    try { return { offset: (await fs.stat(this.layout.uploadPath(id))).size }; } catch { return undefined; }
  }

  async append(id: string, staged: Staged, source: Readable, record: (s: Staged) => void | Promise<void>): Promise<Staged> {
    const path = this.layout.uploadPath(id);
    const out = createWriteStream(path, { flags: 'a', highWaterMark: WRITE_BUFFER });
    try {
      await pipeline(source, out);
    } catch (err) {
      // The file may hold part of the chunk: it is the truth from here on. Gone meanwhile
      // (purged, cancelled): the caller finds out by its row.
      const now = await this.resume(id);
      if (now) await record(now);
      throw err;
    }
    return { offset: staged.offset + out.bytesWritten };
  }

  async read(id: string): Promise<Readable> {
    const fh = await fs.open(this.layout.uploadPath(id), 'r');
    return fh.createReadStream();
  }

  async seal(id: string, staged: Staged, digest: string): Promise<PendingBlob> {
    const path = this.layout.uploadPath(id);
    const size = (await fs.stat(path)).size;
    return { size, publish: () => place(path, this.layout.blobPath(digest)), discard: async () => {} };
  }

  async remove(id: string): Promise<void> {
    // Any name the directory holds (a stray file too), never a path outside it.
    await fs.rm(join(this.layout.uploadsDir, basename(id)), { force: true, recursive: true });
  }

  async list(after: string, limit: number): Promise<string[]> {
    return (await readdirSafe(this.layout.uploadsDir)).sort().filter((n) => n > after).slice(0, limit);
  }
}

/**
 * The durable half of every blob write on disk: fsync the finished file, rename it to its
 * blob path, fsync the directory. Callers hold the digest's lock and add the index row after.
 */
export async function place(file: string, dest: string): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try { await fh.sync(); } finally { await fh.close(); }
  await ensureDir(dirname(dest));
  await fs.rename(file, dest);
  await fsyncDir(dirname(dest));
}

/**
 * mkdir -p that also makes the new directory entries durable: a renamed blob is only
 * as durable as the chain of directories that leads to it.
 */
async function ensureDir(dir: string): Promise<void> {
  for (const d of await makeDir(dir)) await fsyncDir(dirname(d));
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}
