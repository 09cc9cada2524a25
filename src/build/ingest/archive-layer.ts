// One pass over an archive entry: sniff what it is, and turn a layer into a stored-ready
// gzip file while hashing, so that a multi-GiB layer is read exactly once and never held
// in memory. What the entry is for (layer, config, manifest) is only known after the
// archive's manifest has been read, which may come last; this module therefore decides
// from the bytes alone, and ingest.ts re-processes the rare entry it guessed wrong.
//
// Room: build/ingest. Of build, imports only nix/ (processes), assembly/ (compression, manifests) and the
// shared errors.ts, types.ts and semaphore.ts; may import src/blobs and src/oci; never src/registry.
import { createWriteStream } from 'node:fs';
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { noSpaceCode } from '../../blobs/errors.js';
import { Digester } from '../../oci/digest.js';
import { spawnFilter } from '../nix/child.js';
import { compressor, DEFAULT_COMPRESSION, type CompressionSetting, type LayerCompression } from '../assembly/compression.js';

export type Compression = 'gzip' | 'zstd' | 'tar' | 'other';

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** What `head` (the first bytes of a stream, ideally 512) says the stream is. */
export function sniff(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.subarray(0, 4).equals(ZSTD_MAGIC)) return 'zstd';
  if (head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar') return 'tar';
  // An empty layer is just the end-of-archive marker: 1024 zero bytes.
  if (head.length >= 512 && head.subarray(0, 512).every((b) => b === 0)) return 'tar';
  return 'other';
}

/**
 * Reads at least `n` bytes (or everything, if shorter) from `source` and returns them
 * together with a stream that yields the whole content again, head included.
 */
export async function peek(source: AsyncIterable<Buffer>, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const it = source[Symbol.asyncIterator]();
  const chunks: Buffer[] = [];
  let got = 0;
  let done = false;
  while (got < n) {
    const r = await it.next();
    if (r.done) { done = true; break; }
    const c = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
    chunks.push(c);
    got += c.length;
  }
  const head = Buffer.concat(chunks);
  async function* rest(): AsyncGenerator<Buffer> {
    try {
      if (head.length) yield head;
      if (done) return;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield r.value;
      }
    } finally {
      // Stops the source when the consumer gives up early (errors included).
      if (!done) await it.return?.();
    }
  }
  return { head, stream: Readable.from(rest(), { objectMode: false }) };
}

/** A layer as it will be stored: a file, its digest and compression, and the digest of its tar. */
export interface LayerFile {
  file: string;
  digest: string;
  size: number;
  diffId: string;
  compression: LayerCompression;
  /** False when the stored bytes are the archive's own (a layer that was already gzip). */
  recompressed: boolean;
}

export interface Processed {
  /** sha256 and length of the entry's bytes as they were in the archive. */
  rawDigest: string;
  rawSize: number;
  /** Set when the entry was recognised (or forced) as a layer. */
  layer?: LayerFile;
  /** Set when the entry was kept as it was (not a layer, as far as its bytes tell). */
  rawFile?: string;
}

/**
 * Streams `source` into `file`. A gzip layer keeps its bytes (its diff_id is hashed from a
 * parallel gunzip): recompressing it would cost a build's worth of CPU to gain nothing. A
 * tar or zstd layer is unpacked and compressed as `compression` says on the way. Anything
 * else is written as it is, unless `forceLayer`, in which case it is taken for an uncompressed tar.
 */
export async function processEntry(
  source: AsyncIterable<Buffer>, file: string, forceLayer: boolean, compression: CompressionSetting = DEFAULT_COMPRESSION,
): Promise<Processed> {
  const { head, stream } = await peek(source, 512);
  let kind = sniff(head);
  if (kind === 'other' && forceLayer) kind = 'tar';
  const raw = new Digester();
  if (kind === 'other') {
    await pipeline(stream, raw, createWriteStream(file));
    return { rawDigest: raw.digest(), rawSize: raw.bytes, rawFile: file };
  }
  if (kind === 'gzip') {
    const gunzip = createGunzip();
    const diff = new Digester();
    const tee = new Tee(gunzip);
    const unpacked = pipeline(gunzip, diff, sink());
    try {
      await Promise.all([pipeline(stream, raw, tee, createWriteStream(file)), unpacked]);
    } catch (e) {
      gunzip.destroy();
      throw e;
    }
    const digest = raw.digest();
    return { rawDigest: digest, rawSize: raw.bytes, layer: { file, digest, size: raw.bytes, diffId: diff.digest(), compression: 'gzip', recompressed: false } };
  }
  const diff = new Digester();
  const packer = compressor(compression);
  // Stored as a tar, the layer's digest is its diff_id: one hash for both.
  const packed = packer ? new Digester() : diff;
  const pack = (from: Readable) => pipeline([from, diff, ...(packer ? [packer, packed] : []), createWriteStream(file)]);
  const layer = (): LayerFile => ({ file, digest: packed.digest(), size: packed.bytes, diffId: diff.digest(), compression: compression.kind, recompressed: true });
  if (kind === 'tar') {
    // The raw bytes are the tar: its digest is the diff_id's, not hashed twice.
    await pack(stream);
    return { rawDigest: diff.digest(), rawSize: diff.bytes, layer: layer() };
  }
  // zstd: Node 20's zlib has no zstd, so the zstd binary decompresses (argv, no shell).
  const z = spawnFilter('zstd', ['-dc']);
  try {
    await Promise.all([pipeline(stream, raw, z.stdin), pack(z.stdout), z.done]);
  } catch (e) {
    // zstd's own complaint (bad data) beats the EPIPE it causes; otherwise keep `e`. A
    // full disk is no complaint of zstd's, whatever it says once its output is cut.
    const own = noSpaceCode(e) === undefined
      ? await Promise.race([z.done.then(() => undefined, (x: unknown) => x), delay(100)]) : undefined;
    z.kill();
    throw own ?? e;
  }
  return { rawDigest: raw.digest(), rawSize: raw.bytes, layer: layer() };
}

/** Passes chunks through while also writing them to `other` (with its backpressure). */
class Tee extends Transform {
  constructor(private readonly other: Writable) {
    super();
    other.once('error', (e) => this.destroy(e));
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
    if (this.other.write(chunk)) cb(null, chunk);
    else this.other.once('drain', () => cb(null, chunk));
  }
  override _flush(cb: TransformCallback) {
    this.other.end();
    cb();
  }
}

const delay = (ms: number) => new Promise<undefined>((r) => setTimeout(() => r(undefined), ms));

function sink(): Writable {
  return new Writable({ write(_c, _e, cb) { cb(); } });
}
