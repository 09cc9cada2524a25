// Shared shapes of the build pipeline (request → resolve → evaluate → realise → layer → store → serve).
import type { ManifestDescriptor } from '../blobs/storage.js';

/** What a finished build leaves in the blob store for one image. */
export interface BuiltImage {
  /** The image tag: the 32-character Nix base32 hash part of the image's store path. */
  hash: string;
  /** The OCI manifest (or, for ingested Docker archives, the Docker schema2 manifest). */
  manifest: ManifestDescriptor;
  /** A second encoding of the same image for clients that do not accept the first, if any. */
  alternate?: ManifestDescriptor | undefined;
}
