// Leases: work that must run in one process at a time across every process sharing the
// index, such as a build of one (repository, expression hash) pulled through several
// replicas at once. Nix would build it once anyway (its store locks the outputs), but
// every replica would still assemble, compress and upload the same layers: a lease makes
// the others wait for the first and then find its record.
//
// With the embedded SQLite index there is one process, which already runs each build
// once (the builder's in-process single flight): a lease is granted at once. With
// PostgreSQL a lease is a session-level advisory lock held on a connection of its own
// for as long as the work lasts, so a replica that dies (kill -9, a lost machine once TCP
// keepalives give up) releases its leases with its session, and a waiter takes over.
// Waiters poll with pg_try_advisory_lock rather than block in pg_advisory_lock: a
// blocked backend cannot be told that its client gave up (an aborted pull) short of
// cancelling it, and a poll every LEASE_POLL_MS is a few queries a second per waiting
// build, nothing next to the build.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { createHash } from 'node:crypto';
import pg from 'pg';

export interface Lease {
  /** Ends the lease; safe to call twice. */
  release(): Promise<void>;
}

export interface Leases {
  /**
   * Resolves once this process holds `key` (no other process holding the same index
   * does); rejects with the signal's reason if it aborts first. `waiting` is called
   * once, if the lease is held elsewhere at the first try.
   */
  acquire(key: string, signal?: AbortSignal, waiting?: () => void): Promise<Lease>;
  close(): Promise<void>;
}

const none: Lease = { release: async () => {} };

/** One process: nothing else can hold a lease. */
export const localLeases: Leases = {
  acquire: async (_key, signal) => { signal?.throwIfAborted(); return none; },
  close: async () => {},
};

/** How often a waiter asks again. */
export const LEASE_POLL_MS = 250;

/**
 * Advisory locks are keyed by two int4: the first names the kind of lock, so that keys of
 * different kinds never meet, the second is a hash of the key (a collision only makes two
 * builds wait for each other).
 */
export const LOCK_SPACE = { build: 0x6e780002 } as const;

export function advisoryKey(space: number, key: string): [number, number] {
  return [space, createHash('sha256').update(key).digest().readInt32BE(0)];
}

export class PostgresLeases implements Leases {
  private readonly held = new Set<pg.Client>();
  private closed = false;

  /** `connect`: a new, dedicated client's configuration (keepalives on). */
  constructor(private readonly config: pg.ClientConfig, private readonly space = LOCK_SPACE.build) {}

  async acquire(key: string, signal?: AbortSignal, waiting?: () => void): Promise<Lease> {
    signal?.throwIfAborted();
    if (this.closed) throw new Error('leases closed');
    const [a, b] = advisoryKey(this.space, key);
    const client = new pg.Client({ keepAlive: true, keepAliveInitialDelayMillis: 10_000, ...this.config });
    // An error on an idle client (the server gone) must not crash the process; the lease
    // is then lost, which at worst lets another replica repeat the work.
    client.on('error', () => {});
    let told = false;
    try {
      await client.connect();
      for (;;) {
        const r = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1::int4, $2::int4) AS ok', [a, b]);
        if (r.rows[0]!.ok) break;
        if (!told) { told = true; waiting?.(); }
        await sleep(LEASE_POLL_MS, signal);
      }
    } catch (e) {
      await client.end().catch(() => {});
      throw e;
    }
    this.held.add(client);
    let released = false;
    return {
      release: async () => {
        if (released) return;
        released = true;
        this.held.delete(client);
        // Ending the session releases the lock with it, even if the unlock cannot be sent.
        await client.query('SELECT pg_advisory_unlock($1::int4, $2::int4)', [a, b]).catch(() => {});
        await client.end().catch(() => {});
      },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.held].map((c) => c.end().catch(() => {})));
    this.held.clear();
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(signal.reason); return; }
    const t = setTimeout(() => { signal?.removeEventListener('abort', stop); resolve(); }, ms);
    const stop = () => { clearTimeout(t); reject(signal!.reason); };
    signal?.addEventListener('abort', stop, { once: true });
  });
}
