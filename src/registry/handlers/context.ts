import type { Request } from 'express';
import type { Storage } from '../../blobs/storage.js';
import { RegistryError } from '../errors.js';
import { checkName } from '../grammar.js';
import type { ImageSource } from '../source.js';

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
