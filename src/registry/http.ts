// Small HTTP helpers shared by the handlers.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { finished } from 'node:stream';
import type { Request } from 'express';
import { RegistryError } from './errors.js';
import { MAX_MANIFEST_BYTES } from './negotiate.js';

/** The first buffer of a body read into memory; it doubles as bytes arrive. */
const FIRST_CHUNK = 64 * 1024;

/**
 * The share of the budget one client may claim: a quarter, and never less than one
 * manifest of the largest size. So it takes four clients at once (four addresses, or
 * four users with --auth) to fill the budget, and one client's slow bodies leave the
 * other three quarters to everyone else.
 */
export function clientShare(limit: number): number {
  return Math.min(limit, Math.max(MAX_MANIFEST_BYTES, Math.floor(limit / 4)));
}

/**
 * Bytes that request bodies held in memory may take, counted two ways.
 *
 * All clients together: the buffers as they grow with what has arrived, not what was
 * declared, so a PUT that declares 4 MiB and trickles holds 64 KiB of what everyone
 * shares, and only bytes really sent can fill it.
 *
 * Each client: what its bodies declared (or, without a Content-Length, what they hold),
 * up to its share. Claimed whole at once, so a client's bodies are admitted or refused
 * before they are read, never starved half way by each other; and however a client
 * trickles or stalls, it holds no more than its share.
 *
 * Past either, a request is answered 429 instead of growing the heap. Each body must
 * also arrive in full within `deadlineMs`, so what one holds is held for that long at most.
 */
export class MemoryBudget {
  used = 0;
  /** Refused because all bodies together would exceed the limit. */
  refused = 0;
  /** Refused because one client's bodies would exceed its share. */
  refusedPerClient = 0;
  /** Cut because they had not arrived in full within the deadline. */
  timedOut = 0;
  private readonly claims = new Map<string, number>();

  constructor(readonly limit: number, readonly deadlineMs = 60_000, readonly perClient = clientShare(limit)) {}

  /** Clients with bodies being read now. */
  get clients(): number { return this.claims.size; }

  /** The budget as `client` (Gate.client: its user, or its address) draws on it. */
  of(client: string): BodyAllowance {
    return {
      deadlineMs: this.deadlineMs,
      take: (memory, claim) => {
        const mine = this.claims.get(client) ?? 0;
        if (mine + claim > this.perClient) {
          this.refusedPerClient++;
          throw new RegistryError('TOOMANYREQUESTS',
            `this client is already sending ${mine} bytes of request bodies and may send ${this.perClient} at once; retry when those are done`);
        }
        if (this.used + memory > this.limit) {
          this.refused++;
          throw new RegistryError('TOOMANYREQUESTS',
            `the server is reading too many request bodies at once (${this.limit} bytes in memory); retry shortly`);
        }
        this.used += memory;
        if (claim > 0) this.claims.set(client, mine + claim);
      },
      give: (memory, claim) => {
        this.used -= memory;
        if (claim === 0) return;
        const left = (this.claims.get(client) ?? 0) - claim;
        if (left > 0) this.claims.set(client, left); else this.claims.delete(client);
      },
      timedOut: () => { this.timedOut++; },
    };
  }
}

/** One client's draw on a MemoryBudget. */
export interface BodyAllowance {
  readonly deadlineMs: number;
  /**
   * Counts `memory` more bytes against the budget of all and `claim` more against the
   * client's share, both or neither; throws the 429 that says whose limit it would pass.
   */
  take(memory: number, claim: number): void;
  give(memory: number, claim: number): void;
  timedOut(): void;
}

function tooLarge(limit: number, declared?: string): RegistryError {
  return new RegistryError('MANIFEST_TOO_LARGE',
    declared !== undefined ? `body of ${declared} bytes exceeds the limit of ${limit}` : `body exceeds the limit of ${limit} bytes`, { limit });
}

/**
 * Reads a request body of at most `limit` bytes, answering 413 beyond it, counted
 * against `allowance` (see MemoryBudget) until the body is parsed (`use`). A body not
 * in full within the allowance's deadline is answered 408 and its connection closed:
 * a trickle of a byte just under --body-timeout would otherwise hold its claim (and
 * a connection) for as long as the client likes.
 */
export async function withBody<T>(req: Request, limit: number, allowance: BodyAllowance, use: (body: Buffer) => Promise<T> | T): Promise<T> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    req.resume();
    throw tooLarge(limit, declared);
  }
  const n = Number(declared);
  // Node's parser holds a body to its Content-Length; without one, the limit bounds it.
  const cap = declared !== undefined && Number.isFinite(n) ? n : limit;
  let held = 0;
  let claimed = 0;
  try {
    // The share is claimed for what the body declares before a byte is read: refusing
    // now is cheaper for both sides than refusing half way.
    if (declared !== undefined && cap > 0) { allowance.take(0, cap); claimed = cap; }
    // One buffer, copied into: a body sent as a million one-byte chunks must not become
    // a million Buffer objects (~100 bytes of heap each).
    let buf = Buffer.alloc(0);
    let total = 0;
    await readBody(req, allowance, (c) => {
      if (total + c.length > limit) throw tooLarge(limit);
      if (total + c.length > buf.length) {
        // Grows to the declared size at most, so a body that declared its length ends
        // in a buffer of exactly that size.
        const size = Math.min(cap, Math.max(FIRST_CHUNK, buf.length * 2, total + c.length));
        const claim = Math.max(0, size - claimed);
        allowance.take(size - held, claim);
        held = size;
        claimed += claim;
        const bigger = Buffer.allocUnsafe(size);
        buf.copy(bigger, 0, 0, total);
        buf = bigger;
      }
      c.copy(buf, total);
      total += c.length;
    });
    // Exact-size, so that what caches keep of it (the manifest body cache) weighs what it says.
    return await use(total === buf.length ? buf : Buffer.from(buf.subarray(0, total)));
  } finally {
    allowance.give(held, claimed);
  }
}

/**
 * Feeds each chunk of `req` to `onChunk` until the body ends, the client goes away,
 * `onChunk` throws, or the deadline passes. Not `for await`: leaving that loop early
 * destroys the request and its socket, and with it the answer that says why.
 */
function readBody(req: Request, allowance: BodyAllowance, onChunk: (c: Buffer) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = false;
    const stop = (err?: unknown) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      cleanup();
      // What is left of the body is read and dropped (the stream stays flowing), so the
      // answer is not stuck behind it.
      if (err === undefined) resolve(); else { req.resume(); reject(err); }
    };
    const onData = (c: Buffer) => {
      try { onChunk(c); } catch (e) { stop(e); }
    };
    const onEnd = () => stop();
    const timer = setTimeout(() => {
      allowance.timedOut();
      const s = Math.round(allowance.deadlineMs / 1000);
      const e = new RegistryError('UNSUPPORTED',
        `the request body did not arrive in full within ${s} s; send it faster, or not at all`, { timeoutSeconds: s }, 408);
      // The rest of the body could take as long again: the connection ends with this answer.
      e.headers.Connection = 'close';
      stop(e);
    }, allowance.deadlineMs);
    // The client going away mid-body (an error, or a close before the end).
    const cleanup = finished(req, { readable: true, writable: false }, (err) => stop(err ?? undefined));
    req.on('end', onEnd);
    req.on('data', onData);
  });
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
