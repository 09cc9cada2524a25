// The bearer token a Prometheus server scrapes /metrics with (--metrics-auth FILE): one
// line in a file, the same file Prometheus's `authorization: { credentials_file: … }`
// sends, re-read on SIGHUP and compared in constant time. It opens /metrics and nothing
// else; the gate it wraps decides every other request, and with --auth an admin may read
// /metrics as well.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { NextFunction, Request, Response } from 'express';
import { RegistryError } from '../errors.js';
import type { Gate } from './gate.js';

/** A token file that cannot be read or holds no usable token: a configuration error. */
export class MetricsTokenError extends Error {}

/** Shorter tokens are guessable; longer ones are no token anyone writes. */
const MIN_CHARS = 16;
const MAX_CHARS = 4096;

export class MetricsToken {
  private digest: Buffer;

  constructor(readonly path: string) { this.digest = read(path); }

  /** Re-reads the file; a faulty one throws and the token in force stays. */
  reload(): void { this.digest = read(this.path); }

  matches(presented: string): boolean {
    // Equal-length digests: the comparison takes the same time whatever was presented.
    return timingSafeEqual(sha256(presented), this.digest);
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function read(path: string): Buffer {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new MetricsTokenError(`metrics auth file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const token = text.trim();
  // Never the token itself in the message: it ends up in logs and terminals.
  if (!/^[\x21-\x7e]*$/.test(token)) throw new MetricsTokenError(`metrics auth file ${path}: the token must be one line of printable characters without spaces`);
  if (token.length < MIN_CHARS || token.length > MAX_CHARS) {
    throw new MetricsTokenError(`metrics auth file ${path}: the token has ${token.length} characters; it needs ${MIN_CHARS} to ${MAX_CHARS}`);
  }
  return sha256(token);
}

/** `gate`, with /metrics (access 'metrics') also open to the bearer of `token`. */
export function withMetricsToken(gate: Gate, token: MetricsToken): Gate {
  return {
    enabled: gate.enabled,
    guard(access) {
      const inner = gate.guard(access);
      if (access !== 'metrics') return inner;
      return (req: Request, res: Response, next: NextFunction) => {
        const presented = bearerOf(req);
        if (presented !== undefined && token.matches(presented)) { next(); return undefined; }
        // With --auth, an admin signed in as for /nixreg/stats; a wrong static token is
        // then no JWT either, and the gate says so.
        if (gate.enabled) return inner(req, res, next);
        const e = new RegistryError('UNAUTHORIZED', presented === undefined ? 'authentication required to read metrics' : 'metrics token invalid');
        e.headers['WWW-Authenticate'] = `Bearer realm="nixreg metrics"${presented === undefined ? '' : ',error="invalid_token"'}`;
        throw e;
      };
    },
    may: (req, repo, action) => gate.may(req, repo, action),
    visible: (req, repo) => gate.visible(req, repo),
    user: (req) => gate.user(req),
    need: (req, repo, action) => gate.need(req, repo, action),
    client: (req) => gate.client(req),
    token: (req, res, form) => gate.token(req, res, form),
  };
}

/** The credentials of `Authorization: Bearer …`, if that is the one Authorization header. */
function bearerOf(req: Request): string | undefined {
  let count = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === 'authorization') count++;
  // As in the gate: which of two headers a proxy in front would honour is anyone's guess.
  if (count > 1) throw new RegistryError('UNAUTHORIZED', 'send one Authorization header', undefined, 400);
  const m = /^bearer +(\S+) *$/i.exec(req.headers.authorization ?? '');
  return m ? m[1] : undefined;
}
