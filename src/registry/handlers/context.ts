// What every handler gets: storage, the image source and the gate, and the checks they
// all make on a request's repository.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request } from 'express';
import type { Storage } from '../../blobs/storage.js';
import type { ImageSource } from '../../build/image-source.js';
import { checkName } from '../../oci/reference.js';
import type { Gate } from '../auth/gate.js';
import { RegistryError } from '../errors.js';
import type { MemoryBudget } from '../http.js';
import type { Metrics } from '../metrics.js';
import type { Mirror } from '../mirror/mirror.js';
import type { Readiness } from '../readiness.js';
import type { BodyBytes } from '../send-file.js';

/** What one client may hold open (see README, "Limits"). */
export interface Limits {
  /** Unfinished uploads per repository, per client address, and in all. */
  uploadsPerRepo: number;
  uploadsPerClient: number;
  uploads: number;
  /** Bytes per second an upload body must average over each window (upload-rate.ts); 0: off. */
  minUploadRate: number;
  uploadRateWindowMs: number;
}

export interface Ctx {
  storage: Storage;
  source?: ImageSource | undefined;
  /** Memory that manifest bodies being read may take, together and per client, and for how long. */
  bodies: MemoryBudget;
  limits: Limits;
  /** Who the caller is and what it may do (auth/gate.ts); allows everything with no --auth. */
  gate: Gate;
  /** Counters of the layers above the handlers, for /nixreg/stats. */
  counters: () => Record<string, unknown>;
  /** The app's Prometheus metrics; undefined when turned off (NIXREG_METRICS=off). */
  metrics?: Metrics | undefined;
  /** The checks of /readyz. */
  readiness: Readiness;
  /** Whether blob bodies go by sendfile (zero-copy.ts), and the bytes sent each way. */
  blobBodies: { sendfile: boolean; bytes: BodyBytes };
  /** Blob GETs redirect to a URL of the store's valid this long (--s3-redirect); 0 or undefined: served here. */
  blobRedirectSeconds?: number | undefined;
  /** The pull-through cache (--mirror); undefined when nothing is mirrored. */
  mirror?: Mirror | undefined;
}

/** The validated repository name of a request. */
export function repoOf(req: Request): string {
  return checkName(String(req.params.name));
}

/** Refuses writes to repositories that are built from expressions or mirror an upstream. */
export function checkWritable(ctx: Ctx, repo: string): void {
  const mirrored = ctx.mirror?.route(repo);
  if (mirrored) {
    throw new RegistryError('DENIED',
      `repository ${repo} is a pull-through cache of upstream ${mirrored.client.label} and is read-only; push to another name`, { repository: repo });
  }
  if (ctx.source?.owns(repo)) {
    throw new RegistryError('DENIED',
      `repository ${repo} is built from a Nix expression and is read-only; push to another name`, { repository: repo });
  }
}
