// Content-addressed storage: blob files on disk plus the SQLite index, behind one API
// that the HTTP handlers and the image builder both use. Nothing here knows HTTP.
//
// Write path of every blob: stream into a temporary file while hashing, verify, fsync,
// rename into <data>/blobs/<alg>/<xx>/<hex>, fsync the directory, and only then add the
// index row. A crash therefore leaves at worst a complete file without a row, which
// startup removes; never a row without a file, never a partial file at a final path.
import { randomUUID, createHash, type Hash } from 'node:crypto';
import { closeSync, createWriteStream, openSync, promises as fs } from 'node:fs';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { LRUCache } from 'lru-cache';
import { RegistryError } from '../registry/errors.js';
import { Digester, algorithmOf, digestFile, digestOf } from './digest.js';
import { Index, type ManifestRow, type NewManifest } from './index.js';
import { Layout } from './layout.js';
import { KeyedLock } from './lock.js';

export interface StorageOptions {
  /** Uploads untouched for longer than this are purged (default 24 h). */
  uploadMaxAgeMs?: number;
  /** Bytes of manifest bodies kept in memory (default 64 MiB). */
  manifestCacheBytes?: number;
}

export interface ManifestDescriptor {
  digest: string;
  mediaType: string;
  size: number;
}

export interface StoredManifest extends ManifestDescriptor {
  body: Buffer;
}

interface UploadState {
  /** sha256 of bytes [0, offset), or null when it must be recomputed from the file. */
  hash: Hash | null;
  offset: number;
  busy: boolean;
}

/**
 * Socket reads arrive in 64 KiB chunks; letting up to 1 MiB queue before the file
 * stream pushes back lets it write them in one writev, a tenth of the syscalls.
 */
const WRITE_BUFFER = 1024 * 1024;

export class Storage {
  readonly layout: Layout;
  readonly index: Index;
  private readonly locks = new KeyedLock();
  private readonly uploads = new Map<string, UploadState>();
  private readonly uploadMaxAgeMs: number;
  private purgeTimer: NodeJS.Timeout | undefined;
  /**
   * (repository, generation, reference) → descriptor. Each repository has a generation
   * that every write or delete in it bumps, so invalidation is per repository and O(1),
   * and no entry of one repository can ever answer for another.
   */
  private readonly refCache = new LRUCache<string, ManifestDescriptor>({ max: 50_000 });
  private readonly generations = new Map<string, number>();
  /** Manifest bodies by digest: content-addressed, so an entry is never stale. */
  private readonly bodyCache: LRUCache<string, Buffer>;

  private constructor(root: string, opts: StorageOptions) {
    this.layout = new Layout(root);
    this.index = new Index(this.layout.dbPath);
    this.uploadMaxAgeMs = opts.uploadMaxAgeMs ?? 24 * 3600_000;
    this.bodyCache = new LRUCache<string, Buffer>({
      maxSize: opts.manifestCacheBytes ?? 64 * 1024 * 1024,
      sizeCalculation: (b) => b.length || 1,
    });
  }

  static async open(root: string, opts: StorageOptions = {}): Promise<Storage> {
    const layout = new Layout(root);
    for (const d of [layout.root, layout.blobsDir, layout.tmpDir, layout.uploadsDir, layout.gcrootsDir, layout.logsDir]) {
      await fs.mkdir(d, { recursive: true });
    }
    const s = new Storage(root, opts);
    await s.reconcile();
    // At least every second (a tiny max age must not become a busy loop), at most hourly.
    s.purgeTimer = setInterval(() => { void s.purgeStaleUploads().catch(() => {}); },
      Math.max(1000, Math.min(s.uploadMaxAgeMs, 3600_000)));
    s.purgeTimer.unref();
    return s;
  }

  close(): void {
    if (this.purgeTimer) clearInterval(this.purgeTimer);
    this.index.close();
  }

  // ---------------------------------------------------------------- reconciliation

  /**
   * Brings index and disk back into agreement after a crash. Runs at open, before any
   * request: at run time it could take a blob renamed into place whose row is not yet
   * written for an orphan.
   */
  async reconcile(): Promise<{ rowsDropped: number; filesRemoved: number; uploadsPurged: number }> {
    let rowsDropped = 0;
    let filesRemoved = 0;
    const known = new Set<string>();
    for (const { digest } of this.index.allBlobs()) {
      try {
        await fs.access(this.layout.blobPath(digest));
        known.add(digest);
      } catch {
        this.index.forgetBlob(digest);
        rowsDropped++;
      }
    }
    for (const alg of await readdirSafe(this.layout.blobsDir)) {
      for (const prefix of await readdirSafe(join(this.layout.blobsDir, alg))) {
        for (const hex of await readdirSafe(join(this.layout.blobsDir, alg, prefix))) {
          if (!known.has(`${alg}:${hex}`)) {
            await fs.rm(join(this.layout.blobsDir, alg, prefix, hex), { force: true, recursive: true });
            filesRemoved++;
          }
        }
      }
    }
    await fs.rm(this.layout.tmpDir, { recursive: true, force: true });
    await fs.mkdir(this.layout.tmpDir, { recursive: true });
    const uploadsPurged = await this.purgeStaleUploads();
    return { rowsDropped, filesRemoved, uploadsPurged };
  }

  async purgeStaleUploads(): Promise<number> {
    const cutoff = Date.now() - this.uploadMaxAgeMs;
    const rows = new Map(this.index.allUploads().map((u) => [u.id, u.updated_at]));
    let purged = 0;
    for (const [id, updated] of rows) {
      let exists = true;
      try { await fs.access(this.layout.uploadPath(id)); } catch { exists = false; }
      if (!exists || (updated < cutoff && !this.uploads.get(id)?.busy)) {
        this.index.deleteUpload(id);
        this.uploads.delete(id);
        await fs.rm(this.layout.uploadPath(id), { force: true });
        purged++;
      }
    }
    for (const name of await readdirSafe(this.layout.uploadsDir)) {
      // Re-checked now, not against the snapshot: an upload started while this purge
      // awaited has a row (inserted before its file) but is not in `rows`.
      if (!rows.has(name) && !this.index.getUpload(name)) {
        await fs.rm(join(this.layout.uploadsDir, name), { force: true, recursive: true });
      }
    }
    return purged;
  }

  // ---------------------------------------------------------------- blobs

  /** Size of a blob as visible in `repo`, or undefined if not linked there. */
  blobSize(repo: string, digest: string): number | undefined {
    return this.index.linkedBlobSize(repo, digest);
  }

  blobPath(digest: string): string {
    return this.layout.blobPath(digest);
  }

  /**
   * Streams `source` into the store and links it into `repo`. With `expected`, the
   * content must hash to it (DIGEST_INVALID otherwise) and nothing is stored on mismatch.
   */
  async writeBlob(repo: string, source: Readable | Buffer, expected?: string): Promise<{ digest: string; size: number }> {
    const alg = expected ? algorithmOf(expected) : 'sha256';
    const tmp = join(this.layout.tmpDir, randomUUID());
    try {
      const d = new Digester(createHash(alg), alg);
      const src = Buffer.isBuffer(source) ? Readable.from([source]) : source;
      await pipeline(src, d, createWriteStream(tmp, { highWaterMark: WRITE_BUFFER }));
      const digest = d.digest();
      if (expected && digest !== expected) {
        throw new RegistryError('DIGEST_INVALID', 'provided digest did not match uploaded content', { expected, actual: digest });
      }
      await this.commitFile(repo, tmp, digest, d.bytes);
      return { digest, size: d.bytes };
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  /**
   * Moves a fully written, already-digested file into the store (the caller vouches for
   * `digest`) and links it into `repo`. The file is consumed either way.
   */
  async commitFile(repo: string, file: string, digest: string, size: number): Promise<void> {
    await this.locks.run(digest, async () => {
      if (this.index.blobSize(digest) === undefined) {
        await this.place(file, digest);
        this.index.addBlob(repo, digest, size);
      } else {
        this.index.linkBlob(repo, digest);
        await fs.rm(file, { force: true });
      }
    });
    this.bump(repo);
  }

  /**
   * The durable half of every blob write: fsync the finished file, rename it to its blob
   * path, fsync the directory. Callers hold the digest's lock and add the index row after.
   */
  private async place(file: string, digest: string): Promise<string> {
    const fh = await fs.open(file, 'r+');
    try { await fh.sync(); } finally { await fh.close(); }
    const dest = this.layout.blobPath(digest);
    await ensureDir(dirname(dest));
    await fs.rename(file, dest);
    await fsyncDir(dirname(dest));
    return dest;
  }

  /** Cross-repository mount: links `digest` into `repo` if `from` can see it. */
  mountBlob(repo: string, from: string, digest: string): number | undefined {
    const size = this.index.linkedBlobSize(from, digest);
    if (size === undefined) return undefined;
    // The blob may have been dropped since the lookup (a delete finishing its unlink).
    if (!this.index.linkBlob(repo, digest)) return undefined;
    this.bump(repo);
    return size;
  }

  async deleteBlob(repo: string, digest: string): Promise<boolean> {
    const removed = await this.locks.run(digest, async () => {
      const { removed, orphaned } = this.index.unlinkBlob(repo, digest);
      if (orphaned) await fs.rm(this.layout.blobPath(digest), { force: true });
      return removed;
    });
    this.bump(repo);
    return removed;
  }

  // ---------------------------------------------------------------- uploads

  startUpload(repo: string): string {
    const id = randomUUID();
    this.index.createUpload(id, repo);
    // Created synchronously so that a status request right after POST finds it.
    closeSync(openSync(this.layout.uploadPath(id), 'wx'));
    this.uploads.set(id, { hash: createHash('sha256'), offset: 0, busy: false });
    return id;
  }

  /** Current size of an upload of `repo`, or BLOB_UPLOAD_UNKNOWN. */
  async uploadOffset(repo: string, id: string): Promise<number> {
    return (await this.uploadState(repo, id)).offset;
  }

  /**
   * Appends a chunk. `start`, when given (Content-Range), must equal the current size:
   * anything else is an out-of-order or repeated chunk, answered with RANGE_INVALID (416).
   */
  async appendUpload(repo: string, id: string, source: Readable, start?: number, length?: number): Promise<number> {
    const st = await this.uploadState(repo, id);
    if (st.busy) throw new RegistryError('RANGE_INVALID', 'another chunk of this upload is in progress', { offset: st.offset });
    if (start !== undefined && start !== st.offset) {
      throw new RegistryError('RANGE_INVALID', `chunk starts at ${start}, but the upload has ${st.offset} bytes`, { offset: st.offset });
    }
    st.busy = true;
    try {
      const hash = st.hash;
      const counter = new Digester(hash ?? createHash('sha256'));
      try {
        await pipeline(source, counter, createWriteStream(this.layout.uploadPath(id), { flags: 'a', highWaterMark: WRITE_BUFFER }));
      } catch (err) {
        // The file may hold part of the chunk: the file is the truth from here on.
        st.hash = null;
        st.offset = (await fs.stat(this.layout.uploadPath(id))).size;
        throw err;
      }
      st.offset += counter.bytes;
      if (length !== undefined && counter.bytes !== length) {
        st.hash = null;
        throw new RegistryError('SIZE_INVALID', `chunk has ${counter.bytes} bytes, Content-Length said ${length}`);
      }
      this.index.touchUpload(id);
      return st.offset;
    } finally {
      st.busy = false;
    }
  }

  /** Verifies the whole upload against `digest` and moves it into the store. */
  async finishUpload(repo: string, id: string, digest: string): Promise<number> {
    const st = await this.uploadState(repo, id);
    if (st.busy) throw new RegistryError('RANGE_INVALID', 'a chunk of this upload is still in progress', { offset: st.offset });
    st.busy = true;
    const path = this.layout.uploadPath(id);
    try {
      const alg = algorithmOf(digest);
      let actual: string;
      if (alg === 'sha256' && st.hash) actual = `sha256:${st.hash.copy().digest('hex')}`;
      else actual = await digestFile(path, alg);
      if (actual !== digest) {
        throw new RegistryError('DIGEST_INVALID', 'provided digest did not match uploaded content', { expected: digest, actual });
      }
      const size = (await fs.stat(path)).size;
      await this.commitFile(repo, path, digest, size);
      this.index.deleteUpload(id);
      this.uploads.delete(id);
      return size;
    } catch (err) {
      // A failed finish ends the session (as in Distribution): the client starts over.
      await this.cancelUpload(repo, id).catch(() => {});
      throw err;
    } finally {
      st.busy = false;
    }
  }

  async cancelUpload(repo: string, id: string): Promise<void> {
    const row = this.index.getUpload(id);
    if (!row || row.repo !== repo) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', 'upload unknown', { id });
    this.index.deleteUpload(id);
    this.uploads.delete(id);
    await fs.rm(this.layout.uploadPath(id), { force: true });
  }

  private async uploadState(repo: string, id: string): Promise<UploadState> {
    const row = this.index.getUpload(id);
    if (!row || row.repo !== repo) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', 'upload unknown', { id });
    let st = this.uploads.get(id);
    if (!st) {
      // After a restart: resume from what is on disk; the hash is recomputed at the end.
      let offset: number;
      try { offset = (await fs.stat(this.layout.uploadPath(id))).size; } catch {
        this.index.deleteUpload(id);
        throw new RegistryError('BLOB_UPLOAD_UNKNOWN', 'upload unknown', { id });
      }
      // A concurrent request may have set the state while this one awaited stat.
      st = this.uploads.get(id);
      if (!st) {
        st = { hash: null, offset, busy: false };
        this.uploads.set(id, st);
      }
    }
    return st;
  }

  // ---------------------------------------------------------------- manifests and tags

  /** Resolves a tag or digest in `repo` to a descriptor, through the per-repo cache. */
  resolveManifest(repo: string, ref: { tag?: string | undefined; digest?: string | undefined }): ManifestDescriptor | undefined {
    const key = `${repo}\0${this.generations.get(repo) ?? 0}\0${ref.tag ?? ref.digest}`;
    const hit = this.refCache.get(key);
    if (hit) return hit;
    const digest = ref.digest ?? this.index.resolveTag(repo, ref.tag!);
    if (!digest) return undefined;
    const row = this.index.getManifest(repo, digest);
    if (!row) return undefined;
    const d = { digest: row.digest, mediaType: row.media_type, size: row.size };
    this.refCache.set(key, d);
    return d;
  }

  async readManifest(d: ManifestDescriptor): Promise<Buffer> {
    const hit = this.bodyCache.get(d.digest);
    if (hit) return hit;
    const body = await fs.readFile(this.layout.blobPath(d.digest));
    this.bodyCache.set(d.digest, body);
    return body;
  }

  /**
   * Stores a manifest body byte for byte and records it. `blobs` and `manifests` are
   * what it references; each must already be visible in `repo`.
   */
  async putManifest(
    repo: string,
    body: Buffer,
    info: Omit<NewManifest, 'digest' | 'size'> & { blobs: string[]; manifests: string[] },
    tag?: string,
    digest = digestOf(body),
  ): Promise<ManifestDescriptor> {
    const checkReferences = () => {
      const missing = [
        ...info.blobs.filter((b) => this.index.linkedBlobSize(repo, b) === undefined),
        ...info.manifests.filter((m) => !this.index.getManifest(repo, m)),
      ];
      if (missing.length) {
        throw new RegistryError('MANIFEST_BLOB_UNKNOWN', `manifest references unknown blobs: ${missing.slice(0, 5).join(', ')}`,
          { missing: missing.slice(0, 50) });
      }
    };
    // Checked once up front (so a bad push writes nothing) and again in the same
    // synchronous step as the index insert, so a concurrent delete cannot slip between.
    checkReferences();
    await this.locks.run(digest, async () => {
      const fresh = this.index.blobSize(digest) === undefined;
      const dest = this.layout.blobPath(digest);
      if (fresh) {
        const tmp = join(this.layout.tmpDir, randomUUID());
        try {
          await fs.writeFile(tmp, body);
          await this.place(tmp, digest);
        } finally {
          await fs.rm(tmp, { force: true });
        }
      }
      try {
        checkReferences();
      } catch (err) {
        // Nothing records the file just written: take it back rather than leave an orphan.
        if (fresh) await fs.rm(dest, { force: true });
        throw err;
      }
      this.index.putManifest(repo, { ...info, digest, size: body.length }, tag);
    });
    this.bodyCache.set(digest, body);
    this.bump(repo);
    return { digest, mediaType: info.mediaType, size: body.length };
  }

  async deleteManifest(repo: string, digest: string): Promise<boolean> {
    const deleted = await this.locks.run(digest, async () => {
      const r = this.index.deleteManifest(repo, digest);
      if (r.orphaned) await fs.rm(this.layout.blobPath(digest), { force: true });
      return r.deleted;
    });
    this.bump(repo);
    return deleted;
  }

  tag(repo: string, tag: string, digest: string): void {
    this.index.putTag(repo, tag, digest);
    this.bump(repo);
  }

  deleteTag(repo: string, tag: string): boolean {
    const r = this.index.deleteTag(repo, tag);
    this.bump(repo);
    return r;
  }

  listTags(repo: string, last: string, n: number): string[] | undefined {
    return this.index.listTags(repo, last, n);
  }

  catalog(last: string, n: number): string[] {
    return this.index.listRepos(last, n);
  }

  referrers(repo: string, subject: string): ManifestRow[] {
    return this.index.referrers(repo, subject);
  }

  repositoryExists(repo: string): boolean {
    return this.index.repoId(repo) !== undefined;
  }

  private bump(repo: string): void {
    this.generations.set(repo, (this.generations.get(repo) ?? 0) + 1);
  }
}

async function readdirSafe(dir: string): Promise<string[]> {
  try { return await fs.readdir(dir); } catch { return []; }
}

/**
 * mkdir -p that also makes the new directory entries durable: a renamed blob is only
 * as durable as the chain of directories that leads to it.
 */
async function ensureDir(dir: string): Promise<void> {
  const first = await fs.mkdir(dir, { recursive: true });
  if (first === undefined) return;
  for (let d = dir; ; d = dirname(d)) {
    await fsyncDir(dirname(d));
    if (d === first) break;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}
