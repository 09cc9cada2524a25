// Blob upload sessions: started, appended to chunk by chunk (resumable across restarts:
// the file on disk is the truth), verified and moved into the store, cancelled, and
// purged when left untouched.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { createHash, randomUUID, type Hash } from 'node:crypto';
import { closeSync, createWriteStream, openSync, promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Digester, algorithmOf, digestFile } from '../oci/digest.js';
import { readdirSafe, type StoreCore } from './core.js';
import { DigestMismatch, SizeMismatch, UploadOutOfOrder, UploadUnknown, noSpaceCode } from './errors.js';
import { Coalesce, WRITE_BUFFER, detach, type BlobFiles } from './files.js';

interface UploadState {
  /** sha256 of bytes [0, offset), or null when it must be recomputed from the file. */
  hash: Hash | null;
  offset: number;
  busy: boolean;
  /** The chunk or finish in progress, which a cancel waits for or cuts short. */
  op?: { done: Promise<unknown>; cut?: (() => void) | undefined } | undefined;
  /** Set by cancel: whatever is in progress ends as if the upload never existed. */
  cancelled?: boolean;
  /** The chunk in progress lost its client and is winding down (see offset()). */
  failing?: boolean;
}

export class Uploads {
  private readonly live = new Map<string, UploadState>();

  get liveCount(): number { return this.live.size; }

  constructor(private readonly core: StoreCore, private readonly files: BlobFiles, private readonly maxAgeMs: number) {}

  start(repo: string, client = ''): string {
    const id = randomUUID();
    try {
      this.core.index.createUpload(id, repo, client);
      // Created synchronously so that a status request right after POST finds it.
      closeSync(openSync(this.core.layout.uploadPath(id), 'wx'));
    } catch (err) {
      try { this.core.index.deleteUpload(id); } catch { /* a row without its file is purged */ }
      throw this.core.noSpace(err, 'start an upload');
    }
    this.live.set(id, { hash: createHash('sha256'), offset: 0, busy: false });
    return id;
  }

  /** Current size of an upload of `repo`. */
  async offset(repo: string, id: string): Promise<number> {
    const st = await this.state(repo, id);
    // A chunk whose client went away is still counting what reached the file: a client
    // that reconnects at once to ask where to resume must hear the end of that, not 0.
    if (st.op && st.failing) await st.op.done.catch(() => {});
    return st.offset;
  }

  /**
   * Appends a chunk. `start`, when given (Content-Range), must equal the current size:
   * anything else is an out-of-order or repeated chunk (UploadOutOfOrder).
   */
  async append(repo: string, id: string, source: Readable, start?: number, length?: number): Promise<number> {
    const st = await this.state(repo, id);
    if (st.busy) throw new UploadOutOfOrder('another chunk of this upload is in progress', st.offset);
    if (start !== undefined && start !== st.offset) {
      throw new UploadOutOfOrder(`chunk starts at ${start}, but the upload has ${st.offset} bytes`, st.offset);
    }
    const path = this.core.layout.uploadPath(id);
    st.busy = true;
    // The request feeds the file through a stream of its own (detach), not directly: a
    // cancel then detaches the request instead of destroying it, so the client still gets
    // an answer (404) rather than a reset connection. A client that goes away still fails
    // the chunk.
    const entry = detach(source, () => { st.failing = true; });
    const cut = () => { entry.release(); entry.stream.destroy(new UploadUnknown(id)); };
    const work = (async () => {
      const counter = new Digester(st.hash ?? createHash('sha256'));
      try {
        await pipeline(entry.stream, new Coalesce(), counter, createWriteStream(path, { flags: 'a', highWaterMark: WRITE_BUFFER }));
      } catch (err) {
        if (st.cancelled) throw new UploadUnknown(id);
        // The file may hold part of the chunk: the file is the truth from here on.
        st.hash = null;
        try { st.offset = (await fs.stat(path)).size; } catch {
          // Gone meanwhile (purged, or cancelled between the checks): so is the upload.
          throw new UploadUnknown(id);
        }
        throw err;
      }
      if (st.cancelled) throw new UploadUnknown(id);
      st.offset += counter.bytes;
      if (length !== undefined && counter.bytes !== length) {
        st.hash = null;
        throw new SizeMismatch(`chunk has ${counter.bytes} bytes, Content-Length said ${length}`);
      }
      this.core.index.touchUpload(id);
      return st.offset;
    })();
    st.op = { done: work, cut };
    try {
      return await work;
    } catch (err) {
      // The file cannot take the rest of this chunk, nor of the blob: the session ends
      // now, so that its space is free again at once rather than after --upload-max-age.
      if (st.cancelled || noSpaceCode(err) === undefined) throw err;
      await this.remove(id);
      throw this.core.noSpace(err, 'store this upload; the upload was ended and nothing of it was kept');
    } finally {
      entry.release();
      st.busy = false;
      st.failing = false;
      st.op = undefined;
    }
  }

  /** Verifies the whole upload against `digest` and moves it into the store. */
  async finish(repo: string, id: string, digest: string): Promise<number> {
    const st = await this.state(repo, id);
    if (st.busy) throw new UploadOutOfOrder('a chunk of this upload is still in progress', st.offset);
    st.busy = true;
    const path = this.core.layout.uploadPath(id);
    const work = (async () => {
      const alg = algorithmOf(digest);
      let actual: string;
      // A file gone meanwhile (purged, or a full disk ended the session) is an upload gone.
      const gone = (err: unknown) => { throw (err as NodeJS.ErrnoException).code === 'ENOENT' ? new UploadUnknown(id) : err; };
      if (alg === 'sha256' && st.hash) actual = `sha256:${st.hash.copy().digest('hex')}`;
      else actual = await digestFile(path, alg).catch(gone);
      if (actual !== digest) throw new DigestMismatch(digest, actual);
      const size = (await fs.stat(path).catch(gone)).size;
      await this.files.commit(repo, path, digest, size);
      this.live.delete(id);
      // The blob is stored: an index too full to drop the row must not fail the upload
      // (its file is gone, so the row is purged).
      try { this.core.index.deleteUpload(id); } catch (err) { if (noSpaceCode(err) === undefined) throw err; }
      return size;
    })();
    st.op = { done: work };
    try {
      return await work;
    } catch (err) {
      // A cancel that came first already removed the session: nothing was committed.
      if (st.cancelled) throw new UploadUnknown(id);
      // A failed finish ends the session (as in Distribution): the client starts over.
      await this.remove(id);
      throw err;
    } finally {
      st.busy = false;
      st.op = undefined;
    }
  }

  /**
   * Ends a session. A chunk in progress is cut short; a finish in progress is waited
   * for, because it may be committing the blob: if it succeeded, the upload no longer
   * exists and this is UploadUnknown, exactly as if the cancel had come a moment later.
   */
  async cancel(repo: string, id: string): Promise<void> {
    const row = this.core.index.getUpload(id);
    if (!row || row.repo !== repo) throw new UploadUnknown(id);
    const st = this.live.get(id);
    if (st?.op) {
      if (st.op.cut) {
        st.cancelled = true;
        st.op.cut();
      }
      await st.op.done.catch(() => {});
      if (!this.core.index.getUpload(id)) throw new UploadUnknown(id);
      st.cancelled = true;
    }
    await this.remove(id);
  }

  /**
   * The file first: on a full disk it is the space to give back, and the row's delete
   * may fail too (a row whose file is gone counts as no upload, and is purged).
   */
  private async remove(id: string): Promise<void> {
    // The row and the session go in one synchronous step, so that no request finds the
    // session half-removed (a finish would start over from a file being deleted). The
    // file goes whatever the index says: a full index must not keep a dead upload's space
    // (a row left without its file is dropped by the next request or purge).
    let rowError: unknown;
    try { this.core.index.deleteUpload(id); } catch (err) { if (noSpaceCode(err) === undefined) rowError = err; }
    this.live.delete(id);
    await fs.rm(this.core.layout.uploadPath(id), { force: true });
    if (rowError) throw rowError;
  }

  /** Drops uploads untouched for longer than the max age, and files no row records. */
  async purgeStale(): Promise<number> {
    const { index, layout } = this.core;
    const cutoff = Date.now() - this.maxAgeMs;
    const rows = new Map(index.allUploads().map((u) => [u.id, u.updated_at]));
    let purged = 0;
    for (const [id, updated] of rows) {
      let exists = true;
      try { await fs.access(layout.uploadPath(id)); } catch { exists = false; }
      if (!exists || (updated < cutoff && !this.live.get(id)?.busy)) {
        index.deleteUpload(id);
        this.live.delete(id);
        await fs.rm(layout.uploadPath(id), { force: true });
        purged++;
      }
    }
    for (const name of await readdirSafe(layout.uploadsDir)) {
      // Re-checked now, not against the snapshot: an upload started while this purge
      // awaited has a row (inserted before its file) but is not in `rows`.
      if (!rows.has(name) && !index.getUpload(name)) {
        await fs.rm(join(layout.uploadsDir, name), { force: true, recursive: true });
      }
    }
    return purged;
  }

  private async state(repo: string, id: string): Promise<UploadState> {
    const row = this.core.index.getUpload(id);
    if (!row || row.repo !== repo) throw new UploadUnknown(id);
    let st = this.live.get(id);
    if (!st) {
      // After a restart: resume from what is on disk; the hash is recomputed at the end.
      let offset: number;
      try { offset = (await fs.stat(this.core.layout.uploadPath(id))).size; } catch {
        this.core.index.deleteUpload(id);
        throw new UploadUnknown(id);
      }
      // A concurrent request may have set the state while this one awaited stat.
      st = this.live.get(id);
      if (!st) {
        st = { hash: null, offset, busy: false };
        this.live.set(id, st);
      }
    }
    return st;
  }
}
