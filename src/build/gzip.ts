// Deterministic parallel gzip, the way pigz does it: the input is cut at fixed 1 MiB
// offsets, each block is raw-deflated on libuv's threadpool with the previous block's
// last 32 KiB as preset dictionary, non-final blocks end on a sync flush (byte-aligned,
// no final bit), and the results are concatenated in order into ONE gzip member with the
// CRC-32 and length of the whole input. The output depends only on the input bytes and
// the zlib version (never on timing, chunking of the input or the number of cores), and
// one big layer no longer bounds the wall time of a build to one core.
//
// Compressions running are limited process-wide (a slot is taken before a block is
// started), and each stream keeps at most `maxQueued` blocks between start and output, so
// memory stays bounded however many layers are built at once.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { availableParallelism } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import { constants, crc32, deflateRaw } from 'node:zlib';
import { Semaphore } from './semaphore.js';

const BLOCK = 1 << 20;
const WINDOW = 32 * 1024;
const deflateRawAsync = promisify(deflateRaw) as (buf: Buffer, opts: object) => Promise<Buffer>;
// gzip header: magic, CM=deflate, no flags, MTIME=0, XFL=0, OS=3 (Unix): fixed bytes.
const HEADER = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);

// One slot per core plus one, so a core is never idle while the main thread queues; but
// one libuv thread stays free for file reads and writes, which share the same pool
// (UV_THREADPOOL_SIZE, default 4, fixed when the process starts).
const POOL = Math.min(1024, Math.max(1, Number(process.env.UV_THREADPOOL_SIZE) || 4));
const slots = new Semaphore(Math.max(1, Math.min(availableParallelism() + 1, POOL - 1)));

/**
 * Input blocks are recycled: allocating a fresh MiB per block makes V8 run a full garbage
 * collection every few MB of throughput (external memory pressure), which cost a third of
 * the main thread in a server process.
 */
const freeBlocks: Buffer[] = [];
const takeBlock = () => freeBlocks.pop() ?? Buffer.allocUnsafeSlow(BLOCK);
const giveBlock = (b: Buffer) => { if (freeBlocks.length < 32) freeBlocks.push(b); };

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
