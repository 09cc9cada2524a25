// Ingestion of image archives (docker-archive, OCI archive, or a streamLayeredImage
// script's output) that a derivation produced. See issue 4.
import type { Storage } from '../blobs/storage.js';
import { RegistryError } from '../registry/errors.js';
import type { BuiltImage } from './types.js';

export interface IngestOptions {
  /** Store path hash part that becomes the image tag. */
  hash: string;
  /** Kills a stream script that runs longer than this. */
  timeoutMs: number;
}

/**
 * Whether a realised output is an image archive (or a script that streams one) rather
 * than a package to be layered.
 */
export async function isImageOutput(_outPath: string): Promise<boolean> {
  return false;
}

/** Streams the archive at (or produced by) `outPath` into `repo`. */
export async function ingestImageOutput(_storage: Storage, _repo: string, _outPath: string, _opts: IngestOptions): Promise<BuiltImage> {
  throw new RegistryError('UNSUPPORTED', 'image archives are not supported yet');
}
