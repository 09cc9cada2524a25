// Deterministic parallel gzip, the way pigz does it: the input is cut at fixed 1 MiB
// offsets, each block is raw-deflated on libuv's threadpool with the previous block's
// last 32 KiB as preset dictionary, non-final blocks end on a sync flush (byte-aligned,
// no final bit), and the results are concatenated in order into ONE gzip member with the
// CRC-32 and length of the whole input. The output depends only on the input bytes and
// the zlib version (never on timing, chunking of the input or the number of cores), and
// one big layer no longer bounds the wall time of a build to one core.
//
// A block whose bytes look random (already compressed files: archives, images, jars,
// xz'd man pages) is written as stored deflate blocks instead: deflate spends as much
// CPU failing to shrink random bytes as it spends on text (31 ms against 22-25 ms per
// MiB here), to gain nothing. Whether a block looks random is decided by the byte
// histogram of each of its 64 KiB segments (every segment near 8 bits per byte), from
// the bytes alone, so the output stays a pure function of the input. Data with high byte
// entropy that LZ77 could still shrink (the same random run repeated within a block) loses
// that; real files hardly have it.
//
// Compressions running are limited process-wide (a slot is taken before a block is
// started), and each stream keeps at most `maxQueued` blocks between start and output, so
// memory stays bounded however many layers are built at once.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import { availableParallelism } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import { constants, crc32, deflateRaw } from 'node:zlib';
import { BLOCK, giveBlock, isPoolBlock, takeBlock } from './blocks.js';
import { Semaphore } from '../semaphore.js';

const WINDOW = 32 * 1024;
const deflateRawAsync = promisify(deflateRaw) as (buf: Buffer, opts: object) => Promise<Buffer>;
// gzip header: magic, CM=deflate, no flags, MTIME=0, XFL=0, OS=3 (Unix): fixed bytes.
const HEADER = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);

// One slot per core plus one, so a core is never idle while the main thread queues; but
// one libuv thread stays free for file reads and writes, which share the same pool
// (UV_THREADPOOL_SIZE, default 4, fixed when the process starts).
const POOL = Math.min(1024, Math.max(1, Number(process.env.UV_THREADPOOL_SIZE) || 4));
const slots = new Semaphore(Math.max(1, Math.min(availableParallelism() + 1, POOL - 1)));


export class ParallelGzip extends Transform {
  /** The block being filled, and how much of it is. */
  private block: Buffer | undefined;
  private fill = 0;
  private dict: Buffer | undefined;
  private crc = 0;
  private length = 0;
  /** Compressed blocks in input order, possibly still running. */
  private queue: Promise<Buffer>[] = [];

  constructor(private readonly level = 6, private readonly maxQueued = Math.min(availableParallelism() + 1, 16)) {
    super();
    this.push(HEADER);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.crc = crc32(chunk, this.crc);
    this.length += chunk.length;
    this.absorb(chunk).then(() => cb(), cb);
  }

  override _flush(cb: TransformCallback): void {
    this.finish().then(() => {
      const trailer = Buffer.alloc(8);
      trailer.writeUInt32LE(this.crc >>> 0, 0);
      trailer.writeUInt32LE(this.length % 2 ** 32, 4);
      this.push(trailer);
      cb();
    }, cb);
  }

  /**
   * Copies `chunk` into blocks. A full block is started only once a byte beyond it
   * exists, so the block compressed as the last one always is the last.
   */
  private async absorb(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      if (this.fill === BLOCK) {
        const full = this.block!;
        this.block = undefined;
        this.fill = 0;
        while (this.queue.length >= this.maxQueued) this.push(await this.queue.shift()!);
        // Waiting for a slot before starting is what bounds memory across all streams.
        await slots.take();
        this.start(full, full, false);
      }
      // A whole block from the tar writer, arriving at a block boundary, becomes the block.
      if (off === 0 && this.block === undefined && isPoolBlock(chunk)) { this.block = chunk; this.fill = BLOCK; return; }
      this.block ??= takeBlock();
      const n = Math.min(BLOCK - this.fill, chunk.length - off);
      chunk.copy(this.block, this.fill, off, off + n);
      this.fill += n;
      off += n;
    }
  }

  /** Starts the last block (possibly empty) and emits everything in order. */
  private async finish(): Promise<void> {
    await slots.take();
    const block = this.block ?? takeBlock();
    this.block = undefined;
    this.start(block, block.subarray(0, this.fill), true);
    while (this.queue.length) this.push(await this.queue.shift()!);
  }

  private start(buffer: Buffer, block: Buffer, last: boolean): void {
    const dict = this.dict;
    this.dict = Buffer.from(block.subarray(Math.max(0, block.length - WINDOW)));
    if (looksRandom(block)) {
      const out = stored(block, last);
      slots.give();
      giveBlock(buffer);
      this.queue.push(Promise.resolve(out));
      return;
    }
    const opts = {
      level: this.level,
      // Room for the whole output: one threadpool job per block instead of one per 16 KiB.
      chunkSize: BLOCK + 64 * 1024,
      ...(dict && dict.length ? { dictionary: dict } : {}),
      finishFlush: last ? constants.Z_FINISH : constants.Z_SYNC_FLUSH,
    };
    // zlib is done with its input when the callback runs: the buffer can be reused.
    const p = deflateRawAsync(block, opts).finally(() => { slots.give(); giveBlock(buffer); });
    // Errors surface when the block is awaited in order; keep Node from flagging them early.
    p.catch(() => {});
    this.queue.push(p);
  }
}

const SEGMENT = 64 * 1024;
/** Bits per byte above which a segment is taken for random; 16,384 random bytes measure ~7.99. */
const RANDOM_BITS = 7.97;
const counts = new Uint32Array(256);
const STRIDE = 4;
const LOG2 = new Float64Array(SEGMENT / STRIDE + 1).map((_, i) => (i ? i * Math.log2(i) : 0));

/** Whether every 64 KiB segment of `block` (every 4th byte sampled: ~1 ms per MiB) looks random. */
export function looksRandom(block: Buffer): boolean {
  if (block.length < SEGMENT) return false;
  for (let seg = 0; seg + SEGMENT <= block.length; seg += SEGMENT) {
    counts.fill(0);
    for (let i = seg; i < seg + SEGMENT; i += STRIDE) counts[block[i]!]!++;
    const n = SEGMENT / STRIDE;
    let sum = 0;
    for (let c = 0; c < 256; c++) sum += LOG2[counts[c]!]!;
    // Shannon entropy: log2(n) - sum(c log2 c) / n.
    if (Math.log2(n) - sum / n < RANDOM_BITS) return false;
  }
  return true;
}

/**
 * `block` as stored deflate blocks (RFC 1951 3.2.4): a 1-byte header (the stream is
 * byte-aligned here: every block before ends on a sync flush or is stored), LEN, NLEN
 * and the bytes, at most 65535 per block; the final one carries BFINAL when `last`.
 */
function stored(block: Buffer, last: boolean): Buffer {
  const MAX = 65535;
  const n = Math.max(1, Math.ceil(block.length / MAX));
  const out = Buffer.allocUnsafe(block.length + 5 * n);
  let o = 0;
  for (let i = 0; i < n; i++) {
    const part = block.subarray(i * MAX, Math.min(block.length, (i + 1) * MAX));
    out[o] = last && i === n - 1 ? 1 : 0;
    out.writeUInt16LE(part.length, o + 1);
    out.writeUInt16LE(~part.length & 0xffff, o + 3);
    part.copy(out, o + 5);
    o += 5 + part.length;
  }
  return out;
}
