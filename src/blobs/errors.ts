// What storage refuses, in storage's own terms. Each error carries the facts a caller
// needs (offsets, digests); src/registry/errors.ts alone turns them into OCI answers.
//
// Room: blobs. May import src/oci; never src/build or src/registry.

export abstract class StorageError extends Error {
  /** Facts for the client, shown as the OCI error's `detail`. */
  abstract readonly detail: Record<string, unknown>;
}

/** Content hashed to something other than the digest it was stored under. */
export class DigestMismatch extends StorageError {
  constructor(readonly expected: string, readonly actual: string) {
    super('provided digest did not match uploaded content');
  }
  get detail() { return { expected: this.expected, actual: this.actual }; }
}

/** A manifest names blobs or child manifests the repository does not have. */
export class MissingReferences extends StorageError {
  constructor(readonly missing: string[]) {
    super(`manifest references unknown blobs: ${missing.slice(0, 5).join(', ')}`);
  }
  get detail() { return { missing: this.missing.slice(0, 50) }; }
}

/** No upload session of that id in that repository (never was, finished, or purged). */
export class UploadUnknown extends StorageError {
  constructor(readonly id: string) { super('upload unknown'); }
  get detail() { return { id: this.id }; }
}

/**
 * A chunk that does not continue the upload where it stands, or arrives while another
 * one is being written. `offset` is where the upload stands, so the client can resume.
 */
export class UploadOutOfOrder extends StorageError {
  constructor(message: string, readonly offset: number) { super(message); }
  get detail() { return { offset: this.offset }; }
}

/** Too many unfinished uploads to start another: `open` counts them, `limits` bound them. */
export class TooManyUploads extends StorageError {
  constructor(readonly open: { repo: number; client: number; total: number }, readonly limits: { repo: number; client: number; total: number }) {
    super('too many unfinished uploads');
  }
  get detail() { return {}; }
}

/** A body whose length differs from what the client declared for it. */
export class SizeMismatch extends StorageError {
  constructor(message: string) { super(message); }
  get detail() { return {}; }
}

/**
 * A blob or upload larger than the store can hold as one object: S3 allows 10,000 parts
 * per multipart upload. The client's input, not a failure: answered 413 so that it says
 * what is wrong instead of a 500. What reached the store before stays recorded.
 */
export class BlobTooLarge extends StorageError {
  constructor(readonly limit: number, readonly offset: number) {
    super(`a blob in this registry's storage may have at most ${limit} bytes`);
  }
  get detail() { return { limit: this.limit, offset: this.offset }; }
}

/**
 * The disk, or the index on it, has no room left (ENOSPC, EDQUOT, SQLITE_FULL). Neither
 * the client's fault nor a bug, and not for long: an operator or a collection may free
 * space any moment, so nothing remembers it. Whatever the failed write had made is
 * removed before this is thrown. `what` completes "no space left to …".
 */
export class StorageFull extends StorageError {
  constructor(what: string, readonly reason: string) {
    super(`the registry's storage is full: no space left to ${what}`);
  }
  get detail() { return { reason: this.reason }; }
}

/**
 * The blob store cannot be reached or did not answer in time (S3 down, paused or slow):
 * not the client's fault, and not for long. Nothing was half-written: every write is
 * staged first and published only once complete.
 */
export class StorageUnavailable extends StorageError {
  readonly retryAfterSeconds = 10;
  constructor(readonly store: string, readonly reason: string) {
    super(`the registry's blob storage (${store}) is unavailable: ${reason}; retry later`);
  }
  get detail() { return { reason: this.reason }; }
}

/**
 * The index's database (PostgreSQL) cannot be reached, did not answer in time (down,
 * paused, overloaded), or every pooled connection stayed busy past the wait: not the
 * client's fault, and not for long. The transaction that met it was rolled back whole
 * (or never began), so nothing was half-written. `database` names the server, never its
 * credentials.
 */
export class IndexUnavailable extends StorageError {
  readonly retryAfterSeconds = 5;
  constructor(readonly database: string, readonly reason: string) {
    super(`the registry's index (${database}) is unavailable: ${reason}; retry later`);
  }
  get detail() { return { reason: this.reason }; }
}

/**
 * Another process sharing the index (a replica over PostgreSQL) is collecting garbage or
 * evicting from the cache now: one at a time among them all, and this one's turn comes.
 */
export class CollectionRunning extends StorageError {
  readonly retryAfterSeconds = 60;
  constructor() { super('another replica is collecting garbage now; retry later'); }
  get detail() { return {}; }
}

/**
 * A blob the store does not hold (deleted between the index lookup and the read). Its
 * `code` is ENOENT whatever the store, so callers treat it as a file that is gone.
 */
export class BlobMissing extends Error {
  readonly code = 'ENOENT';
  constructor(readonly digest: string) { super(`blob ${digest} is not in the store`); }
}

/**
 * Error codes that mean "no space": errnos, and SQLite's own (better-sqlite3 puts them in
 * `code`). SQLite reports a write's ENOSPC as SQLITE_FULL, and the WAL index (-shm) it
 * could not grow as SQLITE_IOERR_SHMSIZE; PostgreSQL its disk_full as SQLSTATE 53100
 * (pg puts it in `code`).
 */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL', 'SQLITE_IOERR_SHMSIZE', '53100']);

/**
 * The code by which `err`, or an error it wraps as its `cause`, says that there is no
 * space left; undefined when it says something else.
 */
export function noSpaceCode(err: unknown): string | undefined {
  let e = err;
  for (let depth = 0; depth < 5 && typeof e === 'object' && e !== null; depth++) {
    if (e instanceof StorageFull) return e.reason;
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && NO_SPACE.has(code)) return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}
