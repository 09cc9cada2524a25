// The one error table of the HTTP API: the status each OCI code is answered with, and
// the code each domain error of the layers below is answered with. Codes and statuses
// follow the OCI distribution-spec (and Distribution where the spec leaves a status
// open), so clients that switch on `code` behave exactly as they do against other
// registries.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import {
  BlobTooLarge, CollectionRunning, DigestMismatch, IndexUnavailable, MissingReferences, SizeMismatch, StorageFull, StorageUnavailable, UploadOutOfOrder, UploadUnknown, noSpaceCode,
} from '../blobs/errors.js';
import {
  ArchiveError, BuildFailed, BuildQueueFull, EvaluationFailed, InvalidImageSpec, NixUnavailable, NoImageExpression, StillBuilding,
  TagNotServed,
} from '../build/errors.js';
import { OCI_ERROR_CODES, OciError, type OciErrorCode } from '../oci/errors.js';
import { UpstreamError } from './mirror/upstream.js';

export type ErrorCode = OciErrorCode;

const STATUS: Record<ErrorCode, number> = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 404,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  TAG_INVALID: 400,
  MANIFEST_TOO_LARGE: 413,
  RANGE_INVALID: 416,
  PAGINATION_NUMBER_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  UNAVAILABLE: 503,
  INTERNAL: 500,
};

type ErrorClass = abstract new (...args: never[]) => Error & { detail: unknown };

/**
 * Domain errors of storage and the builder, and the code each is answered with (and
 * the status, where it is not the code's own). Every failure of an image to evaluate,
 * build or ingest is MANIFEST_UNKNOWN (404), not a 5xx: Docker clients print the
 * message of a 4xx answer but only the status line of a 5xx, and the message is what
 * tells the user what to fix. A full disk is the exception: it is no verdict on the
 * push or the image but a state of the server that may pass any moment, and 507
 * Insufficient Storage (RFC 4918) says exactly that even where only the status line
 * is shown. A blob store (S3) or an index database (PostgreSQL) that does not answer is
 * 503 with a Retry-After: the same request may work in a moment. A pull that waited --pull-wait for a build still running
 * is 429 with a Retry-After: containerd (so kubelet) retries it, and docker prints its message.
 * A blob over what the store can hold as one object (S3's 10,000 parts) is 413 Payload
 * Too Large with BLOB_UPLOAD_INVALID, the code Distribution gives a refused upload.
 */
const DOMAIN: [ErrorClass, ErrorCode, number?][] = [
  [StorageFull, 'UNAVAILABLE', 507],
  [StorageUnavailable, 'UNAVAILABLE', 503],
  [IndexUnavailable, 'UNAVAILABLE', 503],
  [CollectionRunning, 'UNAVAILABLE', 503],
  [DigestMismatch, 'DIGEST_INVALID'],
  [MissingReferences, 'MANIFEST_BLOB_UNKNOWN'],
  [UploadUnknown, 'BLOB_UPLOAD_UNKNOWN'],
  [UploadOutOfOrder, 'RANGE_INVALID'],
  [SizeMismatch, 'SIZE_INVALID'],
  [BlobTooLarge, 'BLOB_UPLOAD_INVALID', 413],
  [NoImageExpression, 'NAME_UNKNOWN'],
  [EvaluationFailed, 'MANIFEST_UNKNOWN'],
  [InvalidImageSpec, 'MANIFEST_UNKNOWN'],
  [TagNotServed, 'MANIFEST_UNKNOWN'],
  [BuildFailed, 'MANIFEST_UNKNOWN'],
  [ArchiveError, 'MANIFEST_UNKNOWN'],
  [NixUnavailable, 'MANIFEST_UNKNOWN'],
  [StillBuilding, 'TOOMANYREQUESTS'],
  [BuildQueueFull, 'TOOMANYREQUESTS'],
];

/** An error that the HTTP layer turns into `{"errors":[{code,message,detail}]}`. */
export class RegistryError extends Error {
  readonly status: number;
  /** Headers the answer carries besides the body (a challenge, a Retry-After). */
  readonly headers: Record<string, string> = {};
  constructor(
    readonly code: ErrorCode,
    message?: string,
    readonly detail?: unknown,
    status?: number,
  ) {
    super(message ?? OCI_ERROR_CODES[code]);
    this.status = status ?? STATUS[code];
  }

  toJSON() {
    return { errors: [{ code: this.code, message: this.message, detail: this.detail ?? {} }] };
  }
}

/**
 * The OCI answer to an error from anywhere below the HTTP layer, or undefined when it
 * is none of ours (a bug or an I/O failure: the caller answers INTERNAL).
 */
export function registryErrorOf(err: unknown): RegistryError | undefined {
  if (err instanceof RegistryError) return err;
  if (err instanceof OciError) return new RegistryError(err.code, err.message, err.detail);
  if (err instanceof UpstreamError) return upstreamFailure(err);
  for (const [cls, code, status] of DOMAIN) {
    if (!(err instanceof cls)) continue;
    const e = new RegistryError(code, err.message, err.detail, status);
    const retry = (err as { retryAfterSeconds?: unknown }).retryAfterSeconds;
    if (typeof retry === 'number') e.headers['Retry-After'] = String(retry);
    return e;
  }
  // A write that storage did not expect to fail this way: still the full disk it is.
  const reason = noSpaceCode(err);
  if (reason !== undefined) {
    const full = new StorageFull('complete this request', reason);
    return new RegistryError('UNAVAILABLE', full.message, full.detail, 507);
  }
  return undefined;
}

/**
 * The answer to a client when the upstream failed it: 429 (with the upstream's
 * Retry-After) when the upstream limits us, 504 when it was too slow, 502 otherwise;
 * the message names the upstream and its answer, never the credentials.
 */
function upstreamFailure(err: UpstreamError): RegistryError {
  if (err.answer === 429) {
    const e = new RegistryError('TOOMANYREQUESTS', err.message, { upstream: err.upstream, status: 429 });
    if (err.retryAfter && /^\d{1,6}$/.test(err.retryAfter)) e.headers['Retry-After'] = err.retryAfter;
    return e;
  }
  return new RegistryError('UNAVAILABLE', err.message, { upstream: err.upstream, ...(typeof err.answer === 'number' ? { status: err.answer } : { failure: err.answer }) },
    err.answer === 'timeout' ? 504 : 502);
}
