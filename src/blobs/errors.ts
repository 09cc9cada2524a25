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

/** A body whose length differs from what the client declared for it. */
export class SizeMismatch extends StorageError {
  constructor(message: string) { super(message); }
  get detail() { return {}; }
}
