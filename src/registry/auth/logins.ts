// Checking a user name and password against the htpasswd users, within bounds.
//
// bcrypt is slow on purpose (cost 5 ≈ 3 ms, cost 10 ≈ 190 ms here), which is right
// against offline guessing and wrong for a registry that sees the same Basic
// credentials on every request of a script. So:
//  - a credential that verified is remembered for a minute, keyed by a SHA-256 of user
//    and password (never the password itself), and re-checked only after that;
//  - at most a few checks run at once and a bounded number wait; beyond that the login
//    is answered 429 rather than queueing CPU work a client can pile up;
//  - a user that fails `max` logins from one address within `window` waits out the
//    window there, even with the right password (else guessing would go on until it
//    got a 200). The key is the pair, not the address: behind a proxy or NAT one
//    address is many people, and one of them mistyping must not lock out the rest; nor
//    must a stranger guessing alice's password lock alice out from her own machine.
//    Guessing one password each for many users (spraying) is bounded by a wider count
//    per address, `perAddress`, after which the address waits whoever it names;
//  - an unknown user costs a bcrypt check like a known one, so timing tells nobody
//    which names exist. bcryptjs compares the hashes in constant time.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { createHash } from 'node:crypto';
import bcrypt from 'bcryptjs';
import { LRUCache } from 'lru-cache';

export type LoginResult = { ok: true } | { ok: false; retryAfterSeconds?: number; locked?: 'user' | 'address' };

export interface FailedLoginLimit {
  /** Failures of one user from one address within the window before that pair waits. */
  max: number;
  /** Failures from one address, whichever users they name, before the address waits. */
  perAddress: number;
  windowMs: number;
}

interface Failures { count: number; until: number }

const REMEMBER_MS = 60_000;
const CONCURRENT = 2;
const WAITING = 64;
/** bcrypt reads 72 bytes; a longer password is no better and costs us the hashing of it. */
export const MAX_PASSWORD_BYTES = 1024;

export class Logins {
  private readonly remembered = new LRUCache<string, true>({ max: 10_000, ttl: REMEMBER_MS });
  /** By user and address (JSON of the pair: neither may contain what separates them). */
  private readonly failures = new LRUCache<string, Failures>({ max: 10_000 });
  private readonly addressFailures = new LRUCache<string, Failures>({ max: 10_000 });
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  /** Checked for a user that does not exist: of the highest cost among the real hashes, so a miss is never quicker. */
  private readonly dummy: string;
  refused = 0;

  constructor(private readonly users: ReadonlyMap<string, string>, private readonly limit: FailedLoginLimit) {
    const cost = Math.max(5, ...[...users.values()].map((h) => Number(h.slice(4, 6))));
    this.dummy = bcrypt.hashSync('nixreg: no such user', Math.min(cost, 14));
  }

  async check(user: string, password: string, client: string): Promise<LoginResult> {
    const now = Date.now();
    const pair = JSON.stringify([user, client]);
    const locked = this.locked(this.addressFailures.get(client), this.limit.perAddress, now, 'address')
      ?? this.locked(this.failures.get(pair), this.limit.max, now, 'user');
    if (locked) return locked;
    const key = createHash('sha256').update(user).update('\0').update(password).digest('base64');
    const hash = this.users.get(user);
    if (hash !== undefined && this.remembered.has(key)) return { ok: true };
    if (Buffer.byteLength(password) > MAX_PASSWORD_BYTES) return this.failed(pair, client, now);
    if (this.running >= CONCURRENT) {
      if (this.waiting.length >= WAITING) { this.refused++; return { ok: false, retryAfterSeconds: 1 }; }
      await new Promise<void>((r) => this.waiting.push(r));
    } else this.running++;
    let ok: boolean;
    try {
      ok = await bcrypt.compare(password, hash ?? this.dummy) && hash !== undefined;
    } finally {
      const next = this.waiting.shift();
      if (next) next(); else this.running--;
    }
    if (!ok) return this.failed(pair, client, now);
    this.remembered.set(key, true);
    return { ok: true };
  }

  private locked(f: Failures | undefined, max: number, now: number, locked: 'user' | 'address'): LoginResult | undefined {
    if (!f || f.until <= now || f.count < max) return undefined;
    return { ok: false, retryAfterSeconds: Math.ceil((f.until - now) / 1000), locked };
  }

  private failed(pair: string, client: string, now: number): LoginResult {
    for (const [map, key] of [[this.failures, pair], [this.addressFailures, client]] as const) {
      const f = map.get(key);
      if (!f || f.until <= now) map.set(key, { count: 1, until: now + this.limit.windowMs });
      else f.count++;
    }
    return { ok: false };
  }
}
