// end-2 (GET/HEAD blob) and end-10 (DELETE blob).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import { RegistryError } from '../errors.js';
import { checkDigest } from '../../oci/reference.js';
import { etagMatches, parseRange } from '../http.js';
import { sendFileRange, sendStream } from '../send-file.js';
import type { Route } from '../mirror/mirror.js';
import { checkWritable, repoOf, type Ctx } from './context.js';

function blobUnknown(repo: string, digest: string): RegistryError {
  return new RegistryError('BLOB_UNKNOWN', `blob unknown to repository ${repo}`, { digest });
}

export function getBlob(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const digest = checkDigest(String(req.params.digest));
    const size = await ctx.storage.blobSize(repo, digest);
    if (size === undefined) {
      const mirrored = ctx.mirror?.route(repo);
      if (mirrored) { await getMirroredBlob(ctx, req, res, repo, digest, mirrored); return; }
      throw blobUnknown(repo, digest);
    }
    await sendBlob(ctx, req, res, repo, digest, size);
  };
}

/** Blob `digest` of `repo`, cached here, of `size` bytes: ranges, conditions, redirect or body. */
export async function sendBlob(ctx: Ctx, req: Request, res: Response, repo: string, digest: string, size: number): Promise<void> {
  const etag = `"${digest}"`;
  res.set({
    'Docker-Content-Digest': digest,
    ETag: etag,
    'Accept-Ranges': 'bytes',
    'Content-Type': 'application/octet-stream',
    'Cache-Control': 'max-age=31536000',
  });
  if (etagMatches(req.headers['if-none-match'], etag)) { res.status(304).end(); return; }
  // Redirected to the store (--s3-redirect), which serves ranges and conditions itself.
  const url = ctx.blobRedirectSeconds && req.method === 'GET' && size > 0 ? ctx.storage.blobUrl(digest, ctx.blobRedirectSeconds) : undefined;
  if (url) {
    res.removeHeader('Accept-Ranges');
    res.status(307).set({ Location: await url, 'Cache-Control': 'no-store', 'Content-Length': '0' }).end();
    return;
  }
  const range = parseRange(req.headers.range, size);
  if (range === 'unsatisfiable') {
    res.set('Content-Range', `bytes */${size}`);
    throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { size });
  }
  const start = range?.start ?? 0;
  const end = range?.end ?? size - 1;
  res.status(range ? 206 : 200).set('Content-Length', String(end - start + 1));
  if (range) res.set('Content-Range', `bytes ${start}-${end}/${size}`);
  if (req.method === 'HEAD' || size === 0) { res.end(); return; }
  try {
    const path = ctx.storage.blobFile(digest);
    if (path !== undefined) await sendFileRange(path, start, end, res, ctx.blobBodies);
    else await sendStream(() => ctx.storage.openBlob(digest, range ? { start, end } : undefined), res, ctx.blobBodies);
  } catch (err) {
    // Deleted between the lookup and the open: gone, not an internal error.
    if (!res.headersSent) {
      for (const h of ['Docker-Content-Digest', 'ETag', 'Content-Range', 'Accept-Ranges', 'Cache-Control', 'Content-Length']) res.removeHeader(h);
      // Deleted between the lookup and the open: gone, not an internal error.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw blobUnknown(repo, digest);
    }
    throw err;
  }
}

/**
 * A blob of a mirrored repository that is not cached: a HEAD asks upstream; a GET
 * streams the bytes of the one upstream fetch as they arrive (mirror/flight.ts).
 */
async function getMirroredBlob(ctx: Ctx, req: Request, res: Response, repo: string, digest: string, r: Route): Promise<void> {
  const mirror = ctx.mirror!;
  res.set({ 'Docker-Content-Digest': digest, 'Content-Type': 'application/octet-stream' });
  if (req.method === 'HEAD') {
    const size = await mirror.blobHead(repo, digest, r);
    if (size !== undefined) res.set('Content-Length', String(size));
    res.status(200).end();
    return;
  }
  const got = await mirror.blob(repo, digest, r);
  if ('size' in got) { await sendBlob(ctx, req, res, repo, digest, got.size); return; }
  const f = got.flight;
  let start = 0;
  let end = Infinity;
  if (f.size !== undefined) {
    const range = parseRange(req.headers.range, f.size);
    if (range === 'unsatisfiable') {
      res.set('Content-Range', `bytes */${f.size}`);
      throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { size: f.size });
    }
    start = range?.start ?? 0;
    end = range?.end ?? f.size - 1;
    res.status(range ? 206 : 200).set({ 'Content-Length': String(end - start + 1), 'Accept-Ranges': 'bytes' });
    if (range) res.set('Content-Range', `bytes ${start}-${end}/${f.size}`);
    if (f.size === 0) { res.end(); return; }
  } else {
    res.status(200);
  }
  await sendStream(async () => f.reader(start, end), res, ctx.blobBodies);
}

export function deleteBlob(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const digest = checkDigest(String(req.params.digest));
    checkWritable(ctx, repo);
    if (!(await ctx.storage.deleteBlob(repo, digest))) {
      throw blobUnknown(repo, digest);
    }
    res.status(202).set('Content-Length', '0').end();
  };
}
