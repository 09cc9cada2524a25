// Small HTTP helpers shared by the handlers.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request } from 'express';
import { RegistryError } from './errors.js';

/** Reads a request body of at most `limit` bytes, answering 413 beyond it. */
export async function readBody(req: Request, limit: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    req.resume();
    throw new RegistryError('MANIFEST_TOO_LARGE', `body of ${declared} bytes exceeds the limit of ${limit}`, { limit });
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    total += (chunk as Buffer).length;
    if (total > limit) {
      req.resume();
      throw new RegistryError('MANIFEST_TOO_LARGE', `body exceeds the limit of ${limit} bytes`, { limit });
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Whether a request carries a body at all (Content-Length > 0, or chunked). */
export function hasBody(req: Request): boolean {
  const len = req.headers['content-length'];
  if (len !== undefined) return Number(len) > 0;
  return req.headers['transfer-encoding'] !== undefined;
}

export function contentLength(req: Request): number | undefined {
  const len = req.headers['content-length'];
  if (len === undefined) return undefined;
  if (!/^\d{1,15}$/.test(len)) throw new RegistryError('SIZE_INVALID', 'invalid Content-Length');
  return Number(len);
}

/**
 * Content-Range of an upload chunk: "<start>-<end>" (the spec's form; "bytes " is
 * tolerated). End is inclusive.
 */
export function parseContentRange(v: string | undefined): { start: number; end: number } | undefined {
  if (v === undefined) return undefined;
  const m = /^(?:bytes[ =])?(\d{1,15})-(\d{1,15})(?:\/(?:\d+|\*))?$/.exec(v.trim());
  if (!m) throw new RegistryError('RANGE_INVALID', `invalid Content-Range: ${v.slice(0, 100)}`);
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) throw new RegistryError('RANGE_INVALID', `invalid Content-Range: ${v.slice(0, 100)}`);
  return { start, end };
}

/** A single "bytes=a-b" Range request; undefined when absent or not a single range. */
export function parseRange(v: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (!v) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(v.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return undefined;
  }
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

export function uploadRange(offset: number): string {
  return `0-${Math.max(0, offset - 1)}`;
}

/** If-None-Match against one strong ETag: `*`, a list, and weak forms all count. */
export function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((t) => {
    const v = t.trim();
    return v === '*' || v === etag || v === `W/${etag}`;
  });
}
