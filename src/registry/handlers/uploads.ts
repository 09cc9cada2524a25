// Blob uploads: end-4a/4b (POST), end-11 (mount), end-5 (PATCH), end-6 (PUT),
// end-13 (GET status) and DELETE of a session.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Readable } from 'node:stream';
import type { Request, Response } from 'express';
import { DigestMismatch, SizeMismatch, TooManyUploads, UploadOutOfOrder } from '../../blobs/errors.js';
import { checkDigest, checkName } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import { isUploadId } from '../grammar.js';
import { contentLength, hasBody, parseContentRange, uploadRange } from '../http.js';
import { meteredBody } from '../upload-rate.js';
import { checkWritable, repoOf, type Ctx } from './context.js';

function uploadIdOf(req: Request): string {
  const id = String(req.params.id);
  if (!isUploadId(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', 'upload unknown', { id: id.slice(0, 100) });
  return id;
}

function queryString(req: Request, key: string): string | undefined {
  const v = req.query[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new RegistryError('BLOB_UPLOAD_INVALID', `query parameter ${key} given more than once`);
  return v;
}

function created(res: Response, repo: string, digest: string) {
  res.status(201).set({
    Location: `/v2/${repo}/blobs/${digest}`,
    'Docker-Content-Digest': digest,
    'Content-Length': '0',
  }).end();
}

function inProgress(res: Response, repo: string, id: string, offset: number, status = 202) {
  res.status(status).set({
    Location: `/v2/${repo}/blobs/uploads/${id}`,
    Range: uploadRange(offset),
    'Docker-Upload-UUID': id,
    'Content-Length': '0',
  }).end();
}

/**
 * A rejected chunk (416) still tells the client where the upload stands, so it can
 * resume from the right offset instead of starting over.
 */
async function withUploadHeaders<T>(res: Response, repo: string, id: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof UploadOutOfOrder) {
      res.set({ Location: `/v2/${repo}/blobs/uploads/${id}`, Range: uploadRange(err.offset), 'Docker-Upload-UUID': id });
    }
    throw err;
  }
}

/**
 * Reads the request body with `write`, cut short if it comes slower than --min-upload-rate
 * (upload-rate.ts). A cut body is answered 408 and the connection closed; the bytes that
 * reached an upload session stay in it (`upload` says which, for the answer's Range), and
 * a monolithic upload keeps nothing. What a cut body makes the writer throw (too few
 * bytes for its length, the wrong digest) is no error of the client's but this one.
 */
async function readBody<T>(ctx: Ctx, req: Request, upload: { repo: string; id: string } | undefined,
  write: (body: Readable) => Promise<T>): Promise<T> {
  const body = meteredBody(req, { bytesPerSecond: ctx.limits.minUploadRate, windowMs: ctx.limits.uploadRateWindowMs });
  let result: T | undefined;
  try {
    result = await write(body.stream);
  } catch (err) {
    if (!body.cut || !(err instanceof SizeMismatch || err instanceof DigestMismatch)) throw err;
  } finally {
    body.stop();
  }
  if (!body.cut) return result as T;
  const { minUploadRate: rate, uploadRateWindowMs: windowMs } = ctx.limits;
  const slow = `the body came slower than ${rate} bytes/s over ${windowMs / 1000} s (--min-upload-rate)`;
  const limit = { minUploadRate: rate, windowSeconds: windowMs / 1000 };
  let err: RegistryError;
  if (upload === undefined) {
    err = new RegistryError('BLOB_UPLOAD_INVALID', `${slow}; nothing of it was kept`, limit, 408);
  } else {
    const offset = await ctx.storage.uploadOffset(upload.repo, upload.id);
    err = new RegistryError('BLOB_UPLOAD_INVALID',
      `${slow}; the upload keeps the ${offset} bytes that arrived: resume from there (its Range) or finish it`, { offset, ...limit }, 408);
    Object.assign(err.headers, { Location: `/v2/${upload.repo}/blobs/uploads/${upload.id}`, Range: uploadRange(offset), 'Docker-Upload-UUID': upload.id });
  }
  // The client is still sending: the answer ends the connection (connections.ts lingers
  // long enough for it to be read).
  err.headers.Connection = 'close';
  throw err;
}

/**
 * An upload holds a file and a row until it is finished, cancelled or purged: each
 * client and each repository may hold only so many at once. Checked and started in one
 * step of the index (Storage.startUpload), so concurrent POSTs cannot both pass the last
 * free slot.
 */
async function startWithinLimits(ctx: Ctx, repo: string, client: string): Promise<string> {
  const { uploadsPerRepo, uploadsPerClient, uploads } = ctx.limits;
  let open: { repo: number; client: number; total: number };
  try {
    return await ctx.storage.startUpload(repo, client, { repo: uploadsPerRepo, client: uploadsPerClient, total: uploads });
  } catch (err) {
    if (!(err instanceof TooManyUploads)) throw err;
    open = err.open;
  }
  const over = open.client >= uploadsPerClient ? `this client has ${open.client} unfinished uploads (limit ${uploadsPerClient})`
    : open.repo >= uploadsPerRepo ? `${repo} has ${open.repo} unfinished uploads (limit ${uploadsPerRepo})`
    : open.total >= uploads ? `the registry has ${open.total} unfinished uploads (limit ${uploads})`
    : 'too many unfinished uploads';
  throw new RegistryError('TOOMANYREQUESTS', `${over}; finish or cancel some, or wait until they are purged`,
    { repository: repo });
}

export function startUpload(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    checkWritable(ctx, repo);
    const mount = queryString(req, 'mount');
    const from = queryString(req, 'from');
    const digest = queryString(req, 'digest');
    if (mount !== undefined && from !== undefined) {
      checkDigest(mount);
      checkName(from);
      // Only from a repository the caller may read (else anyone could copy a blob they
      // know the digest of out of a private repository: zot's CVE-2024-39897), and only a
      // blob really linked there. Otherwise the client gets a normal upload.
      if (ctx.gate.may(req, from, 'read') && await ctx.storage.mountBlob(repo, from, mount) !== undefined) { created(res, repo, mount); return; }
    }
    if (digest !== undefined) {
      checkDigest(digest);
      const declared = contentLength(req);
      const { size } = await readBody(ctx, req, undefined, (body) => ctx.storage.writeBlob(repo, body, digest));
      if (declared !== undefined && declared !== size) {
        throw new RegistryError('SIZE_INVALID', `body has ${size} bytes, Content-Length said ${declared}`);
      }
      created(res, repo, digest);
      return;
    }
    req.resume();
    const client = ctx.gate.client(req);
    const id = await startWithinLimits(ctx, repo, client);
    inProgress(res, repo, id, 0);
  };
}

export function patchUpload(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const id = uploadIdOf(req);
    const range = parseContentRange(req.headers['content-range'] as string | undefined);
    const length = contentLength(req);
    if (range && length !== undefined && length !== range.end - range.start + 1) {
      throw new RegistryError('RANGE_INVALID', 'Content-Range and Content-Length disagree');
    }
    const offset = await withUploadHeaders(res, repo, id,
      () => readBody(ctx, req, { repo, id }, (body) => ctx.storage.appendUpload(repo, id, body, range?.start, length)));
    inProgress(res, repo, id, offset);
  };
}

export function finishUpload(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const id = uploadIdOf(req);
    const digest = queryString(req, 'digest');
    if (digest === undefined) throw new RegistryError('DIGEST_INVALID', 'digest query parameter is required');
    checkDigest(digest);
    if (hasBody(req)) {
      const range = parseContentRange(req.headers['content-range'] as string | undefined);
      await withUploadHeaders(res, repo, id,
        () => readBody(ctx, req, { repo, id }, (body) => ctx.storage.appendUpload(repo, id, body, range?.start, contentLength(req))));
    } else {
      req.resume();
    }
    await ctx.storage.finishUpload(repo, id, digest);
    created(res, repo, digest);
  };
}

export function uploadStatus(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const id = uploadIdOf(req);
    inProgress(res, repo, id, await ctx.storage.uploadOffset(repo, id), 204);
  };
}

export function cancelUpload(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    await ctx.storage.cancelUpload(repo, uploadIdOf(req));
    res.status(204).end();
  };
}
