// The HTTP API's own input grammar: upload ids and the listing parameters. Names, tags
// and digests are the OCI model's (src/oci/reference.ts, src/oci/digest.ts).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { MAX_NAME_LENGTH } from '../oci/reference.js';
import { RegistryError } from './errors.js';

const UPLOAD_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
export const MAX_PAGE = 10_000;

export function isUploadId(s: string): boolean {
  return UPLOAD_ID_RE.test(s);
}

/** `n` and `last` of the listing endpoints. */
export function parsePage(query: Record<string, unknown>): { n: number | undefined; last: string | undefined } {
  const rawN = query.n;
  const rawLast = query.last;
  let n: number | undefined;
  if (rawN !== undefined) {
    if (typeof rawN !== 'string' || !/^\d{1,9}$/.test(rawN)) {
      throw new RegistryError('PAGINATION_NUMBER_INVALID', 'n must be a non-negative integer', { n: String(rawN).slice(0, 50) });
    }
    n = Math.min(Number(rawN), MAX_PAGE);
  }
  let last: string | undefined;
  if (rawLast !== undefined) {
    if (typeof rawLast !== 'string' || rawLast.length > MAX_NAME_LENGTH) {
      throw new RegistryError('PAGINATION_NUMBER_INVALID', 'invalid last parameter');
    }
    last = rawLast;
  }
  return { n, last };
}
