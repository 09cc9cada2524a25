// Bearer tokens of the Docker token flow: issued by GET /token, verified on every /v2
// request that carries one. nixreg is both the token server and the registry, so one
// Ed25519 key, generated once and kept in the data directory (mode 0600), signs and
// verifies; it survives restarts, so tokens in flight stay valid across one.
//
// A user's token carries `cred`, a short hash of the user's htpasswd entry (of its bcrypt
// hash, whose salt is new with every password set): the gate compares it with the entry
// in force, so a new password (htpasswd edited, SIGHUP) revokes every token issued under
// the old one, as removing the user does. The hash is of the whole bcrypt string, salt
// included, so it tells nobody anything to guess a password with.
//
// A verified token is remembered until it expires: signature checks cost ~60 µs, a map
// lookup nothing, and an authenticated pull must not be slower than an open one.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { closeSync, fchmodSync, fstatSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { SignJWT, jwtVerify } from 'jose';
import { LRUCache } from 'lru-cache';

export const SERVICE = 'nixreg';
const ISSUER = 'nixreg';
const ALG = 'EdDSA';
/** A token longer than this is no token of ours: refused before any parsing. */
export const MAX_TOKEN_CHARS = 8192;

/** One grant of the `access` claim, in the Docker vocabulary (pull, push, delete, *). */
export interface Grant { type: string; name: string; actions: string[] }

export interface Claims {
  sub: string | undefined;
  /** credentialTag() of the user's entry when the token was issued. */
  cred: string | undefined;
  access: Grant[];
  exp: number;
  /** Repository name → the Docker actions granted on it; made once per verified token. */
  repositories: ReadonlyMap<string, ReadonlySet<string>>;
}

export class InvalidToken extends Error {}

/** What a token names its user's credential by: 96 bits of SHA-256 of the user and their bcrypt hash. */
export function credentialTag(user: string, hash: string): string {
  return createHash('sha256').update('nixreg token credential\0').update(user).update('\0').update(hash).digest('base64url').slice(0, 16);
}

export class Tokens {
  private readonly verified = new LRUCache<string, Claims>({ max: 10_000 });

  private constructor(private readonly privateKey: KeyObject, private readonly publicKey: KeyObject, readonly kid: string) {}

  /** Opens the signing key at `path`, generating it on first use. */
  static open(path: string): Tokens {
    let pem: string;
    try {
      pem = readKey(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      writeKey(path, pem);
    }
    const privateKey = createPrivateKey(pem);
    const publicKey = createPublicKey(privateKey);
    const der = publicKey.export({ type: 'spki', format: 'der' });
    return new Tokens(privateKey, publicKey, der.subarray(-8).toString('hex'));
  }

  /** A token for `sub` (undefined: anonymous), whose credential is `cred` (credentialTag). */
  async issue(sub: string | undefined, cred: string | undefined, access: Grant[], ttlSeconds: number): Promise<{ token: string; expiresIn: number; issuedAt: string }> {
    const now = Math.floor(Date.now() / 1000);
    const jwt = new SignJWT(cred === undefined ? { access } : { access, cred })
      .setProtectedHeader({ alg: ALG, typ: 'JWT', kid: this.kid })
      .setIssuer(ISSUER)
      .setAudience(SERVICE)
      .setIssuedAt(now)
      // A little slack for the client's clock, which is not ours to trust either way.
      .setNotBefore(now - 10)
      .setExpirationTime(now + ttlSeconds)
      .setJti(randomUUID());
    if (sub !== undefined) jwt.setSubject(sub);
    return { token: await jwt.sign(this.privateKey), expiresIn: ttlSeconds, issuedAt: new Date(now * 1000).toISOString() };
  }

  /** The claims of a token this server issued and that is still valid; else InvalidToken. */
  async verify(token: string): Promise<Claims> {
    const hit = this.verified.get(token);
    if (hit) {
      if (hit.exp * 1000 > Date.now()) return hit;
      this.verified.delete(token);
      throw new InvalidToken('token expired');
    }
    if (token.length > MAX_TOKEN_CHARS) throw new InvalidToken('token too long');
    let payload;
    try {
      // jose refuses `alg: none` and any algorithm not listed; the key is ours alone.
      ({ payload } = await jwtVerify(token, this.publicKey, {
        algorithms: [ALG], issuer: ISSUER, audience: SERVICE, requiredClaims: ['exp', 'iat'],
      }));
    } catch (e) {
      throw new InvalidToken((e as { code?: string }).code === 'ERR_JWT_EXPIRED' ? 'token expired' : 'token invalid');
    }
    const access = parseAccess(payload.access);
    if (!access) throw new InvalidToken('token invalid');
    const repositories = new Map<string, Set<string>>();
    for (const g of access) {
      if (g.type !== 'repository') continue;
      const set = repositories.get(g.name) ?? new Set<string>();
      for (const a of g.actions) set.add(a);
      repositories.set(g.name, set);
    }
    const cred = typeof payload.cred === 'string' ? payload.cred : undefined;
    const claims: Claims = { sub: payload.sub, cred, access, exp: payload.exp!, repositories };
    this.verified.set(token, claims, { ttl: Math.max(1, claims.exp * 1000 - Date.now()) });
    return claims;
  }
}

function parseAccess(v: unknown): Grant[] | undefined {
  if (!Array.isArray(v) || v.length > 64) return undefined;
  const out: Grant[] = [];
  for (const g of v) {
    const { type, name, actions } = (g ?? {}) as Partial<Grant>;
    if (typeof type !== 'string' || typeof name !== 'string' || !Array.isArray(actions) || !actions.every((a) => typeof a === 'string')) return undefined;
    out.push({ type, name, actions });
  }
  return out;
}

function readKey(path: string): string {
  const fd = openSync(path, 'r');
  try {
    // A key others can read signs tokens they could forge: tighten it rather than use it as is.
    if ((fstatSync(fd).mode & 0o077) !== 0) fchmodSync(fd, 0o600);
    return readFileSync(fd, 'utf8');
  } finally { closeSync(fd); }
}

/** Written whole and renamed into place, so a crash never leaves half a key. */
function writeKey(path: string, pem: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try { writeSync(fd, pem); fsyncSync(fd); } finally { closeSync(fd); }
  renameSync(tmp, path);
}
