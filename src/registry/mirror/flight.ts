// One upstream blob GET shared by every client that asks for the blob while it is on
// its way (single-flight within this process). The body is written to a file under the
// data directory's tmp as it arrives, hashed on the way; each client reads that file
// behind the writer, so every one of them gets bytes as they arrive, at its own pace,
// and a slow client never slows the fetch. At the end the digest is checked, and only
// then is the file committed as the blob; on a mismatch or a cut, nothing is stored and
// each reader's stream fails (the client sees its connection cut, the only honest signal
// once headers are out; the last byte is held back until the digest is checked, so no
// client ever gets a whole wrong body). Readers keep the file open: the commit renames it, and a reader
// that joined before goes on reading the same inode.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { createHash, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { algorithmOf } from '../../oci/digest.js';

/** Bytes taken from the upstream ahead of the file write in progress. */
const WRITE_BATCH = 4 * 1024 * 1024;
/** What a reader asks of the file at once. */
const READ_CHUNK = 1024 * 1024;

export class BlobFlight {
  /** Bytes in the file so far. */
  written = 0;
  /** Set once the body has arrived, been checked and committed (or failed). */
  private end: { error?: Error } | undefined;
  private wakers: (() => void)[] = [];
  /** The whole body has arrived and matches the digest. */
  private complete = false;
  private readers = 0;
  /** Settles when the flight is over: committed, or failed (never rejects). */
  readonly settled: Promise<void>;

  private constructor(
    private readonly fh: FileHandle,
    readonly file: string,
    readonly digest: string,
    /** The upstream's Content-Length, when it gave one. */
    readonly size: number | undefined,
    body: AsyncIterable<Buffer>,
    commit: (file: string, size: number) => Promise<void>,
  ) {
    this.settled = this.run(body, commit).then(() => this.finish({}), (error: Error) => this.finish({ error }));
  }

  /** Starts writing `body` (the upstream's answer for `digest`) to a new file in `tmpDir`. */
  static async start(tmpDir: string, digest: string, size: number | undefined, body: AsyncIterable<Buffer> & { destroy?(): void },
    commit: (file: string, size: number) => Promise<void>): Promise<BlobFlight> {
    const file = join(tmpDir, `mirror-${randomUUID()}`);
    let fh: FileHandle;
    try { fh = await fs.open(file, 'w+'); } catch (e) { body.destroy?.(); throw e; }
    return new BlobFlight(fh, file, digest, size, body, commit);
  }

  private async run(body: AsyncIterable<Buffer>, commit: (file: string, size: number) => Promise<void>): Promise<void> {
    const hash = createHash(algorithmOf(this.digest));
    // What arrives while a write is in progress goes in the next one, all at once
    // (writev): a write per TLS record (16 KiB) made a cold pull 3-4 times slower than
    // the upstream alone.
    const fh = this.fh;
    const writeAll = async (bufs: Buffer[]) => {
      for (const b of bufs) hash.update(b);
      const total = bufs.reduce((n, b) => n + b.length, 0);
      let { bytesWritten } = await fh.writev(bufs, this.written);
      this.written += bytesWritten;
      if (bytesWritten < total) {
        // A short write (rare on a file): the rest.
        for (let rest = Buffer.concat(bufs).subarray(bytesWritten); rest.length > 0; rest = rest.subarray(bytesWritten)) {
          ({ bytesWritten } = await fh.write(rest, 0, rest.length, this.written));
          this.written += bytesWritten;
        }
      }
      this.wake();
    };
    await pipeline(body as AsyncIterable<Buffer>, new Writable({
      highWaterMark: WRITE_BATCH,
      write(chunk: Buffer, _enc, cb) { writeAll([chunk]).then(() => cb(), cb); },
      writev(chunks, cb) { writeAll(chunks.map((c) => c.chunk as Buffer)).then(() => cb(), cb); },
    }));
    const actual = `${algorithmOf(this.digest)}:${hash.digest('hex')}`;
    if (actual !== this.digest) throw new Error(`upstream sent content of digest ${actual} for ${this.digest}; nothing was stored`);
    if (this.size !== undefined && this.written !== this.size) throw new Error(`upstream sent ${this.written} bytes of ${this.size}; nothing was stored`);
    // The readers have the whole, checked blob: they finish even if storing it fails.
    this.complete = true;
    this.wake();
    await commit(this.file, this.written);
  }

  private finish(end: { error?: Error }): void {
    this.end = end;
    this.wake();
    if (end.error) fs.rm(this.file, { force: true }).catch(() => {});
    this.maybeClose();
  }

  /** Over: a new reader must read the committed blob (or fetch again), not this file. */
  get over(): boolean { return this.end !== undefined; }

  /** The failure of the flight, once it is over; undefined while it runs or when it succeeded. */
  get error(): Error | undefined { return this.end?.error; }

  private wake(): void {
    const w = this.wakers;
    this.wakers = [];
    for (const f of w) f();
  }

  private maybeClose(): void {
    if (this.end && this.readers === 0) this.fh.close().catch(() => {});
  }

  /** Bytes [start, end] (end inclusive, or to the end of the blob), as they arrive. */
  reader(start = 0, end = Infinity): Readable {
    this.readers++;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const flight = this;
    async function* bytes(): AsyncGenerator<Buffer> {
      let pos = start;
      while (pos <= end) {
        // The last byte waits for the digest check: a client never gets a whole body
        // that does not match (a mismatch cuts it one byte short).
        const ready = flight.complete ? flight.written : flight.written - 1;
        if (pos < ready) {
          const n = Math.min(ready - pos, READ_CHUNK, end + 1 - pos);
          const buf = Buffer.allocUnsafe(n);
          const { bytesRead } = await flight.fh.read(buf, 0, n, pos);
          if (bytesRead === 0) throw new Error('mirror file shrank');
          pos += bytesRead;
          yield bytesRead === n ? buf : buf.subarray(0, bytesRead);
          continue;
        }
        if (flight.complete) break;
        if (flight.end?.error) throw flight.end.error;
        if (flight.end) break;
        await new Promise<void>((r) => flight.wakers.push(r));
      }
    }
    const stream = Readable.from(bytes(), { objectMode: false });
    let released = false;
    const release = () => { if (!released) { released = true; this.readers--; this.maybeClose(); } };
    stream.once('close', release);
    return stream;
  }
}
