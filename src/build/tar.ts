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
// Room: build. May import src/blobs and src/oci; never src/registry.
import { promises as fs, createReadStream, type Stats } from 'node:fs';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';

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
/** Large reads: one threadpool round trip per MiB instead of per 64 KiB. */
const READ_CHUNK = 1 << 20;

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
  const st = await fs.lstat(abs);
  yield* entryFor(abs, rel, st, inodes);
  if (st.isDirectory()) {
    for (const name of await sortedDir(abs)) yield* walk(join(abs, name), `${rel}/${name}`, inodes, signal);
  }
}

async function* entryFor(abs: string, rel: string, st: Stats, inodes: Map<string, string>): AsyncGenerator<TarEntry> {
  const mode = st.mode & 0o7777;
  if (st.isDirectory()) yield { type: 'directory', name: rel, mode };
  else if (st.isSymbolicLink()) yield { type: 'symlink', name: rel, target: await fs.readlink(abs) };
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
 * Packs `entries` into an uncompressed tar stream. Files are streamed from disk one at a
 * time with backpressure, so memory stays small whatever the layer size.
 */
export function tarStream(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Readable {
  const pack = tar.pack();
  const out = Readable.from(pack, { objectMode: false });
  // When the consumer goes away (a failed pipeline), stop reading files at once instead of
  // waiting forever for a drain that will not come.
  let stopped = false;
  const stop = new Promise<void>((r) => out.once('close', () => { stopped = true; r(); }));
  const until = (p: Promise<unknown>) => Promise.race([p, stop]);
  const fill = async () => {
    for await (const e of entries) {
      if (stopped) return;
      const base = { name: e.name, mtime: MTIME, ...OWNER };
      switch (e.type) {
        case 'directory':
          await until(entry(pack, { ...base, type: 'directory', mode: e.mode }));
          break;
        case 'symlink':
          await until(entry(pack, { ...base, type: 'symlink', linkname: e.target, mode: 0o777 }));
          break;
        case 'link':
          await until(entry(pack, { ...base, type: 'link', linkname: e.target, mode: 0o644 }));
          break;
        case 'file': {
          let sink!: NodeJS.WritableStream;
          const done = new Promise<void>((res, rej) => {
            sink = pack.entry({ ...base, type: 'file', mode: e.mode, size: e.size }, (err) => (err ? rej(err) : res()));
          });
          done.catch(() => {});
          // A cancelled build destroys the pack, and the pack its open entry with the same
          // error: `done` reports it, the entry's own 'error' event must not crash the process.
          sink.on('error', () => {});
          let got = 0;
          // Sized to the file: a read stream allocates a full highWaterMark buffer per
          // read, and most store files are small.
          const reads = e.size === 0 ? [] : createReadStream(e.source, { highWaterMark: Math.min(READ_CHUNK, e.size), end: e.size - 1 });
          for await (const chunk of reads) {
            if (stopped) return;
            got += (chunk as Buffer).length;
            if (!sink.write(chunk as Buffer)) await until(new Promise((r) => sink.once('drain', r)));
          }
          if (got !== e.size) throw new Error(`${e.source} shrank while being archived`);
          sink.end();
          await until(done);
          break;
        }
      }
    }
    pack.finalize();
  };
  fill().catch((err: Error) => pack.destroy(err));
  return out;
}

function entry(pack: tar.Pack, header: Parameters<tar.Pack['entry']>[0]): Promise<void> {
  return new Promise((res, rej) => { pack.entry(header, (err) => (err ? rej(err) : res())); });
}
