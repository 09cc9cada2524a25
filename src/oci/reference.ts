// The distribution-spec's grammar of repository names, tags and manifest references.
// Everything that names an object is checked here before it can reach the disk, the
// index or Nix.
//
// Room: oci, the model the other rooms share. Imports nothing of nixreg's; knows neither HTTP, SQLite nor Nix.
import { isDigest } from './digest.js';
import { OciError } from './errors.js';

const NAME_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
export const MAX_NAME_LENGTH = 255;

/** A manifest reference: exactly one of the two is set. */
export interface Reference { tag?: string | undefined; digest?: string | undefined }

export function isName(s: string): boolean {
  return s.length <= MAX_NAME_LENGTH && NAME_RE.test(s);
}
export function isTag(s: string): boolean {
  return TAG_RE.test(s);
}

export function checkName(s: string): string {
  if (!isName(s)) throw new OciError('NAME_INVALID', `invalid repository name: ${s.slice(0, 300)}`);
  return s;
}
export function checkDigest(s: string, code: 'DIGEST_INVALID' | 'BLOB_UNKNOWN' = 'DIGEST_INVALID'): string {
  if (!isDigest(s)) throw new OciError(code, `invalid digest: ${s.slice(0, 200)}`);
  return s;
}
/** A manifest reference is a tag or a digest. */
export function checkReference(s: string): { tag?: string; digest?: string } {
  if (isTag(s)) return { tag: s };
  if (isDigest(s)) return { digest: s };
  if (s.includes(':')) throw new OciError('DIGEST_INVALID', `invalid digest: ${s.slice(0, 200)}`);
  throw new OciError('TAG_INVALID', `invalid tag: ${s.slice(0, 200)}`);
}
