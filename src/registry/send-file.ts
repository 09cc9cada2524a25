// Sends a byte range of a file as the body of a response whose headers are already set:
// by sendfile(2) where it can (zero-copy.ts says when and why), else by copying through
// the ring of buffers below, which also serves TLS, HTTP/2 and a server without the addon.
// A blob with no local file (the S3 store) comes as a stream instead: sendStream.
//
// Why not pipeline(createReadStream(...), res): a read stream allocates a fresh buffer
// for every read, so a 256 MiB blob GET cost 256 fresh 1 MiB buffers, and garbage
// collection plus page faults for them took more than half of the server's CPU time
// (bench/serve: ~300 ms of CPU per 256 MiB, against ~120 ms for Distribution). A ring
// of reused buffers, each refilled only once the socket has taken its previous contents,
// cut that to ~140 ms. Four buffers of 256 KiB, so that reads overlap socket writes,
// measured the same as two of 1 MiB with half the memory: 1 MiB per download at most.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { promises as fs } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { clientGone, sendfileRange, sendfileSocket } from './zero-copy.js';

const CHUNK = 256 * 1024;
const RING = 4;
/** A slot of sendStream's ring: a socket read's most (Node reads 64 KiB at a time). */
const STREAM_SLOT = 64 * 1024;

/** Body bytes sent so far, by how: read by metrics.ts when scraped. */
export interface BodyBytes { sendfile: number; copy: number }

export interface SendOptions {
  /** Try sendfile (the app's decision: zero-copy.ts sendfileSupport). */
  sendfile?: boolean | undefined;
  /** Where to count the bytes sent. */
  bytes?: BodyBytes | undefined;
}

/** Writes bytes [start, end] (inclusive) of `path` to `res`, then ends it. */
export async function sendFileRange(path: string, start: number, end: number, res: ServerResponse, o: SendOptions = {}): Promise<void> {
  // A client that goes away must not leave this loop waiting on a write callback, nor a
  // sendfile job running. One canceller for the one wait in progress (not Promise.race
  // with a long-lived promise, which would pile up a reaction per chunk on multi-GiB blobs).
  let gone: Error | undefined;
  let cancel: ((e: Error) => void) | undefined;
  const onClose = () => {
    gone = clientGone();
    cancel?.(gone);
  };
  const guard = <T>(p: Promise<T>): Promise<T> => (gone ? Promise.reject(gone) : new Promise<T>((resolve, reject) => {
    cancel = reject;
    p.then(resolve, reject);
  }));
  // Listening from the start, and looking whether the response closed already: a client
  // that left while the handler or the open below awaited would otherwise be written to
  // (ERR_STREAM_DESTROYED, logged as an internal error) instead of being a client abort.
  res.once('close', onClose);
  if (res.destroyed) onClose();
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(path, 'r');
  } catch (e) {
    res.off('close', onClose);
    throw e;
  }
  try {
    let sentByKernel = false;
    if (o.sendfile && !gone && sendfileSocket(res)) {
      const bytes = o.bytes;
      sentByKernel = await sendfileRange(fh, path, start, end, res, (c) => {
        cancel = c;
        if (c && gone) c(gone);
      }, (n) => { if (bytes) bytes.sendfile += n; }) !== undefined;
    }
    if (!sentByKernel) await copyRange(fh, path, start, end, res, guard, o.bytes);
  } finally {
    res.off('close', onClose);
    // Safe even when a read is still in flight after an abort: close waits for it.
    await fh.close();
  }
  res.end();
}

type Guard = <T>(p: Promise<T>) => Promise<T>;

async function copyRange(fh: fs.FileHandle, path: string, start: number, end: number, res: ServerResponse, guard: Guard,
  bytes: BodyBytes | undefined): Promise<void> {
  const size = Math.min(CHUNK, end - start + 1);
  const bufs: Buffer[] = [];
  const flushed: Promise<void>[] = [];
  let pos = start;
  for (let i = 0; pos <= end; i = (i + 1) % RING) {
    // bufs[i] may be refilled only once the socket has taken what it held before.
    if (flushed[i]) await guard(flushed[i]!);
    const buf = (bufs[i] ??= Buffer.allocUnsafe(size));
    const { bytesRead } = await guard(fh.read(buf, 0, Math.min(size, end - pos + 1), pos));
    if (bytesRead === 0) throw new Error(`${path} ends at byte ${pos}, before ${end + 1}`);
    pos += bytesRead;
    if (bytes) bytes.copy += bytesRead;
    const chunk = buf.subarray(0, bytesRead);
    const p = new Promise<void>((resolve, reject) => { res.write(chunk, (err) => (err ? reject(err) : resolve())); });
    p.catch(() => {});
    flushed[i] = p;
  }
  await guard(Promise.all(flushed));
}

/**
 * Writes the stream `open` gives (the body's bytes, already cut to the range) to `res`,
 * then ends it. `open` fails before anything is written (a blob gone, a store down), so
 * the caller can still answer with an error; a client that goes away stops the stream.
 *
 * Each chunk is copied into a ring of reused buffers (RING × STREAM_SLOT) and that copy
 * written, rather than the chunk itself. A body from S3 arrives as a fresh 64 KiB buffer
 * per socket read; written as it is, each lived until the client's socket took it, so on
 * a slow client they were promoted to the old generation and V8's external-memory
 * pressure ran a full mark-compact every ~100 ms (bench/serve --s3: ~3 s of CPU per GB,
 * a quarter of it in GC, and a third of Distribution's rate). Copied, each read buffer is
 * garbage at once and dies in a cheap scavenge; the memcpy costs far less.
 */
export async function sendStream(open: () => Promise<Readable>, res: ServerResponse, o: SendOptions = {}): Promise<void> {
  const body = await open();
  let gone: Error | undefined;
  let cancel: ((e: Error) => void) | undefined;
  // A client gone stops the source too: the loop may be waiting for its next chunk.
  const onClose = () => {
    gone = clientGone();
    cancel?.(gone);
    body.destroy();
  };
  const guard: Guard = (p) => (gone ? Promise.reject(gone) : new Promise((resolve, reject) => {
    cancel = reject;
    p.then(resolve, reject);
  }));
  res.once('close', onClose);
  if (res.destroyed) onClose();
  try {
    const ring: Buffer[] = [];
    const flushed: Promise<void>[] = [];
    let i = 0;
    if (gone) throw gone;
    for await (const chunk of body as AsyncIterable<Buffer>) {
      for (let off = 0; off < chunk.length; i = (i + 1) % RING) {
        // ring[i] may be refilled only once the socket has taken what it held before.
        if (flushed[i]) await guard(flushed[i]!);
        const buf = (ring[i] ??= Buffer.allocUnsafe(STREAM_SLOT));
        const n = chunk.copy(buf, 0, off);
        off += n;
        if (o.bytes) o.bytes.copy += n;
        const part = buf.subarray(0, n);
        const p = new Promise<void>((resolve, reject) => { res.write(part, (err) => (err ? reject(err) : resolve())); });
        p.catch(() => {});
        flushed[i] = p;
      }
      if (gone) throw gone;
    }
    await guard(Promise.all(flushed));
  } catch (e) {
    body.destroy();
    throw gone ?? (res.destroyed && !res.writableFinished ? clientGone() : e);
  } finally {
    res.off('close', onClose);
  }
  res.end();
}
