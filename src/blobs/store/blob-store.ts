// The blob seam: where the bytes of blobs and of unfinished uploads live, behind one
// interface with two implementations, disk.ts (files under <data>, the embedded default)
// and s3.ts (objects in a bucket, content-addressed as <prefix>/blobs/<alg>/<hex>).
//
// A store owns bytes only. What exists and is visible is the index's (a blob without a
// row is an orphan, swept by storage.ts's reconciliation); hashing and digest checks are
// the callers' (files.ts, uploads.ts hash what they hand over and verify it before they
// publish). Writes are therefore two-phase: `write` stages bytes where nobody sees them
// and returns a PendingBlob; the caller checks the digest, then, under the digest's lock
// and only if no row records the blob yet, `publish`es it (or `discard`s it). So no blob
// appears at its final name before its content is verified, and a collection removing
// the same digest (under the same lock) can never interleave with its appearance.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type { Readable } from 'node:stream';

/** Bytes [start, end], both inclusive, as HTTP ranges are. */
export interface ByteRange { start: number; end: number }

/** Bytes staged under a blob's digest, not yet visible. */
export interface PendingBlob {
  readonly size: number;
  /** Makes the blob visible under its digest (durably: disk fsyncs file and directory). */
  publish(): Promise<void>;
  /** Drops what was staged; safe after a failed publish and twice. */
  discard(): Promise<void>;
}

/** A blob found by a listing. */
export interface ListedBlob { digest: string; size: number; modifiedMs: number }

/**
 * Where an upload's bytes stand, as recorded in its index row (JSON): any replica that
 * reads the row can continue it. `offset` is the bytes received; the rest is the
 * implementation's own (S3: the multipart upload's id, its parts and the tail object).
 */
export interface Staged { offset: number; [key: string]: unknown }

/** Unfinished uploads' bytes, by upload id (a UUID the index has a row for). */
export interface UploadStaging {
  /** A new, empty upload. Synchronous: a status request right after the POST must find it. */
  create(id: string): Staged;
  /**
   * Where upload `id` stands, from what its row recorded (undefined: nothing, a row made
   * before staging was recorded). Undefined when its bytes are gone.
   */
  resume(id: string, recorded: Staged | undefined): Promise<Staged | undefined>;
  /**
   * Appends all of `source`. Every state it makes durable is passed to `record` at once,
   * and awaited before going on (the caller writes it to the row), so a chunk that fails part way keeps, and reports,
   * what reached storage; the promise then rejects with the source's error.
   */
  append(id: string, staged: Staged, source: Readable, record: (s: Staged) => void | Promise<void>): Promise<Staged>;
  /** The staged bytes from the start, for a digest check by a process that did not see them all. */
  read(id: string, staged: Staged, record: (s: Staged) => void | Promise<void>): Promise<Readable>;
  /** The staged bytes as blob `digest` (verified by the caller), to publish under its lock. */
  seal(id: string, staged: Staged, digest: string, record: (s: Staged) => void | Promise<void>): Promise<PendingBlob>;
  /** Removes an upload's bytes; with `staged` unknown (an orphan), finds them. Idempotent. */
  remove(id: string, staged: Staged | undefined): Promise<void>;
  /** Ids of uploads with bytes staged, after `after` in order, at most `limit`. */
  list(after: string, limit: number): Promise<string[]>;
}

export interface BlobStore {
  /** What and where, for logs: `disk /var/lib/nixreg/blobs`, `s3://bucket/prefix`. */
  readonly description: string;
  /**
   * Its calls cross a network: listing all of it is slow, and it may be unreachable (its
   * errors are StorageUnavailable). Start-up reconciles such a store in the background.
   */
  readonly remote: boolean;
  /** Stages `source` (all of it) as blob `digest`; see PendingBlob. Memory: bounded, whatever the size. */
  write(digest: string, source: Readable | Buffer): Promise<PendingBlob>;
  /** Stages a finished local file as blob `digest`; publish consumes it (disk renames it). */
  writeFile(digest: string, file: string, size: number): Promise<PendingBlob>;
  /** A whole blob in memory (manifests, configs: small by the callers' bounds). */
  read(digest: string): Promise<Buffer>;
  /** A blob or a byte range of it as a stream; BlobMissing if there is none. */
  open(digest: string, range?: ByteRange): Promise<Readable>;
  /** The size of a stored blob, undefined if there is none. */
  stat(digest: string): Promise<number | undefined>;
  /** Removes a blob; idempotent. */
  delete(digest: string): Promise<void>;
  /** Blobs after digest `after` in digest order, at most `limit` (reconciliation, a page at a time). */
  list(after: string, limit: number): Promise<ListedBlob[]>;
  /** The blob's file, where it has one (sendfile(2) sends it without copying). */
  localPath?(digest: string): string;
  /** A URL that serves the blob to anyone holding it for `seconds` (--s3-redirect). */
  presign?(digest: string, seconds: number, range?: ByteRange): Promise<string>;
  readonly staging: UploadStaging;
  /** Throws StorageUnavailable unless the store answers (readiness). */
  ping(): Promise<void>;
  close(): void;
}

/** `digest` split into what object names and paths are built from, refusing anything else. */
export function digestParts(digest: string): { alg: 'sha256' | 'sha512'; hex: string } {
  const i = digest.indexOf(':');
  const alg = digest.slice(0, i);
  const hex = digest.slice(i + 1);
  if ((alg !== 'sha256' && alg !== 'sha512') || !/^[a-f0-9]+$/.test(hex) || hex.length < 64) {
    throw new Error(`refusing to name a blob by digest ${JSON.stringify(digest)}`);
  }
  return { alg, hex };
}

const UPLOAD_ID = /^[0-9a-f-]{36}$/;
export function checkUploadId(id: string): string {
  if (!UPLOAD_ID.test(id)) throw new Error(`refusing to name an upload by id ${JSON.stringify(id)}`);
  return id;
}
