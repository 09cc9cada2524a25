// Blob files: writing content into the store (hashed while it streams, verified, made
// durable, then recorded), linking blobs into repositories, and deleting them.
//
// Write path of every blob: stream into a temporary file while hashing, verify, fsync,
// rename into <data>/blobs/<alg>/<xx>/<hex>, fsync the directory, and only then add the
// index row. A crash therefore leaves at worst a complete file without a row, which
// startup removes; never a row without a file, never a partial file at a final path.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable, Transform, finished, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Digester, algorithmOf } from '../oci/digest.js';
import type { StoreCore } from './core.js';
import { DigestMismatch } from './errors.js';

/**
 * Socket reads arrive in 64 KiB chunks; letting up to 1 MiB queue before the file
 * stream pushes back lets it write them in one writev, a tenth of the syscalls.
 */
export const WRITE_BUFFER = 1024 * 1024;

const BATCH = 64 * 1024;

/**
 * Copies small chunks into batches of up to 64 KiB. A client may send a body as chunked
 * encoding one byte per chunk; each becomes a Buffer object of ~100 bytes on the heap,
 * and queued by the byte count of WRITE_BUFFER a million of them would hold hundreds of
 * MiB for a 1 MiB body. A partial batch is passed on at the end of the tick in which it
 * was filled, so the batching spans one socket read and never holds bytes back: what
 * arrived before a client stalls or goes away is in the file (uploads resume from it).
 */
export class Coalesce extends Transform {
  private batch: Buffer | undefined;
  private used = 0;
  private pending: NodeJS.Immediate | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
    if (chunk.length >= BATCH && this.used === 0) { cb(null, chunk); return; }
    let off = 0;
    while (off < chunk.length) {
      this.batch ??= Buffer.allocUnsafe(BATCH);
      const n = chunk.copy(this.batch, this.used, off);
      this.used += n;
      off += n;
      if (this.used === BATCH) this.release();
    }
    if (this.used > 0) this.pending ??= setImmediate(() => { this.pending = undefined; if (!this.destroyed) this.release(); });
    cb();
  }

  override _flush(cb: TransformCallback) {
    if (this.pending) clearImmediate(this.pending);
    this.release();
    cb();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void) {
    if (this.pending) clearImmediate(this.pending);
    cb(err);
  }

  private release() {
    if (this.used > 0) this.push(this.batch!.subarray(0, this.used));
    this.batch = undefined;
    this.used = 0;
  }
}

/**
 * `source` behind a stream of its own, so that a write failing (a full disk) destroys
 * that stream and not the request: the client must still be able to read the answer
 * (507) rather than find its connection reset. A source that fails (a client going
 * away) still fails the write, after telling `onFail`. `release` detaches whatever is
 * left of the source.
 */
export function detach(source: Readable, onFail?: () => void): { stream: PassThrough; release(): void } {
  const stream = new PassThrough();
  source.pipe(stream);
  const unwatch = finished(source, (err) => { if (err) { onFail?.(); stream.destroy(err); } });
  return { stream, release() { unwatch(); source.unpipe(stream); } };
}

export class BlobFiles {
  constructor(private readonly core: StoreCore) {}

  /** Size of a blob as visible in `repo`, or undefined if not linked there. */
  size(repo: string, digest: string): number | undefined {
    return this.core.index.linkedBlobSize(repo, digest);
  }

  /**
   * Streams `source` into the store and links it into `repo`. With `expected`, the
   * content must hash to it (DigestMismatch otherwise) and nothing is stored on mismatch.
   */
  async write(repo: string, source: Readable | Buffer, expected?: string): Promise<{ digest: string; size: number }> {
    const alg = expected ? algorithmOf(expected) : 'sha256';
    const tmp = join(this.core.layout.tmpDir, randomUUID());
    const src = Buffer.isBuffer(source) ? { stream: Readable.from([source]), release() {} } : detach(source);
    try {
      const d = new Digester(createHash(alg), alg);
      await pipeline(src.stream, new Coalesce(), d, createWriteStream(tmp, { highWaterMark: WRITE_BUFFER }));
      const digest = d.digest();
      if (expected && digest !== expected) throw new DigestMismatch(expected, digest);
      await this.commit(repo, tmp, digest, d.bytes);
      return { digest, size: d.bytes };
    } catch (err) {
      throw this.core.noSpace(err, 'store this blob; nothing was kept');
    } finally {
      src.release();
      await fs.rm(tmp, { force: true });
    }
  }

  /**
   * Moves a fully written, already-digested file into the store (the caller vouches for
   * `digest`) and links it into `repo`. The file is consumed either way.
   */
  async commit(repo: string, file: string, digest: string, size: number): Promise<void> {
    const { index, layout, locks } = this.core;
    try {
      await locks.run(digest, async () => {
        if (index.blobSize(digest) === undefined) {
          try {
            await this.core.place(file, digest);
            index.addBlob(repo, digest, size);
          } catch (err) {
            // No row records the file (a full index refused it, or placing it failed half
            // way): take it back, under the lock, rather than leave a blob without its row.
            await fs.rm(layout.blobPath(digest), { force: true });
            throw err;
          }
        } else {
          index.linkBlob(repo, digest);
        }
      });
    } catch (err) {
      throw this.core.noSpace(err, 'store this blob; nothing was kept');
    } finally {
      await fs.rm(file, { force: true });
    }
    this.core.bump(repo);
  }

  /** Cross-repository mount: links `digest` into `repo` if `from` can see it. */
  mount(repo: string, from: string, digest: string): number | undefined {
    const size = this.core.index.linkedBlobSize(from, digest);
    if (size === undefined) return undefined;
    // The blob may have been dropped since the lookup (a delete finishing its unlink).
    if (!this.core.index.linkBlob(repo, digest)) return undefined;
    this.core.bump(repo);
    return size;
  }

  async delete(repo: string, digest: string): Promise<boolean> {
    const removed = await this.core.locks.run(digest, async () => {
      const { removed, orphaned } = this.core.index.unlinkBlob(repo, digest);
      if (orphaned) await fs.rm(this.core.layout.blobPath(digest), { force: true });
      return removed;
    });
    if (removed) this.core.bump(repo);
    return removed;
  }
}
