// Blob upload sessions: started, appended to chunk by chunk, verified and moved into the
// store, cancelled, and purged when left untouched. Resumable across restarts and by any
// process sharing the index: an upload's bytes are the store's staging (store/), and
// where they stand is recorded in its row after every chunk (and every S3 part).
//
// The digest: Node's Hash cannot be saved, so a session keeps the running sha256 in
// memory while this process has seen every byte so far, and a finish verifies from it;
// a finish after a restart, or of an upload continued by another process, reads the
// staged bytes back once and hashes them (what Distribution does without its saved hash
// states). Chunks pass through here on their way to staging, so the in-memory hash costs
// no extra read.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { createHash, randomUUID, type Hash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Digester, algorithmOf } from '../oci/digest.js';
import type { StoreCore } from './core.js';
import { DigestMismatch, SizeMismatch, TooManyUploads, UploadOutOfOrder, UploadUnknown, noSpaceCode } from './errors.js';
import type { UploadCounts } from './index/index.js';
import { Coalesce, detach, type BlobFiles } from './files.js';
import { processGone, processName } from './process.js';
import type { Staged } from './store/blob-store.js';

interface UploadState {
  staged: Staged;
  /** sha256 of the first `hashed` bytes; it is the upload's while hashed === staged.offset. */
  hash: Hash | null;
  hashed: number;
  busy: boolean;
  /** The chunk or finish in progress, which a cancel waits for or cuts short. */
  op?: { done: Promise<unknown>; cut?: (() => void) | undefined } | undefined;
  /** Set by cancel: whatever is in progress ends as if the upload never existed. */
  cancelled?: boolean;
  /** The chunk in progress lost its client and is winding down (see offset()). */
  failing?: boolean;
}

/** Stale uploads' staging looked at per page when purging orphans. */
const PURGE_PAGE = 1000;
/** How long a claim on an upload runs unless renewed (every third of it, while the work goes on). */
const CLAIM_MS = 30_000;

export class Uploads {
  private readonly live = new Map<string, UploadState>();
  /**
   * Who this process is in the uploads' claims: its name (process.ts), so that a claim a
   * killed process left on this host is taken over at once rather than after CLAIM_MS;
   * and a suffix of its own, as two instances in one process are two claimants.
   */
  private readonly owner = `${processName()}/${randomUUID().slice(0, 8)}`;

  get liveCount(): number { return this.live.size; }

  constructor(private readonly core: StoreCore, private readonly files: BlobFiles, private readonly maxAgeMs: number) {}

  /** Starts an upload; with `limits`, only if the unfinished uploads are under them (TooManyUploads). */
  async start(repo: string, client = '', limits?: UploadCounts): Promise<string> {
    const id = randomUUID();
    // The row first: a purge removes staged bytes that no row records.
    let refused: UploadCounts | undefined;
    try {
      refused = await this.core.index.createUpload(id, repo, client, limits);
    } catch (err) {
      throw this.core.noSpace(err, 'start an upload');
    }
    if (refused) throw new TooManyUploads(refused, limits!);
    let staged: Staged;
    try {
      staged = this.core.store.staging.create(id);
    } catch (err) {
      await this.core.index.deleteUpload(id).catch(() => { /* a row without its bytes is purged */ });
      throw this.core.noSpace(err, 'start an upload');
    }
    this.live.set(id, { staged, hash: createHash('sha256'), hashed: 0, busy: false });
    return id;
  }

  /** Current size of an upload of `repo`. */
  async offset(repo: string, id: string): Promise<number> {
    const st = await this.state(repo, id);
    // A chunk whose client went away is still counting what reached the file: a client
    // that reconnects at once to ask where to resume must hear the end of that, not 0.
    if (st.op && st.failing) await st.op.done.catch(() => {});
    return st.staged.offset;
  }

  /**
   * Appends a chunk. `start`, when given (Content-Range), must equal the current size:
   * anything else is an out-of-order or repeated chunk (UploadOutOfOrder).
   */
  async append(repo: string, id: string, source: Readable, start?: number, length?: number): Promise<number> {
    const st = await this.state(repo, id);
    if (st.busy) throw new UploadOutOfOrder('another chunk of this upload is in progress', st.staged.offset);
    const release = await this.claimBusy(id, st);
    if (start !== undefined && start !== st.staged.offset) {
      await release();
      st.busy = false;
      throw new UploadOutOfOrder(`chunk starts at ${start}, but the upload has ${st.staged.offset} bytes`, st.staged.offset);
    }
    // The request feeds staging through a stream of its own (detach), not directly: a
    // cancel then detaches the request instead of destroying it, so the client still gets
    // an answer (404) rather than a reset connection. A client that goes away still fails
    // the chunk.
    const entry = detach(source, () => { st.failing = true; });
    const cut = () => { entry.release(); entry.stream.destroy(new UploadUnknown(id)); };
    const record = this.recorder(id, st);
    const work = (async () => {
      const hashing = st.hash !== null && st.hashed === st.staged.offset;
      const counter = new Digester(hashing ? st.hash! : createHash('sha256'));
      let next: Staged;
      // Staging may still be recording what it kept when the pipeline fails: wait for it.
      let appending: Promise<Staged> | undefined;
      try {
        next = await pipeline(entry.stream, new Coalesce(), counter,
          (s: AsyncIterable<Buffer>) => (appending = this.core.store.staging.append(id, st.staged, s as Readable, record)));
      } catch (err) {
        await appending?.catch(() => {});
        if (st.cancelled) throw new UploadUnknown(id);
        // Staging recorded what it kept of the chunk; the hash has seen more than that.
        st.hash = null;
        // Gone meanwhile (purged, or cancelled between the checks): so is the upload.
        if (!await this.core.index.getUpload(id)) throw new UploadUnknown(id);
        throw err;
      }
      if (st.cancelled) throw new UploadUnknown(id);
      await record(next);
      if (hashing) st.hashed = next.offset;
      if (length !== undefined && counter.bytes !== length) {
        st.hash = null;
        throw new SizeMismatch(`chunk has ${counter.bytes} bytes, Content-Length said ${length}`);
      }
      return next.offset;
    })();
    st.op = { done: work, cut };
    try {
      return await work;
    } catch (err) {
      // Storage cannot take the rest of this chunk, nor of the blob: the session ends
      // now, so that its space is free again at once rather than after --upload-max-age.
      if (st.cancelled || noSpaceCode(err) === undefined) throw err;
      await this.remove(id);
      throw this.core.noSpace(err, 'store this upload; the upload was ended and nothing of it was kept');
    } finally {
      entry.release();
      await release();
      st.busy = false;
      st.failing = false;
      st.op = undefined;
    }
  }

  /**
   * Marks the session busy, then claims it (claim): busy first, as the claim awaits the
   * index and a second chunk arriving meanwhile in this process must find it busy.
   */
  private async claimBusy(id: string, st: UploadState): Promise<() => Promise<void>> {
    st.busy = true;
    try {
      return await this.claim(id, st);
    } catch (err) {
      st.busy = false;
      throw err;
    }
  }

  /**
   * Claims the upload for this process's chunk or finish (index.claimUpload), renewing
   * the claim while the work goes on; returns its release. Another process holding it is
   * UploadOutOfOrder, as a second chunk in this one is. Bytes another process appended
   * since this one last looked are taken from the row (and the running hash given up).
   */
  private async claim(id: string, st: UploadState): Promise<() => Promise<void>> {
    const { index } = this.core;
    if (!await index.claimUpload(id, this.owner, Date.now() + CLAIM_MS)) {
      const row = await index.getUpload(id);
      if (!row) throw new UploadUnknown(id);
      // A claim left by a process killed on this host (a restart after kill -9) is ours to take.
      const holder = row.claimed_by ?? '';
      const gone = processGone(holder.slice(0, holder.lastIndexOf('/')));
      if (!gone || !await index.takeOverClaim(id, holder, this.owner, Date.now() + CLAIM_MS)) {
        throw new UploadOutOfOrder('another chunk of this upload is in progress', this.recorded(row.staged)?.offset ?? st.staged.offset);
      }
    }
    const recorded = this.recorded((await index.getUpload(id))?.staged);
    if (recorded && recorded.offset !== st.staged.offset) {
      st.staged = recorded;
      st.hash = null;
    }
    const renew = setInterval(() => {
      index.extendClaim(id, this.owner, Date.now() + CLAIM_MS).catch(() => { /* a full index: the claim may run out */ });
    }, CLAIM_MS / 3);
    renew.unref();
    // Awaited before the answer goes out: the client's next request may reach another
    // replica at once, which must find the upload free, not claimed by a chunk already done.
    return async () => {
      clearInterval(renew);
      await index.releaseUpload(id, this.owner).catch(() => { /* it runs out */ });
    };
  }

  /**
   * What staging made durable, into the session and its row (which is also the
   * session's last use, for the purge). A full index only leaves the row behind: the
   * next chunk records again, and a row's state is only ever behind, never ahead.
   */
  private recorder(id: string, st: UploadState): (s: Staged) => Promise<void> {
    return async (s) => {
      st.staged = s;
      try { await this.core.index.touchUpload(id, JSON.stringify(s)); } catch (err) { if (noSpaceCode(err) === undefined) throw err; }
    };
  }

  /** Verifies the whole upload against `digest` and moves it into the store. */
  async finish(repo: string, id: string, digest: string): Promise<number> {
    const st = await this.state(repo, id);
    if (st.busy) throw new UploadOutOfOrder('a chunk of this upload is still in progress', st.staged.offset);
    const release = await this.claimBusy(id, st);
    const { staging } = this.core.store;
    const record = this.recorder(id, st);
    const work = (async () => {
      const alg = algorithmOf(digest);
      let actual: string;
      // Bytes gone meanwhile (purged, or a full disk ended the session) are an upload gone.
      const gone = (err: unknown) => { throw (err as NodeJS.ErrnoException).code === 'ENOENT' ? new UploadUnknown(id) : err; };
      if (alg === 'sha256' && st.hash && st.hashed === st.staged.offset) {
        actual = `sha256:${st.hash.copy().digest('hex')}`;
      } else {
        const h = createHash(alg);
        for await (const chunk of await staging.read(id, st.staged, record).catch(gone)) h.update(chunk as Buffer);
        actual = `${alg}:${h.digest('hex')}`;
      }
      if (actual !== digest) throw new DigestMismatch(digest, actual);
      const pending = await staging.seal(id, st.staged, digest, record).catch(gone);
      await this.files.publish(repo, digest, pending);
      this.live.delete(id);
      // The blob is stored: an index too full to drop the row must not fail the upload
      // (its bytes are gone, so the row is purged).
      try { await this.core.index.deleteUpload(id); } catch (err) { if (noSpaceCode(err) === undefined) throw err; }
      await staging.remove(id, st.staged).catch(() => { /* left to the purge of orphans */ });
      return pending.size;
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
      await release();
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
    const row = await this.core.index.getUpload(id);
    if (!row || row.repo !== repo) throw new UploadUnknown(id);
    const st = this.live.get(id);
    if (st?.op) {
      if (st.op.cut) {
        st.cancelled = true;
        st.op.cut();
      }
      await st.op.done.catch(() => {});
      if (!await this.core.index.getUpload(id)) throw new UploadUnknown(id);
      st.cancelled = true;
    }
    await this.remove(id);
  }

  /**
   * The row and the session go together, the session once the row is gone, so that no
   * request finds the session half-removed (a finish would start over from bytes being
   * deleted). The bytes
   * go whatever the index says: a full index must not keep a dead upload's space (a row
   * left without its bytes is dropped by the next request or purge).
   */
  private async remove(id: string): Promise<void> {
    const staged = this.live.get(id)?.staged ?? this.recorded((await this.core.index.getUpload(id))?.staged);
    let rowError: unknown;
    try { await this.core.index.deleteUpload(id); } catch (err) { if (noSpaceCode(err) === undefined) rowError = err; }
    this.live.delete(id);
    await this.core.store.staging.remove(id, staged);
    if (rowError) throw rowError;
  }

  private recorded(json: string | null | undefined): Staged | undefined {
    if (!json) return undefined;
    try { return JSON.parse(json) as Staged; } catch { return undefined; }
  }

  /** Drops uploads untouched for longer than the max age, and staged bytes no row records. */
  async purgeStale(): Promise<number> {
    const { index } = this.core;
    const { staging } = this.core.store;
    const cutoff = Date.now() - this.maxAgeMs;
    const rows = await index.allUploads();
    const known = new Set(rows.map((u) => u.id));
    let purged = 0;
    for (const row of rows) {
      const st = this.live.get(row.id);
      // Being written, here or by another process sharing the index: not abandoned.
      const stale = row.updated_at < cutoff && !st?.busy && !((row.claimed_until ?? 0) > Date.now());
      // A live session has its bytes (their loss shows at its next use).
      if (!stale && (st || await staging.resume(row.id, this.recorded(row.staged)))) continue;
      // Re-read: a chunk may have touched it, or a finish removed it, while this awaited.
      const now = await index.getUpload(row.id);
      if (!now || (now.updated_at !== row.updated_at && stale)) continue;
      await this.remove(row.id);
      purged++;
    }
    for (let after = '', page: string[] = []; ; after = page[page.length - 1]!) {
      page = await staging.list(after, PURGE_PAGE);
      for (const id of page) {
        // Re-checked now, not against the snapshot: an upload started while this purge
        // awaited has a row (inserted before its bytes) but is not in `rows`.
        if (!known.has(id) && !await index.getUpload(id)) await staging.remove(id, undefined);
      }
      if (page.length < PURGE_PAGE) break;
    }
    return purged;
  }

  private async state(repo: string, id: string): Promise<UploadState> {
    const row = await this.core.index.getUpload(id);
    if (!row || row.repo !== repo) throw new UploadUnknown(id);
    let st = this.live.get(id);
    const recorded = this.recorded(row.staged);
    // Continued elsewhere since (another process sharing the index): the row is the truth.
    if (st && !st.busy && recorded && recorded.offset !== st.staged.offset) {
      this.live.delete(id);
      st = undefined;
    }
    if (!st) {
      // After a restart, or another process's chunks: resume from what the row and the
      // staged bytes say; the hash is recomputed at the end.
      const staged = await this.core.store.staging.resume(id, recorded);
      if (!staged) {
        await this.core.index.deleteUpload(id);
        throw new UploadUnknown(id);
      }
      // A concurrent request may have set the state while this one awaited.
      st = this.live.get(id);
      if (!st) {
        st = { staged, hash: staged.offset === 0 ? createHash('sha256') : null, hashed: 0, busy: false };
        this.live.set(id, st);
        // The bytes said more than the row (a chunk cut short by a crash reached the disk
        // after the row was written): the row must say it too, or the next request would
        // take the row's older word for it.
        if (staged.offset !== (recorded?.offset ?? 0)) await this.recorder(id, st)(staged);
      }
    }
    return st;
  }
}
