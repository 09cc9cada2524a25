// Manifest and index validation (image-spec manifest.md, image-index.md and the Docker
// schema2 equivalents): what type a body is and what it references. Bodies are never
// rewritten; this only reads them. Used for pushed manifests, for manifests nixreg
// writes itself, and for the ones it ingests from image archives alike.
//
// Room: oci, the model the other rooms share. Imports nothing of nixreg's; knows neither HTTP, SQLite nor Nix.
import { isDigest } from './digest.js';
import { OciError } from './errors.js';
import { parseJson } from './json.js';
import { IMAGE_TYPES, INDEX_TYPES, MANIFEST_TYPES, MediaTypes, bareType } from './media-types.js';

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

interface RawDescriptor {
  mediaType?: unknown;
  digest?: unknown;
  size?: unknown;
  urls?: unknown;
}

function invalid(message: string): never {
  throw new OciError('MANIFEST_INVALID', message);
}

function descriptor(d: unknown, where: string): { digest: string; mediaType: string; urls: boolean } {
  if (typeof d !== 'object' || d === null || Array.isArray(d)) invalid(`${where} is not a descriptor`);
  const { mediaType, digest, size, urls } = d as RawDescriptor;
  if (typeof mediaType !== 'string' || mediaType === '') invalid(`${where}.mediaType is missing`);
  if (typeof digest !== 'string' || !isDigest(digest)) invalid(`${where}.digest is not a valid digest`);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) invalid(`${where}.size is not a non-negative integer`);
  return { digest, mediaType, urls: Array.isArray(urls) && urls.length > 0 };
}

/**
 * Validates a manifest or index body. `contentType` is the type it was pushed (or
 * described) with; a body that declares its own mediaType must agree with it.
 */
export function parseManifest(body: Buffer, contentType: string | undefined): ParsedManifest {
  let json: Record<string, unknown>;
  try {
    const v = parseJson(body);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) invalid('manifest is not a JSON object');
    json = v as Record<string, unknown>;
  } catch (e) {
    if (e instanceof OciError) throw e;
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
