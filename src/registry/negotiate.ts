// Manifest content negotiation and the manifest size limit: HTTP's half of serving and
// accepting manifests (their validation is src/oci/manifest.ts).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { bareType } from '../oci/media-types.js';

/** Pushed manifests larger than this are refused (413); containerd refuses ~4 MiB too. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * Whether a client's Accept header admits `mediaType`. No Accept header, or a wildcard,
 * admits everything; Docker schema2 clients that list only Docker types do not get OCI.
 */
export function accepts(acceptHeader: string | undefined, mediaType: string): boolean {
  if (!acceptHeader) return true;
  for (const part of acceptHeader.split(',')) {
    // "q=0" means "not acceptable" (RFC 9110 §12.4.2).
    if (/;\s*q\s*=\s*0(?:\.0{0,3})?\s*(?:;|$)/i.test(part)) continue;
    const t = bareType(part);
    if (t === mediaType || t === '*/*' || t === 'application/*') return true;
  }
  return false;
}
