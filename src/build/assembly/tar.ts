// Reproducible tar streams of store paths and of the root filesystem (laid out by
// farm.ts), read straight from the Nix store (never copied): the same paths always give
// the same bytes. A store path is walked with lstat only, so a symlink in it is archived
// as a symlink and never followed: its layer holds exactly the store path, nothing the
// link points at on the host.
//
// What makes it reproducible: entries in a fixed order (depth first, names sorted by
// their UTF-8 bytes), mtime 1, uid/gid 0 with names root/root, permission bits as in the
// store (which Nix has already normalised to 0444/0555), PAX headers exactly where ustar
// cannot hold a name (tar-stream decides that from the name alone). Parent directories of
// every entry are emitted before it, so any unpacker recreates the tree with the right
// modes; /nix and /nix/store are 0555 as in nixpkgs' dockerTools.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import { closeSync, lstatSync, openSync, readdirSync, readlinkSync, readSync, promises as fs, type Stats } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, posix } from 'node:path';
import { Readable } from 'node:stream';
import { BLOCK, takeBlock } from './blocks.js';

export type TarEntry =
  | { type: 'directory'; name: string; mode: number }
  | { type: 'symlink'; name: string; target: string }
  /** A regular file whose content is read from `source` when the entry is written. */
  | { type: 'file'; name: string; mode: number; size: number; source: string }
  /** A hard link to an earlier entry `target` of the same archive. */
  | { type: 'link'; name: string; target: string };

export const MTIME = new Date(1000);
const OWNER = { uid: 0, gid: 0, uname: 'root', gname: 'root' } as const;
const STORE_DIR_MODE = 0o555;

export const byUtf8 = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Refuses what a tar name cannot carry faithfully, instead of writing something else. */
function checkName(dir: string, name: Buffer): string {
  const s = name.toString('utf8');
  if (!Buffer.from(s).equals(name)) {
    throw new Error(`cannot archive ${JSON.stringify(join(dir, name.toString('latin1')))}: the file name is not valid UTF-8`);
  }
  return s;
}

/** The names in `dir`, sorted by their UTF-8 bytes (the order of every tar we write). */
export async function sortedDir(dir: string): Promise<string[]> {
  const names = await fs.readdir(dir, { encoding: 'buffer' });
  return names.map((n) => checkName(dir, n)).sort(byUtf8);
}

/** `a/b/c` → `a/`, `a/b/` (the directories above a relative path). */
function parentsOf(rel: string): string[] {
  const parts = rel.split('/');
  return parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'));
}

/**
 * The entries of a layer holding `storePaths` (absolute, e.g. /nix/store/…-x), in order:
 * the store's parent directories, then each path depth first. Files with the same inode
 * become hard links to their first occurrence in this layer.
 */
export async function* storePathEntries(storePaths: string[], signal?: AbortSignal): AsyncGenerator<TarEntry> {
  const emitted = new Set<string>();
  const inodes = new Map<string, string>();
  for (const abs of [...storePaths].sort(byUtf8)) {
    if (!posix.isAbsolute(abs) || abs.split('/').includes('..')) throw new Error(`not an absolute store path: ${abs}`);
    const rel = posix.normalize(abs).slice(1);
    for (const p of parentsOf(rel)) {
      if (!emitted.has(p)) { emitted.add(p); yield { type: 'directory', name: p, mode: STORE_DIR_MODE }; }
    }
    yield* walk(abs, rel, inodes, signal);
  }
}

async function* walk(abs: string, rel: string, inodes: Map<string, string>, signal?: AbortSignal): AsyncGenerator<TarEntry> {
  signal?.throwIfAborted();
  const st = lstatSync(abs);
  yield* entryFor(abs, rel, st, inodes);
  if (st.isDirectory()) {
    for (const name of await sortedDir(abs)) yield* walk(join(abs, name), `${rel}/${name}`, inodes, signal);
  }
}

async function* entryFor(abs: string, rel: string, st: Stats, inodes: Map<string, string>): AsyncGenerator<TarEntry> {
  const mode = st.mode & 0o7777;
  if (st.isDirectory()) yield { type: 'directory', name: rel, mode };
  else if (st.isSymbolicLink()) yield { type: 'symlink', name: rel, target: readlinkSync(abs) };
  else if (st.isFile()) {
    if (st.nlink > 1) {
      const key = `${st.dev}:${st.ino}`;
      const first = inodes.get(key);
      if (first !== undefined) { yield { type: 'link', name: rel, target: first }; return; }
      inodes.set(key, rel);
    }
    yield { type: 'file', name: rel, mode, size: st.size, source: abs };
  } else {
    // The Nix store holds only these three kinds (NAR cannot represent others).
    throw new Error(`cannot archive ${abs}: not a regular file, directory or symlink`);
  }
}

/**
 * tar-stream's header encoder, reached by path: the package exports only its streams,
 * and the layers' bytes (hence their digests, and the reuse of layers built before this
 * writer) depend on encoding headers exactly as it does. test/build/tar.test.ts checks
 * that the two writers agree byte for byte.
 */
const require = createRequire(import.meta.url);
const headers = require(join(dirname(require.resolve('tar-stream')), 'headers.js')) as {
  encode(h: Header): Buffer | null;
  encodePax(h: { name: string; linkname?: string | undefined }): Buffer;
};
interface Header {
  name: string; mode: number; uid: number; gid: number; uname: string; gname: string; size: number; mtime: Date;
  type: 'file' | 'link' | 'symlink' | 'directory' | 'pax-header'; linkname?: string | undefined;
}

/** The header block(s) of an entry: ustar, or a PAX record first where ustar cannot hold the names. */
function encodeHeader(h: Header): Buffer {
  const plain = headers.encode(h);
  if (plain) return plain;
  const pax = headers.encodePax({ name: h.name, linkname: h.linkname });
  const ph: Header = { ...h, name: 'PaxHeader', size: pax.length, type: 'pax-header', linkname: h.linkname && 'PaxHeader' };
  return Buffer.concat([headers.encode(ph)!, pax, ZEROS.subarray(0, padOf(pax.length)), headers.encode({ ...ph, size: h.size, type: h.type })!]);
}

const ZEROS = Buffer.alloc(1024);
const padOf = (size: number) => (512 - (size % 512)) % 512;
/** Output chunks, whole pool blocks that the gzip stream adopts without copying (blocks.ts). */
const TAR_BLOCK = BLOCK;
/** Entries between turns of the event loop: a few milliseconds of small files. */
const YIELD_EVERY = 128;

/**
 * Packs `entries` into an uncompressed tar stream of 1 MiB chunks (the last shorter).
 *
 * Why not tar-stream's packer: it moved every file through a read stream, an entry stream
 * and an async iterator, a few promises and a fresh buffer per chunk, which cost as much
 * CPU as hashing the layer twice and starved the compression threads of a core. Here file
 * contents are read straight into the chunk being filled, headers are copied beside them,
 * and a chunk leaves only when full: one buffer, one read per MiB of a large file, and
 * backpressure from the consumer. Files are read one at a time, so memory stays at a
 * chunk or two whatever the layer size.
 *
 * Store files are opened, read and closed with synchronous calls. Through libuv's thread
 * pool each of those was a hand-off between threads, and the ~4 hand-offs per file of a
 * closure of small files cost more than the reads (strace: 37,000 futex calls for 3,000
 * files; the tar of an 800 MB closure took 1.8 s, now 1.05 s). The store was just
 * realised or substituted, so these reads are page-cache copies; and the event loop gets
 * a turn at least every YIELD_EVERY entries and whenever the consumer pushes back.
 */
export function tarStream(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Readable {
  let block: Buffer | undefined;
  let fill = 0;
  let stopped = false;
  /** Set while the consumer has enough: called when it wants more, or goes away. */
  let resume: (() => void) | undefined;
  const wake = () => { const r = resume; resume = undefined; r?.(); };
  const out = new Readable({
    highWaterMark: 2 * TAR_BLOCK,
    read: wake,
    destroy(err, cb) { stopped = true; wake(); cb(err); },
  });
  const emit = async (b: Buffer) => {
    if (!out.push(b) && !stopped) await new Promise<void>((r) => { resume = r; });
  };
  const room = async (): Promise<Buffer> => {
    if (block && fill === TAR_BLOCK) { const full = block; block = undefined; fill = 0; await emit(full); }
    return (block ??= takeBlock());
  };
  const put = async (src: Buffer) => {
    for (let off = 0; off < src.length && !stopped;) {
      const b = await room();
      const n = src.copy(b, fill, off);
      fill += n;
      off += n;
    }
  };
  const contents = async (e: Extract<TarEntry, { type: 'file' }>) => {
    const fh = openSync(e.source, 'r');
    try {
      for (let pos = 0; pos < e.size && !stopped;) {
        const b = await room();
        const bytesRead = readSync(fh, b, fill, Math.min(e.size - pos, TAR_BLOCK - fill), pos);
        if (bytesRead === 0) throw new Error(`${e.source} shrank while being archived`);
        fill += bytesRead;
        pos += bytesRead;
      }
    } finally {
      closeSync(fh);
    }
    await put(ZEROS.subarray(0, padOf(e.size)));
  };
  let since = 0;
  const run = async () => {
    for await (const e of entries) {
      if (stopped) return;
      if (++since === YIELD_EVERY) { since = 0; await new Promise((r) => setImmediate(r)); }
      const base = { name: e.name, mtime: MTIME, ...OWNER, size: 0 };
      switch (e.type) {
        case 'directory': await put(encodeHeader({ ...base, type: 'directory', mode: e.mode })); break;
        case 'symlink': await put(encodeHeader({ ...base, type: 'symlink', linkname: e.target, mode: 0o777 })); break;
        case 'link': await put(encodeHeader({ ...base, type: 'link', linkname: e.target, mode: 0o644 })); break;
        case 'file':
          await put(encodeHeader({ ...base, type: 'file', mode: e.mode, size: e.size }));
          if (e.size > 0) await contents(e);
          break;
      }
    }
    await put(ZEROS);
    if (stopped) return;
    if (block && fill) await emit(block.subarray(0, fill));
    out.push(null);
  };
  run().catch((err: Error) => out.destroy(err));
  return out;
}
