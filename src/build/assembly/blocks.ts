// The 1 MiB buffers that carry a layer from the tar writer (tar.ts) through the parallel
// gzip (gzip.ts), recycled between them.
//
// Why recycle: every buffer Node allocates outside V8's heap counts as external memory,
// and V8 answers each few dozen MB of it with a full mark-compact. Allocating a fresh MiB
// per tar chunk and per gzip block made ~140 mark-compacts per 800 MB build, a tenth of
// the main thread. A buffer taken here is owned by whoever holds it last: the tar writer
// hands its chunks on, and the gzip stream adopts a whole chunk as its block (no copy)
// and gives it back once deflate is done with it. A chunk that goes elsewhere (to a file,
// uncompressed) is simply left to the garbage collector.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import type { FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';

export const BLOCK = 1 << 20;

const free: Buffer[] = [];
const ours = new WeakSet<Buffer>();
/** Enough for the blocks in flight of a few layers at once; beyond, the GC takes them. */
const KEEP = 32;

export function takeBlock(): Buffer {
  const b = free.pop() ?? Buffer.allocUnsafeSlow(BLOCK);
  ours.add(b);
  return b;
}

/** Returns `b` for reuse: only a block taken here, whole, and by its last holder. */
export function giveBlock(b: Buffer): void {
  if (free.length < KEEP && b.length === BLOCK && ours.has(b)) free.push(b);
}

/** Whether `b` is a whole block of this pool, which a holder may adopt instead of copying. */
export function isPoolBlock(b: Buffer): boolean {
  return b.length === BLOCK && ours.has(b);
}

/**
 * Appends what it is given to `fh`, and gives pool blocks back once they are on disk: the
 * last holder of an uncompressed layer's chunks. (Freed instead, each MiB went back to
 * the kernel with munmap, and on a VM every munmap in a threaded process interrupts the
 * other cores: a second of system time per GB.)
 */
export function fileSink(fh: FileHandle): Writable {
  const writeAll = async (b: Buffer) => {
    for (let off = 0; off < b.length;) off += (await fh.write(b, off, b.length - off)).bytesWritten;
  };
  return new Writable({
    highWaterMark: 2 * BLOCK,
    write(chunk: Buffer, _enc, cb) { writeAll(chunk).then(() => { giveBlock(chunk); cb(); }, cb); },
  });
}

