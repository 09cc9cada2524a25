// Locks that replicas sharing a PostgreSQL index hold across processes: advisory locks,
// held by a database session. A pool hands each statement another session, so each kind
// of lock has a connection of its own here (PgPool.session):
//  - the collector's: one garbage collection (or cache eviction) at a time among all
//    replicas, pg_try_advisory_lock, held for the whole collection;
//  - the per-digest lock around a blob's publish and its removal (core.ts's KeyedLock
//    serialises them within a process; this extends that across processes), taken with
//    pg_try_advisory_lock and retried with a short backoff, so that one session can hold
//    many digests at once without a blocked statement stalling the others;
//  - leases (Storage.lease): work one replica at a time does, such as a build of one
//    image that several replicas are asked for at once. Each on a session of its own for
//    as long as the work lasts, so that a replica that dies (kill -9; a lost machine once
//    TCP keepalives give up) frees its leases with its session, and a waiter takes over.
//    Waiters poll pg_try_advisory_lock every LEASE_POLL_MS rather than block in
//    pg_advisory_lock: a blocked backend cannot be told that its waiter gave up short
//    of cancelling it, and a few queries a second per waiting build is nothing next to it.
// A session that fails releases what it held on the server's side. Whoever held a lock
// then goes on unprotected for the moment left; the index's own transactions keep rows
// and files consistent without them (a collection re-checks each row under FOR UPDATE,
// and removes a file only if its row is gone), so the locks keep replicas from doing the
// same work twice and close the window between a file's publish and its row.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { IndexUnavailable } from '../errors.js';
import type { PgPool } from './postgres-pool.js';

/** The collector's lock (bigint key space; "nixreg" + 2). */
export const COLLECTOR_LOCK = 0x6e69787265670002n;
/** The digests' locks: the two-int4 key space, this first key, 32 bits of the digest. */
const DIGEST_CLASS = 0x6e697872; // "nixr"
/** A digest's lock is waited for at most this long: a publish holding it may copy a large blob. */
const DIGEST_WAIT_MS = 60_000;

/** The leases' two-int4 key space: this first key, 32 bits of the key's SHA-256. */
const LEASE_CLASS = 0x6e697873; // "nixs"
/** How often a lease's waiter asks again. */
export const LEASE_POLL_MS = 250;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function abortable(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(signal.reason); return; }
    const t = setTimeout(() => { signal?.removeEventListener('abort', stop); resolve(); }, ms);
    const stop = () => { clearTimeout(t); reject(signal!.reason); };
    signal?.addEventListener('abort', stop, { once: true });
  });
}

/** The 32 bits of a digest's hex that key its lock (collisions only make two digests wait on each other). */
function digestKey(digest: string): number {
  const hex = digest.slice(digest.indexOf(':') + 1, digest.indexOf(':') + 9);
  const n = /^[0-9a-f]{8}$/.test(hex) ? parseInt(hex, 16) : [...digest].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7);
  return n | 0;
}

export class PgLocks {
  private session: Promise<pg.Client> | undefined;

  constructor(private readonly pool: PgPool) {}

  /** The digests' session, connected on first use and again after it failed. */
  private digestSession(): Promise<pg.Client> {
    if (!this.session) {
      const s = this.pool.session(() => { if (this.session === s) this.session = undefined; });
      this.session = s;
      s.catch(() => { if (this.session === s) this.session = undefined; });
    }
    return this.session;
  }

  /** Runs `fn` holding digest `digest`'s lock among all processes of the index (within this one, KeyedLock serialises). */
  async withDigest<T>(digest: string, fn: () => Promise<T>): Promise<T> {
    const key = digestKey(digest);
    const deadline = performance.now() + DIGEST_WAIT_MS;
    let session: pg.Client;
    for (let wait = 5; ; wait = Math.min(200, wait * 2)) {
      session = await this.digestSession();
      let got: boolean;
      try {
        got = (await session.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [DIGEST_CLASS, key])).rows[0]!.ok;
      } catch (e) {
        // A statement that timed out leaves the session out of step: it goes, and the next lock makes a new one.
        if (this.session) this.session = undefined;
        await session.end().catch(() => {});
        throw this.pool.unavailable(e);
      }
      if (got) break;
      if (performance.now() > deadline) throw new IndexUnavailable(this.pool.description, `blob ${digest.slice(0, 20)}… is locked by another replica`);
      await sleep(wait);
    }
    try {
      return await fn();
    } finally {
      // A session lost meanwhile released it with everything else it held.
      await session.query('SELECT pg_advisory_unlock($1, $2)', [DIGEST_CLASS, key]).catch(() => {});
    }
  }

  /**
   * The collector's lock: a release function, or undefined while another process holds
   * it. `onLost` is called if the lock's session fails before the release (the lock is
   * then free for another replica).
   */
  async collector(onLost: () => void = () => {}): Promise<(() => Promise<void>) | undefined> {
    let released = false;
    const session = await this.pool.session(() => { if (!released) onLost(); });
    let got = false;
    try {
      got = (await session.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [COLLECTOR_LOCK.toString()])).rows[0]!.ok;
    } catch (e) {
      released = true;
      await session.end().catch(() => {});
      throw this.pool.unavailable(e);
    }
    if (!got) {
      released = true;
      await session.end().catch(() => {});
      return undefined;
    }
    return async () => {
      if (released) return;
      released = true;
      // Ending the session releases the lock (and anything else it might hold).
      await session.end().catch(() => {});
    };
  }

  /** Holds `key` among every process of the index; resolves to its release (see the header). */
  async lease(key: string, signal?: AbortSignal, waiting?: () => void): Promise<() => Promise<void>> {
    signal?.throwIfAborted();
    const k = createHash('sha256').update(key).digest().readInt32BE(0);
    // A session lost while held: the lease is gone with it, and at worst another replica
    // repeats the work (content-addressed, so the same result).
    const session = await this.pool.session(() => {});
    this.leases.add(session);
    const drop = async () => { this.leases.delete(session); await session.end().catch(() => {}); };
    try {
      for (let told = false; ;) {
        const r = await session.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [LEASE_CLASS, k]);
        if (r.rows[0]!.ok) break;
        if (!told) { told = true; waiting?.(); }
        await abortable(LEASE_POLL_MS, signal);
      }
    } catch (e) {
      await drop();
      throw signal?.aborted && e === signal.reason ? e : this.pool.unavailable(e);
    }
    let released = false;
    // Ending the session releases the lock with it, even where the unlock cannot be sent.
    return async () => { if (!released) { released = true; await drop(); } };
  }

  private readonly leases = new Set<pg.Client>();

  async close(): Promise<void> {
    await Promise.all([...this.leases].map((c) => c.end().catch(() => {})));
    this.leases.clear();
    const s = this.session;
    this.session = undefined;
    if (s) await (await s.catch(() => undefined))?.end().catch(() => {});
  }
}
