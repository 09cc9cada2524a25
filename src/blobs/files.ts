// Blob content: writing it into the blob store (hashed while it streams, verified,
// published, then recorded), linking blobs into repositories, and deleting them.
//
// Write path of every blob: stream into the store's staging while hashing (store/: a
// temporary file on disk, an unfinished multipart upload on S3), verify, publish under
// the digest's lock (disk: fsync, rename, fsync the directory), and only then add the
// index row. A crash therefore leaves at worst a complete blob without a row, which
// reconciliation removes; never a row without a blob, never a partial blob at a final name.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable, Transform, finished, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Digester, algorithmOf, digestOf } from '../oci/digest.js';
import type { StoreCore } from './core.js';
import { DigestMismatch } from './errors.js';
import type { PendingBlob } from './store/blob-store.js';
import { WRITE_BUFFER } from './store/disk.js';

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
  size(repo: string, digest: string): Promise<number | undefined> {
    return this.core.index.linkedBlobSize(repo, digest);
  }

  /**
   * Streams `source` into the store and links it into `repo`. With `expected`, the
   * content must hash to it (DigestMismatch otherwise) and nothing is stored on mismatch.
   */
  async write(repo: string, source: Readable | Buffer, expected?: string): Promise<{ digest: string; size: number }> {
    const alg = expected ? algorithmOf(expected) : 'sha256';
    if (Buffer.isBuffer(source)) {
      const digest = digestOf(source, alg);
      if (expected && digest !== expected) throw new DigestMismatch(expected, digest);
      await this.publish(repo, digest, await this.staged(() => this.core.store.write(digest, source)));
      return { digest, size: source.length };
    }
    // A stream of unknown digest cannot be named before it ends: through a local file.
    if (!expected) return this.writeUnnamed(repo, source);
    const src = detach(source);
    let pending: PendingBlob | undefined;
    // The store's write may still be taking back what it staged when the pipeline fails.
    let writing: Promise<unknown> | undefined;
    try {
      const d = new Digester(createHash(alg), alg);
      await pipeline(src.stream, new Coalesce(), d, (s: AsyncIterable<Buffer>) =>
        (writing = this.core.store.write(expected, s as Readable).then((p) => { pending = p; })));
      const digest = d.digest();
      if (digest !== expected) throw new DigestMismatch(expected, digest);
      const p = pending!;
      pending = undefined;
      await this.publish(repo, digest, p);
      return { digest, size: d.bytes };
    } catch (err) {
      await writing?.catch(() => {});
      await (pending as PendingBlob | undefined)?.discard().catch(() => {});
      throw this.core.noSpace(err, 'store this blob; nothing was kept');
    } finally {
      src.release();
    }
  }

  private async writeUnnamed(repo: string, source: Readable): Promise<{ digest: string; size: number }> {
    const tmp = join(this.core.layout.tmpDir, randomUUID());
    const src = detach(source);
    try {
      const d = new Digester();
      await pipeline(src.stream, new Coalesce(), d, createWriteStream(tmp, { highWaterMark: WRITE_BUFFER }));
      const digest = d.digest();
      await this.commit(repo, tmp, digest, d.bytes);
      return { digest, size: d.bytes };
    } catch (err) {
      throw this.core.noSpace(err, 'store this blob; nothing was kept');
    } finally {
      src.release();
      await fs.rm(tmp, { force: true });
    }
  }

  private async staged(stage: () => Promise<PendingBlob>): Promise<PendingBlob> {
    try { return await stage(); } catch (err) { throw this.core.noSpace(err, 'store this blob; nothing was kept'); }
  }

  /**
   * Moves a fully written, already-digested file into the store (the caller vouches for
   * `digest`) and links it into `repo`. The file is consumed either way.
   */
  async commit(repo: string, file: string, digest: string, size: number): Promise<void> {
    try {
      await this.publish(repo, digest, await this.staged(() => this.core.store.writeFile(digest, file, size)));
    } finally {
      await fs.rm(file, { force: true });
    }
  }

  /**
   * Publishes verified bytes as blob `digest` and links it into `repo`: under the
   * digest's lock, and only if no row records the blob already (then they are dropped).
   */
  async publish(repo: string, digest: string, pending: PendingBlob): Promise<void> {
    const { index, store, locks } = this.core;
    try {
      await locks.run(digest, async () => {
        if (await index.blobSize(digest) === undefined) {
          try {
            await pending.publish();
            await index.addBlob(repo, digest, pending.size);
          } catch (err) {
            // No row records the blob (a full index refused it, or publishing failed half
            // way): take it back, under the lock, rather than leave a blob without its row.
            await store.delete(digest).catch(() => {});
            throw err;
          }
        } else {
          await index.linkBlob(repo, digest);
        }
      });
    } catch (err) {
      throw this.core.noSpace(err, 'store this blob; nothing was kept');
    } finally {
      await pending.discard().catch(() => {});
    }
    this.core.bump(repo);
  }

  /** Cross-repository mount: links `digest` into `repo` if `from` can see it. */
  async mount(repo: string, from: string, digest: string): Promise<number | undefined> {
    const size = await this.core.index.linkedBlobSize(from, digest);
    if (size === undefined) return undefined;
    // The blob may have been dropped since the lookup (a delete finishing its unlink).
    if (!await this.core.index.linkBlob(repo, digest)) return undefined;
    this.core.bump(repo);
    return size;
  }

  async delete(repo: string, digest: string): Promise<boolean> {
    const removed = await this.core.locks.run(digest, async () => {
      const { removed, orphaned } = await this.core.index.unlinkBlob(repo, digest);
      if (orphaned) await this.core.store.delete(digest);
      return removed;
    });
    if (removed) this.core.bump(repo);
    return removed;
  }
}
