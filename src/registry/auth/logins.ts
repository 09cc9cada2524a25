// Checking a user name and password against the htpasswd users, within bounds.
//
// bcrypt is slow on purpose (cost 5 ≈ 3 ms, cost 10 ≈ 190 ms here), which is right
// against offline guessing and wrong for a registry that sees the same Basic
// credentials on every request of a script. So:
//  - a credential that verified is remembered for a minute, keyed by a SHA-256 of user
//    and password (never the password itself), and re-checked only after that;
//  - at most a few checks run at once and a bounded number wait; beyond that the login
//    is answered 429 rather than queueing CPU work a client can pile up;
//  - a client address that fails `max` logins within `window` waits out the window;
//  - an unknown user costs a bcrypt check like a known one, so timing tells nobody
//    which names exist. bcryptjs compares the hashes in constant time.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { createHash } from 'node:crypto';
import bcrypt from 'bcryptjs';
import { LRUCache } from 'lru-cache';

export type LoginResult = { ok: true } | { ok: false; retryAfterSeconds?: number };

const REMEMBER_MS = 60_000;
const CONCURRENT = 2;
const WAITING = 64;
/** bcrypt reads 72 bytes; a longer password is no better and costs us the hashing of it. */
export const MAX_PASSWORD_BYTES = 1024;

export class Logins {
  private readonly remembered = new LRUCache<string, true>({ max: 10_000, ttl: REMEMBER_MS });
  private readonly failures = new LRUCache<string, { count: number; until: number }>({ max: 10_000 });
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  /** Checked for a user that does not exist: of the highest cost among the real hashes, so a miss is never quicker. */
  private readonly dummy: string;
  refused = 0;

  constructor(private readonly users: ReadonlyMap<string, string>, private readonly limit: { max: number; windowMs: number }) {
    const cost = Math.max(5, ...[...users.values()].map((h) => Number(h.slice(4, 6))));
    this.dummy = bcrypt.hashSync('nixreg: no such user', Math.min(cost, 14));
  }

  async check(user: string, password: string, client: string): Promise<LoginResult> {
    const now = Date.now();
    const f = this.failures.get(client);
    if (f && f.until > now && f.count >= this.limit.max) return { ok: false, retryAfterSeconds: Math.ceil((f.until - now) / 1000) };
    const key = createHash('sha256').update(user).update('\0').update(password).digest('base64');
    const hash = this.users.get(user);
    if (hash !== undefined && this.remembered.has(key)) return { ok: true };
    if (Buffer.byteLength(password) > MAX_PASSWORD_BYTES) return this.failed(client, now);
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
    if (!ok) return this.failed(client, now);
    this.remembered.set(key, true);
    return { ok: true };
  }

  private failed(client: string, now: number): LoginResult {
    const f = this.failures.get(client);
    if (!f || f.until <= now) this.failures.set(client, { count: 1, until: now + this.limit.windowMs });
    else f.count++;
    return { ok: false };
  }
}
