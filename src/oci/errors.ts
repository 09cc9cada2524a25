// The OCI error vocabulary as data: every code a registry answer can carry, with the
// spec's default message. It owns no HTTP status: which status a code is answered with
// is the registry's decision (src/registry/errors.ts).
//
// Room: oci, the model the other rooms share. Imports nothing of nixreg's; knows neither HTTP, SQLite nor Nix.
export const OCI_ERROR_CODES = {
  BLOB_UNKNOWN: 'blob unknown to registry',
  BLOB_UPLOAD_INVALID: 'blob upload invalid',
  BLOB_UPLOAD_UNKNOWN: 'blob upload unknown to registry',
  DIGEST_INVALID: 'provided digest did not match uploaded content',
  MANIFEST_BLOB_UNKNOWN: 'manifest references a manifest or blob unknown to registry',
  MANIFEST_INVALID: 'manifest invalid',
  MANIFEST_UNKNOWN: 'manifest unknown to registry',
  NAME_INVALID: 'invalid repository name',
  NAME_UNKNOWN: 'repository name not known to registry',
  SIZE_INVALID: 'provided length did not match content length',
  TAG_INVALID: 'manifest tag did not match URI',
  UNAUTHORIZED: 'authentication required',
  DENIED: 'requested access to the resource is denied',
  UNSUPPORTED: 'the operation is unsupported',
  TOOMANYREQUESTS: 'too many requests',
  // Not in the distribution-spec's table; Distribution and zot answer with them.
  MANIFEST_TOO_LARGE: 'manifest exceeds the size limit',
  RANGE_INVALID: 'invalid content range',
  PAGINATION_NUMBER_INVALID: 'invalid number of results requested',
  UNAVAILABLE: 'service unavailable',
  INTERNAL: 'internal server error',
} as const;

export type OciErrorCode = keyof typeof OCI_ERROR_CODES;

/**
 * Input that breaks the OCI grammar or the manifest rules, named by the code the spec
 * gives it. Thrown by this layer's validators; the registry picks the status.
 */
export class OciError extends Error {
  constructor(readonly code: OciErrorCode, message?: string, readonly detail?: unknown) {
    super(message ?? OCI_ERROR_CODES[code]);
  }
}
