// One pass over an archive entry: sniff what it is, and turn a layer into a stored-ready
// gzip file while hashing, so that a multi-GiB layer is read exactly once and never held
// in memory. What the entry is for (layer, config, manifest) is only known after the
// archive's manifest has been read, which may come last; this module therefore decides
// from the bytes alone, and ingest.ts re-processes the rare entry it guessed wrong.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { createWriteStream } from 'node:fs';
import { Readable, Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { noSpaceCode } from '../blobs/errors.js';
import { Digester } from '../oci/digest.js';
import { spawnTied } from './child.js';
import { ParallelGzip } from './gzip.js';

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

/** A layer as it will be stored: a gzip file, its digest, and the digest of its tar. */
export interface LayerFile {
  file: string;
  digest: string;
  size: number;
  diffId: string;
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
 * parallel gunzip); a tar or zstd layer is gzip-compressed on the way. Anything else is
 * written as it is, unless `forceLayer`, in which case it is taken for an uncompressed tar.
 */
export async function processEntry(source: AsyncIterable<Buffer>, file: string, forceLayer: boolean): Promise<Processed> {
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
    return { rawDigest: digest, rawSize: raw.bytes, layer: { file, digest, size: raw.bytes, diffId: diff.digest(), recompressed: false } };
  }
  const diff = new Digester();
  const packed = new Digester();
  if (kind === 'tar') {
    await pipeline(stream, raw, diff, new ParallelGzip(6), packed, createWriteStream(file));
    const diffId = diff.digest();
    return { rawDigest: diffId, rawSize: raw.bytes, layer: { file, digest: packed.digest(), size: packed.bytes, diffId, recompressed: true } };
  }
  // zstd: Node 20's zlib has no zstd, so the zstd binary decompresses (argv, no shell).
  const z = spawnFilter('zstd', ['-dc']);
  try {
    await Promise.all([
      pipeline(stream, raw, z.stdin),
      pipeline(z.stdout, diff, new ParallelGzip(6), packed, createWriteStream(file)),
      z.done,
    ]);
  } catch (e) {
    // zstd's own complaint (bad data) beats the EPIPE it causes; otherwise keep `e`. A
    // full disk is no complaint of zstd's, whatever it says once its output is cut.
    const own = noSpaceCode(e) === undefined
      ? await Promise.race([z.done.then(() => undefined, (x: unknown) => x), delay(100)]) : undefined;
    z.kill();
    throw own ?? e;
  }
  return { rawDigest: raw.digest(), rawSize: raw.bytes, layer: { file, digest: packed.digest(), size: packed.bytes, diffId: diff.digest(), recompressed: true } };
}

/** A child process used as a stream filter; `done` rejects on a nonzero exit. */
export function spawnFilter(cmd: string, args: string[]): { stdin: Writable; stdout: Readable; done: Promise<void>; kill(): void } {
  // SIGKILL if nixreg dies: a filter holds nothing that needs cleaning up.
  const child = spawnTied(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], deathSignal: 'SIGKILL' });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { if (stderr.length < 4096) stderr += c.toString(); });
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`${cmd}: ${e.message}`)));
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim().slice(0, 500)}`));
    });
  });
  // The reason a filter dies is in its exit status; an EPIPE on its stdin says less.
  done.catch(() => {});
  return { stdin: child.stdin!, stdout: child.stdout!, done, kill: () => { child.kill('SIGKILL'); } };
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
