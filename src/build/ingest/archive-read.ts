// Reads an image archive (a file, or the stdout of a stream script) entry by entry into
// a per-ingest temporary directory: small entries in memory, large ones through
// archive-layer.ts. Nothing is extracted to a path taken from the archive: temporary
// files are numbered, and entry names are only keys, checked so that an archive whose
// own names climb out of it (`../x`, `/etc/x`) is refused rather than silently tolerated.
//
// Room: build/ingest. Of build, imports only nix/ (processes), assembly/ (compression, manifests) and the
// shared errors.ts, types.ts and semaphore.ts; may import src/blobs and src/oci; never src/registry.
import type { ChildProcess } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { noSpaceCode } from '../../blobs/errors.js';
import { digestOf } from '../../oci/digest.js';
import { spawnFilter, spawnTied } from '../nix/child.js';
import { DEFAULT_COMPRESSION, type CompressionSetting } from '../assembly/compression.js';
import { ArchiveError } from '../errors.js';
import { peek, processEntry, sniff, type LayerFile } from './archive-layer.js';

/** Entries up to this size are kept in memory (configs, manifests, small layers). */
const SMALL_ENTRY = 1024 * 1024;
/** Bytes of small entries held in memory at once; past this they go to disk too. */
const MEMORY_BUDGET = 64 * 1024 * 1024;
const MAX_ENTRIES = 100_000;
const MAX_LINK_HOPS = 16;

export interface ArchiveEntry {
  name: string;
  rawDigest: string;
  rawSize: number;
  mem?: Buffer | undefined;
  rawFile?: string | undefined;
  layer?: LayerFile | undefined;
}

export class ArchiveContents {
  readonly entries = new Map<string, ArchiveEntry>();
  /** Symbolic and hard links: name → the archive path they point at. */
  readonly links = new Map<string, string>();
  private counter = 0;
  /** `compression`: what layers that must be (re)compressed become (gzip layers stay as they are). */
  constructor(readonly dir: string, readonly compression: CompressionSetting = DEFAULT_COMPRESSION) {}

  nextTemp(): string {
    return join(this.dir, String(this.counter++));
  }

  /** The file entry that `name` is (following in-archive links), or why there is none. */
  lookup(name: string): ArchiveEntry | { missing: string } {
    let cur = name;
    for (let hop = 0; hop <= MAX_LINK_HOPS; hop++) {
      const e = this.entries.get(cur);
      if (e) return e;
      const next = this.links.get(cur);
      if (next === undefined) {
        return { missing: hop === 0 ? `${name} is not in the archive` : `${name} is a link to ${cur}, which is not a file in the archive` };
      }
      cur = next;
    }
    return { missing: `${name} is a chain of more than ${MAX_LINK_HOPS} links` };
  }
}

export function malformed(what: string): ArchiveError {
  return new ArchiveError(`malformed image archive: ${what}`);
}

/** An archive member name as a key: `./a//b/` → `a/b`; absolute and `..` names refused. */
export function entryName(raw: string): string {
  if (raw.includes('\0')) throw malformed(`entry name ${JSON.stringify(raw)} contains a NUL byte`);
  if (raw.startsWith('/')) throw malformed(`entry ${JSON.stringify(raw)} has an absolute path`);
  const parts = raw.split('/');
  if (parts.includes('..')) throw malformed(`entry ${JSON.stringify(raw)} climbs out of the archive with ..`);
  return parts.filter((p) => p !== '' && p !== '.').join('/');
}

function linkTarget(name: string, header: tar.Header): string {
  const target = header.linkname ?? '';
  if (header.type === 'link') return entryName(target); // hard links name an archive path
  if (target.startsWith('/')) throw malformed(`entry ${name} is a symlink to the absolute path ${JSON.stringify(target)}`);
  const resolved = posix.normalize(posix.join(posix.dirname(name), target));
  if (resolved === '..' || resolved.startsWith('../')) {
    throw malformed(`entry ${name} is a symlink to ${JSON.stringify(target)}, outside the archive`);
  }
  return entryName(resolved);
}

export interface ReadOptions {
  /** Run `path` and read its stdout instead of reading the file. */
  script: boolean;
  timeoutMs: number;
}

/** Reads the whole archive at (or streamed by) `path` into `contents`. */
export async function readArchive(path: string, contents: ArchiveContents, opts: ReadOptions): Promise<void> {
  let child: ChildProcess | undefined;
  let scriptExit: Promise<ArchiveError | undefined> = Promise.resolve(undefined);
  let input: Readable;
  if (opts.script) {
    // argv only: the script is a store path, run without a shell and without arguments,
    // in its own process group so that a timeout kills whatever it started too, and so
    // does nixreg's death (the script gets SIGTERM, a chance to stop what it runs).
    const c = spawnTied(path, [], { stdio: ['ignore', 'pipe', 'pipe'], detached: true, deathSignal: 'SIGTERM', wholeGroup: true });
    child = c;
    let stderr = '';
    c.stderr!.on('data', (b: Buffer) => { stderr = (stderr + b.toString()).slice(-4000); });
    scriptExit = new Promise((resolve) => {
      c.once('error', (e) => resolve(new ArchiveError(`cannot run the image stream script ${path}: ${e.message}`)));
      c.once('close', (code, signal) => resolve(code === 0 ? undefined
        : new ArchiveError(`the image stream script ${path} failed (${signal ?? `exit ${code}`}): ${stderr.trim().slice(-1500)}`)));
    });
    input = c.stdout!;
  } else {
    input = createReadStream(path);
  }

  const extract = tar.extract();
  // Its errors surface through the entry iterator; this keeps one that comes before the
  // iteration starts (a timeout during the first read) from being an uncaught exception.
  extract.on('error', () => {});
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child);
    input.destroy();
    extract.destroy(new Error('timeout'));
  }, opts.timeoutMs);
  const timeoutError = () => new ArchiveError(
    `${opts.script ? 'the image stream script' : 'reading the image archive'} took longer than ${opts.timeoutMs} ms`);
  let filter: ReturnType<typeof spawnFilter> | undefined;
  try {
    const { head, stream } = await peek(input, 512);
    const kind = sniff(head);
    let tarBytes: Readable;
    if (kind === 'gzip') {
      tarBytes = stream.pipe(createGunzip());
      stream.once('error', (e) => tarBytes.destroy(e));
    } else if (kind === 'zstd') {
      filter = spawnFilter('zstd', ['-dc']);
      stream.pipe(filter.stdin);
      filter.stdin.on('error', () => {}); // a dying zstd reports through `done`
      stream.once('error', (e) => filter?.stdout.destroy(e));
      filter.done.catch((e: Error) => extract.destroy(e));
      tarBytes = filter.stdout;
    } else if (kind === 'tar') {
      tarBytes = stream;
    } else {
      throw malformed(head.length === 0 ? 'the archive is empty' : 'not a tar archive (nor a gzip- or zstd-compressed one)');
    }
    tarBytes.once('error', (e) => extract.destroy(e));
    tarBytes.pipe(extract as unknown as NodeJS.WritableStream);

    let count = 0;
    let memory = 0;
    for await (const entry of extract) {
      const h = entry.header;
      if (++count > MAX_ENTRIES) throw malformed(`more than ${MAX_ENTRIES} entries`);
      const name = entryName(h.name);
      if (h.type === 'directory') {
        await drain(entry);
        continue;
      }
      if (name === '') throw malformed(`entry ${JSON.stringify(h.name)} is a ${h.type} without a name`);
      if (contents.entries.has(name) || contents.links.has(name)) throw malformed(`entry ${name} appears twice`);
      if (h.type === 'symlink' || h.type === 'link') {
        contents.links.set(name, linkTarget(name, h));
        await drain(entry);
        continue;
      }
      if (h.type !== 'file' && h.type !== 'contiguous-file') {
        throw malformed(`entry ${name} is a ${h.type}; an image archive holds only files, directories and links`);
      }
      const size = h.size ?? 0;
      if (size <= SMALL_ENTRY && memory + size <= MEMORY_BUDGET) {
        const chunks: Buffer[] = [];
        for await (const c of entry) chunks.push(c as Buffer);
        const mem = Buffer.concat(chunks);
        memory += mem.length;
        contents.entries.set(name, { name, rawDigest: digestOf(mem), rawSize: mem.length, mem });
      } else {
        const p = await processEntry(entry as AsyncIterable<Buffer>, contents.nextTemp(), false, contents.compression);
        contents.entries.set(name, { name, rawDigest: p.rawDigest, rawSize: p.rawSize, rawFile: p.rawFile, layer: p.layer });
      }
    }
    if (filter) await filter.done;
    const failed = await scriptExit;
    if (failed) throw failed;
  } catch (e) {
    if (timedOut) throw timeoutError();
    // Writing the entries out failed for lack of space: nothing is wrong with the archive
    // (and a stream script's death is then only the broken pipe this left it).
    if (noSpaceCode(e) !== undefined) throw e;
    // A script that died mid-stream truncates the archive: its exit status says why.
    if (child) {
      const failed = await Promise.race([scriptExit, new Promise<undefined>((r) => setTimeout(() => r(undefined), 1000))]);
      if (failed) throw failed;
    }
    if (e instanceof ArchiveError) throw e;
    throw malformed(`cannot read it (truncated or corrupt?): ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
    if (child && child.exitCode === null && child.signalCode === null) killGroup(child);
    child?.stderr?.destroy();
    filter?.kill();
    input.destroy();
  }
}

function killGroup(child: ChildProcess | undefined): void {
  if (!child?.pid) return;
  try { process.kill(-child.pid, 'SIGKILL'); } catch { child.kill('SIGKILL'); }
}

async function drain(entry: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of entry) { /* discard */ }
}
