// What every handler gets: storage and the image source, and the checks they all make
// on a request's repository.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request } from 'express';
import type { Storage } from '../../blobs/storage.js';
import type { ImageSource } from '../../build/image-source.js';
import { checkName } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';

export interface Ctx {
  storage: Storage;
  source?: ImageSource | undefined;
}

/** The validated repository name of a request. */
export function repoOf(req: Request): string {
  return checkName(String(req.params.name));
}

/** Refuses writes to repositories that are built from expressions. */
export function checkWritable(ctx: Ctx, repo: string): void {
  if (ctx.source?.owns(repo)) {
    throw new RegistryError('DENIED',
      `repository ${repo} is built from a Nix expression and is read-only; push to another name`, { repository: repo });
  }
}
