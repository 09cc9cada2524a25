// Validation of pushed manifests: what type a body is, and what it references.
// Bodies are never rewritten; this only reads them.
import { RegistryError } from './errors.js';
import { isDigest } from './grammar.js';

export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
} as const;

const IMAGE_TYPES = new Set<string>([MediaTypes.ociManifest, MediaTypes.dockerManifest]);
const INDEX_TYPES = new Set<string>([MediaTypes.ociIndex, MediaTypes.dockerList]);
export const MANIFEST_TYPES: readonly string[] = [...IMAGE_TYPES, ...INDEX_TYPES];
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface ParsedManifest {
  mediaType: string;
  /** Blobs (config and layers) that must be present in the repository. */
  blobs: string[];
  /** Child manifests (of an index) that must be present in the repository. */
  manifests: string[];
  subject?: string | undefined;
  artifactType?: string | undefined;
  annotations?: Record<string, string> | undefined;
}

interface Descriptor {
  mediaType?: unknown;
  digest?: unknown;
  size?: unknown;
  urls?: unknown;
}

function invalid(message: string): never {
  throw new RegistryError('MANIFEST_INVALID', message);
}

function descriptor(d: unknown, where: string): { digest: string; mediaType: string; urls: boolean } {
  if (typeof d !== 'object' || d === null || Array.isArray(d)) invalid(`${where} is not a descriptor`);
  const { mediaType, digest, size, urls } = d as Descriptor;
  if (typeof mediaType !== 'string' || mediaType === '') invalid(`${where}.mediaType is missing`);
  if (typeof digest !== 'string' || !isDigest(digest)) invalid(`${where}.digest is not a valid digest`);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) invalid(`${where}.size is not a non-negative integer`);
  return { digest, mediaType, urls: Array.isArray(urls) && urls.length > 0 };
}

/** Strips parameters and case from a Content-Type header value. */
export function bareType(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}

export function parseManifest(body: Buffer, contentType: string | undefined): ParsedManifest {
  let json: Record<string, unknown>;
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    if (typeof v !== 'object' || v === null || Array.isArray(v)) invalid('manifest is not a JSON object');
    json = v as Record<string, unknown>;
  } catch (e) {
    if (e instanceof RegistryError) throw e;
    invalid(`manifest is not valid JSON: ${(e as Error).message}`);
  }
  if (json.schemaVersion !== 2) invalid('schemaVersion must be 2');

  const header = bareType(contentType);
  const declared = json.mediaType;
  if (declared !== undefined && typeof declared !== 'string') invalid('mediaType must be a string');
  const isImage = 'config' in json || 'layers' in json;
  const isIndex = 'manifests' in json;
  if (isImage && isIndex) invalid('a manifest cannot be both an image manifest and an index');

  let mediaType: string;
  if (declared !== undefined) {
    if (header && MANIFEST_TYPES.includes(header) && header !== declared) {
      invalid(`mediaType ${declared} disagrees with Content-Type ${header}`);
    }
    mediaType = declared;
  } else if (header && MANIFEST_TYPES.includes(header)) {
    mediaType = header;
  } else {
    mediaType = isIndex ? MediaTypes.ociIndex : MediaTypes.ociManifest;
  }
  if (!MANIFEST_TYPES.includes(mediaType)) invalid(`unsupported manifest media type ${mediaType}`);
  if (IMAGE_TYPES.has(mediaType) && isIndex) invalid(`${mediaType} must not have manifests`);
  if (INDEX_TYPES.has(mediaType) && isImage) invalid(`${mediaType} must not have config or layers`);

  const blobs: string[] = [];
  const manifests: string[] = [];
  let artifactType = typeof json.artifactType === 'string' ? json.artifactType : undefined;
  if (json.artifactType !== undefined && typeof json.artifactType !== 'string') invalid('artifactType must be a string');

  if (IMAGE_TYPES.has(mediaType)) {
    const config = descriptor(json.config, 'config');
    blobs.push(config.digest);
    if (!Array.isArray(json.layers)) invalid('layers must be an array');
    json.layers.forEach((l, i) => {
      const d = descriptor(l, `layers[${i}]`);
      // Foreign (non-distributable) layers live elsewhere; Distribution accepts them too.
      if (!d.urls) blobs.push(d.digest);
    });
    artifactType ??= config.mediaType;
  } else {
    if (!Array.isArray(json.manifests)) invalid('manifests must be an array');
    json.manifests.forEach((m, i) => manifests.push(descriptor(m, `manifests[${i}]`).digest));
  }

  let subject: string | undefined;
  if (json.subject !== undefined) subject = descriptor(json.subject, 'subject').digest;

  let annotations: Record<string, string> | undefined;
  if (json.annotations !== undefined) {
    const a = json.annotations;
    if (typeof a !== 'object' || a === null || Array.isArray(a) || Object.values(a).some((v) => typeof v !== 'string')) {
      invalid('annotations must be a map of strings');
    }
    annotations = a as Record<string, string>;
  }
  return { mediaType, blobs: [...new Set(blobs)], manifests: [...new Set(manifests)], subject, artifactType, annotations };
}

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
