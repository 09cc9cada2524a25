// The one table of error codes. Codes and statuses follow the OCI distribution-spec
// (and Distribution where the spec leaves a status open), so clients that switch on
// `code` behave exactly as they do against other registries.
export const ErrorCodes = {
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  BLOB_UPLOAD_INVALID: { status: 400, message: 'blob upload invalid' },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: 'blob upload unknown to registry' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_BLOB_UNKNOWN: { status: 404, message: 'manifest references a manifest or blob unknown to registry' },
  MANIFEST_INVALID: { status: 400, message: 'manifest invalid' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown to registry' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  SIZE_INVALID: { status: 400, message: 'provided length did not match content length' },
  TAG_INVALID: { status: 400, message: 'manifest tag did not match URI' },
  MANIFEST_TOO_LARGE: { status: 413, message: 'manifest exceeds the size limit' },
  RANGE_INVALID: { status: 416, message: 'invalid content range' },
  PAGINATION_NUMBER_INVALID: { status: 400, message: 'invalid number of results requested' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { status: 405, message: 'the operation is unsupported' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  BUILD_FAILED: { status: 500, message: 'image build failed' },
  UNAVAILABLE: { status: 503, message: 'service unavailable' },
  INTERNAL: { status: 500, message: 'internal server error' },
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

/** An error that the HTTP layer turns into `{"errors":[{code,message,detail}]}`. */
export class RegistryError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message?: string,
    readonly detail?: unknown,
    status?: number,
  ) {
    super(message ?? ErrorCodes[code].message);
    this.status = status ?? ErrorCodes[code].status;
  }

  toJSON() {
    return { errors: [{ code: this.code, message: this.message, detail: this.detail ?? {} }] };
  }
}
