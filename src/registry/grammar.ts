// Input grammar from the OCI distribution-spec. Everything that arrives in a URL or
// query string is checked here before it can reach the disk or the database.
import { RegistryError } from './errors.js';

const NAME_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const UPLOAD_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
export const MAX_NAME_LENGTH = 255;
export const MAX_PAGE = 10_000;

/** Digest algorithms we can verify, with the exact encoded form each must have. */
export const DIGEST_ALGORITHMS = {
  sha256: /^[a-f0-9]{64}$/,
  sha512: /^[a-f0-9]{128}$/,
} as const;
export type DigestAlgorithm = keyof typeof DIGEST_ALGORITHMS;
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export function isName(s: string): boolean {
  return s.length <= MAX_NAME_LENGTH && NAME_RE.test(s);
}
export function isTag(s: string): boolean {
  return TAG_RE.test(s);
}
export function isUploadId(s: string): boolean {
  return UPLOAD_ID_RE.test(s);
}

export function parseDigest(s: string): { algorithm: DigestAlgorithm; hex: string } | null {
  if (!DIGEST_RE.test(s)) return null;
  const i = s.indexOf(':');
  const algorithm = s.slice(0, i);
  const hex = s.slice(i + 1);
  if (!(algorithm in DIGEST_ALGORITHMS)) return null;
  if (!DIGEST_ALGORITHMS[algorithm as DigestAlgorithm].test(hex)) return null;
  return { algorithm: algorithm as DigestAlgorithm, hex };
}
export function isDigest(s: string): boolean {
  return parseDigest(s) !== null;
}

export function checkName(s: string): string {
  if (!isName(s)) throw new RegistryError('NAME_INVALID', `invalid repository name: ${s.slice(0, 300)}`);
  return s;
}
export function checkDigest(s: string, code: 'DIGEST_INVALID' | 'BLOB_UNKNOWN' = 'DIGEST_INVALID'): string {
  if (!isDigest(s)) throw new RegistryError(code, `invalid digest: ${s.slice(0, 200)}`);
  return s;
}
/** A manifest reference is a tag or a digest. */
export function checkReference(s: string): { tag?: string; digest?: string } {
  if (isTag(s)) return { tag: s };
  if (isDigest(s)) return { digest: s };
  if (s.includes(':')) throw new RegistryError('DIGEST_INVALID', `invalid digest: ${s.slice(0, 200)}`);
  throw new RegistryError('TAG_INVALID', `invalid tag: ${s.slice(0, 200)}`);
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
