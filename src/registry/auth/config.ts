// The auth file (--auth): its schema, and reading it with the htpasswd file it names.
// The schema is zot's `accessControl`, so that users who know zot can bring theirs; the
// file is read whole at start and on SIGHUP, and any fault in it is one line naming the
// key (or the htpasswd line), because an operator reads it in a failed unit's status.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { FailedLoginLimit } from './logins.js';

export const ACTIONS = ['read', 'create', 'update', 'delete'] as const;
export type Action = (typeof ACTIONS)[number];

const Names = z.array(z.string().min(1).max(256)).max(10_000);
const Actions = z.array(z.enum(ACTIONS)).max(ACTIONS.length * 4);
/** zot's globs: `*` stays within one path component, `**` crosses them. */
const Pattern = z.string().regex(/^[a-z0-9._\-/*?]{1,256}$/, 'a repository pattern uses a-z 0-9 . _ - / and the globs * ** ?');

const Policy = z.strictObject({ users: Names.optional(), groups: Names.optional(), actions: Actions });

const Schema = z.strictObject({
  /** bcrypt lines as `htpasswd -B` writes them; relative to the auth file. */
  htpasswd: z.string().min(1).optional(),
  accessControl: z.strictObject({
    groups: z.record(z.string().min(1).max(256), z.strictObject({ users: Names })).optional(),
    repositories: z.record(Pattern, z.strictObject({
      policies: z.array(Policy).max(1000).optional(),
      /** Any signed-in user. */
      defaultPolicy: Actions.optional(),
      /** Requests without credentials. */
      anonymousPolicy: Actions.optional(),
    })).optional(),
    /** Actions on every repository, and the right to nixreg's operator endpoints. */
    adminPolicy: z.strictObject({ users: Names.optional(), groups: Names.optional(), actions: Actions }).optional(),
  }).optional(),
  token: z.strictObject({
    /** Lifetime of an issued token, seconds. Short: one token cannot be revoked alone, only with its user or password. */
    ttl: z.number().int().min(30).max(86_400).optional(),
  }).optional(),
  failedLogins: z.strictObject({
    /** Failed logins of one user from one client address within `window` seconds before that user waits there. */
    max: z.number().int().min(1).max(100_000).optional(),
    /** Failed logins from one client address, whatever the users, before the address waits (default 10 × max). */
    perAddress: z.number().int().min(1).max(1_000_000).optional(),
    window: z.number().int().min(1).max(86_400).optional(),
  }).optional(),
});

export type AuthFile = z.infer<typeof Schema>;

export interface AuthConfig {
  file: string;
  accessControl: NonNullable<AuthFile['accessControl']>;
  /** user → bcrypt hash */
  users: Map<string, string>;
  tokenTtlSeconds: number;
  failedLogins: FailedLoginLimit;
}

/** A fault in the auth file or its htpasswd file; the message is the one line to print. */
export class AuthConfigError extends Error {}

const MAX_FILE = 16 * 1024 * 1024;

function readText(path: string, what: string): string {
  let size: number;
  try { size = statSync(path).size; } catch (e) { throw new AuthConfigError(`${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`); }
  if (size > MAX_FILE) throw new AuthConfigError(`${what} ${path}: larger than ${MAX_FILE} bytes`);
  return readFileSync(path, 'utf8');
}

/** Reads and validates the auth file at `path` and the htpasswd file it names. */
export function loadAuthConfig(path: string): AuthConfig {
  const file = resolve(path);
  const text = readText(file, 'auth file');
  let raw: unknown;
  try {
    // YAML is a superset of JSON: one parser reads both. Duplicate keys are an error, not a silent overwrite.
    raw = parseYaml(text, { uniqueKeys: true, maxAliasCount: 100 });
  } catch (e) {
    throw new AuthConfigError(`auth file ${file}: not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`);
  }
  const parsed = Schema.safeParse(raw ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = issue.path.length ? issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${JSON.stringify(String(p)).slice(1, -1)}`)).join('').replace(/^\./, '') : '(top level)';
    const unknown = issue.code === 'unrecognized_keys' ? `: unknown key ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}` : '';
    throw new AuthConfigError(`auth file ${file}: ${key}: ${unknown ? unknown.slice(2) : issue.message}`);
  }
  const cfg = parsed.data;
  const users = cfg.htpasswd ? readHtpasswd(resolve(dirname(file), cfg.htpasswd)) : new Map<string, string>();
  return {
    file,
    accessControl: cfg.accessControl ?? {},
    users,
    tokenTtlSeconds: cfg.token?.ttl ?? 300,
    failedLogins: {
      max: cfg.failedLogins?.max ?? 10,
      // Spraying (one guess at each of many users) is what this bounds; a proxy's users mistype too.
      perAddress: cfg.failedLogins?.perAddress ?? 10 * (cfg.failedLogins?.max ?? 10),
      windowMs: (cfg.failedLogins?.window ?? 60) * 1000,
    },
  };
}

/** `user:$2y$…` lines; only bcrypt, the one htpasswd format that is still safe to accept. */
export function readHtpasswd(path: string): Map<string, string> {
  const users = new Map<string, string>();
  const lines = readText(path, 'htpasswd file').split(/\r?\n/);
  for (const [i, line] of lines.entries()) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const at = `htpasswd file ${path} line ${i + 1}`;
    const colon = line.indexOf(':');
    if (colon < 1) throw new AuthConfigError(`${at}: expected user:hash`);
    const user = line.slice(0, colon);
    const hash = line.slice(colon + 1).trim();
    if (!/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(hash)) {
      throw new AuthConfigError(`${at}: the hash of ${JSON.stringify(user)} is not bcrypt; write it with \`htpasswd -B\``);
    }
    if (users.has(user)) throw new AuthConfigError(`${at}: user ${JSON.stringify(user)} appears twice`);
    users.set(user, hash);
  }
  return users;
}
