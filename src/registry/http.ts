// Small HTTP helpers shared by the handlers.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request } from 'express';
import { RegistryError } from './errors.js';

/**
 * Bytes that request bodies held in memory may take together. Each body is counted
 * while it is read, so many slow manifest PUTs cannot add up to more than this: past
 * it a request is answered 429 at once instead of growing the heap.
 */
export class MemoryBudget {
  used = 0;
  refused = 0;
  constructor(readonly limit: number) {}

  take(n: number): boolean {
    if (this.used + n > this.limit) { this.refused++; return false; }
    this.used += n;
    return true;
  }

  give(n: number): void { this.used -= n; }
}

function overBudget(budget: MemoryBudget): RegistryError {
  return new RegistryError('TOOMANYREQUESTS',
    `the server is reading too many request bodies at once (${budget.limit} bytes in memory); retry shortly`);
}

/**
 * Reads a request body of at most `limit` bytes, answering 413 beyond it, counted
 * against `budget` while it is read and released once the body is parsed (`use`).
 */
export async function withBody<T>(req: Request, limit: number, budget: MemoryBudget, use: (body: Buffer) => Promise<T> | T): Promise<T> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    req.resume();
    throw new RegistryError('MANIFEST_TOO_LARGE', `body of ${declared} bytes exceeds the limit of ${limit}`, { limit });
  }
  let held = 0;
  try {
    // Reserved whole up front when declared: refusing before reading is cheaper for both
    // sides than refusing half way.
    const reserve = declared !== undefined ? Number(declared) : 0;
    if (reserve > 0) {
      if (!budget.take(reserve)) { req.resume(); throw overBudget(budget); }
      held = reserve;
    }
    // One buffer, copied into: a body sent as a million one-byte chunks must not become
    // a million Buffer objects (~100 bytes of heap each).
    let buf = Buffer.allocUnsafe(reserve || 64 * 1024);
    let total = 0;
    for await (const chunk of req) {
      const c = chunk as Buffer;
      if (total + c.length > limit) {
        req.resume();
        throw new RegistryError('MANIFEST_TOO_LARGE', `body exceeds the limit of ${limit} bytes`, { limit });
      }
      if (total + c.length > buf.length) {
        const bigger = Buffer.allocUnsafe(Math.min(limit, Math.max(buf.length * 2, total + c.length)));
        buf.copy(bigger, 0, 0, total);
        buf = bigger;
      }
      if (buf.length > held) {
        if (!budget.take(buf.length - held)) { req.resume(); throw overBudget(budget); }
        held = buf.length;
      }
      c.copy(buf, total);
      total += c.length;
    }
    // Exact-size, so that what caches keep of it (the manifest body cache) weighs what it says.
    return await use(total === buf.length ? buf : Buffer.from(buf.subarray(0, total)));
  } finally {
    budget.give(held);
  }
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
