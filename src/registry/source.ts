// The seam between the HTTP API and build-on-pull. A repository that an ImageSource
// owns is read-only: its manifests come from the source (which writes them into the
// blob store), and pushes to it are DENIED. Every other repository is plain storage.
import type { ManifestDescriptor } from '../blobs/storage.js';

export interface ImageSource {
  /** Whether `repo` is backed by an expression (and so read-only). */
  owns(repo: string): boolean;
  /**
   * Produces (building if needed) the manifest for `ref` in `repo`, already stored and
   * recorded in the blob store. `accepts` tells which manifest media types the client
   * takes. Throws RegistryError for what the user must see (evaluation or build errors).
   * Returns undefined to fall through to plain storage.
   */
  resolve(
    repo: string,
    ref: { tag?: string | undefined; digest?: string | undefined },
    accepts: (mediaType: string) => boolean,
  ): Promise<ManifestDescriptor | undefined>;
  /** Tags `repo` always answers, built or not (listed by tags/list before any build). */
  standingTags?(repo: string): string[];
  /** Extra routes (build logs and the like), mounted beside the distribution API. */
  routes?(): import('express').Router;
}
