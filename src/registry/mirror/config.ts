// The pull-through cache's configuration: the upstream registries nixreg mirrors, from
// `--mirror PREFIX=URL` and the `--mirror-config` file (YAML or JSON), validated into one
// list. Credentials are read here and held only by upstream.ts; nothing else sees them.
// Any fault is one line naming the key, as for the auth file (auth/config.ts).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

/** A local repository-name prefix: one or more path components of the spec's name grammar. */
const PREFIX = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
/** How long a cached tag is trusted before a HEAD upstream checks it, by default. */
export const DEFAULT_FRESHNESS_SECONDS = 60;
/** An upstream that has not answered (headers, or the next body bytes) within this is given up on, by default. */
export const DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 30;

const Upstream = z.strictObject({
  /** Local names `<prefix>/<name>` are `<name>` upstream. */
  prefix: z.string().max(128).regex(PREFIX, 'a prefix is a repository name such as dockerhub or mirrors/ghcr'),
  url: z.string().max(2048).url(),
  /** Registries this upstream mirrors for containerd's `?ns=` (e.g. docker.io). */
  namespaces: z.array(z.string().min(1).max(253).regex(/^[a-zA-Z0-9.\-:[\]]+$/, 'a registry host[:port]')).max(100).optional(),
  username: z.string().min(1).max(1024).optional(),
  password: z.string().max(4096).optional(),
  /** A file holding the password (first line), relative to the config file: keeps the secret out of it. */
  passwordFile: z.string().min(1).optional(),
  /** Seconds a cached tag is served without asking upstream. */
  freshness: z.number().int().min(0).max(31_536_000).optional(),
  /** Seconds an upstream may take to answer, or between body bytes. */
  timeout: z.number().int().min(1).max(3600).optional(),
  /** PEM CA certificate(s) to trust for this upstream's TLS, relative to the config file. */
  caFile: z.string().min(1).optional(),
});

const Schema = z.strictObject({ upstreams: z.array(Upstream).max(1000) });

export type MirrorFile = z.infer<typeof Schema>;

/** One upstream registry, as the mirror uses it. */
export interface Upstream {
  prefix: string;
  /** scheme://host[:port], no path, no credentials. */
  origin: string;
  namespaces: string[];
  credentials?: { username: string; password: string } | undefined;
  freshnessMs: number;
  timeoutMs: number;
  /** PEM of the CAs to trust instead of the system's. */
  ca?: Buffer | undefined;
}

/** A fault in --mirror or the mirror file; the message is the one line to print. */
export class MirrorConfigError extends Error {}

const MAX_FILE = 1024 * 1024;

function read(path: string, what: string): Buffer {
  try {
    if (statSync(path).size > MAX_FILE) throw new MirrorConfigError(`${what} ${path}: larger than ${MAX_FILE} bytes`);
    return readFileSync(path);
  } catch (e) {
    if (e instanceof MirrorConfigError) throw e;
    throw new MirrorConfigError(`${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The origin of an upstream URL; a path or credentials in it are refused (credentials belong in the file). */
function originOf(url: string, where: string): string {
  let u: URL;
  try { u = new URL(url); } catch { throw new MirrorConfigError(`${where}: not a URL`); }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new MirrorConfigError(`${where}: must be http(s)://host[:port]`);
  if (u.username || u.password) throw new MirrorConfigError(`${where}: credentials go in the mirror file (username, password), not in the URL`);
  if (u.pathname !== '/' || u.search || u.hash) throw new MirrorConfigError(`${where}: must be http(s)://host[:port] with no path`);
  return u.origin;
}

/** `PREFIX=URL` of --mirror. */
export function parseMirrorFlag(v: string): Upstream {
  const eq = v.indexOf('=');
  const prefix = v.slice(0, eq);
  if (eq < 1 || !PREFIX.test(prefix)) throw new MirrorConfigError(`--mirror must be PREFIX=URL with a repository-name prefix, got ${JSON.stringify(v.slice(0, 200))}`);
  return {
    prefix, origin: originOf(v.slice(eq + 1), `--mirror ${prefix}`), namespaces: [],
    freshnessMs: DEFAULT_FRESHNESS_SECONDS * 1000, timeoutMs: DEFAULT_UPSTREAM_TIMEOUT_SECONDS * 1000,
  };
}

/** Reads and validates the mirror file. */
export function loadMirrorFile(path: string): Upstream[] {
  const file = resolve(path);
  const text = read(file, 'mirror file').toString('utf8');
  let raw: unknown;
  try { raw = parseYaml(text, { uniqueKeys: true }); } catch (e) {
    throw new MirrorConfigError(`mirror file ${file}: ${(e as Error).message.split('\n')[0]}`);
  }
  const r = Schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new MirrorConfigError(`mirror file ${file}: ${issue.path.join('.') || '(top)'}: ${issue.message}`);
  }
  const dir = dirname(file);
  return r.data.upstreams.map((u, i) => {
    const where = `mirror file ${file}: upstreams.${i}`;
    if (u.password !== undefined && u.passwordFile !== undefined) throw new MirrorConfigError(`${where}: password and passwordFile: give one`);
    const password = u.passwordFile !== undefined
      ? read(resolve(dir, u.passwordFile), `${where}.passwordFile`).toString('utf8').split('\n')[0]!.replace(/\r$/, '')
      : u.password;
    if ((u.username === undefined) !== (password === undefined)) throw new MirrorConfigError(`${where}: username and password go together`);
    return {
      prefix: u.prefix,
      origin: originOf(u.url, `${where}.url`),
      namespaces: (u.namespaces ?? []).map((n) => n.toLowerCase()),
      credentials: u.username !== undefined ? { username: u.username, password: password! } : undefined,
      freshnessMs: (u.freshness ?? DEFAULT_FRESHNESS_SECONDS) * 1000,
      timeoutMs: (u.timeout ?? DEFAULT_UPSTREAM_TIMEOUT_SECONDS) * 1000,
      ca: u.caFile !== undefined ? read(resolve(dir, u.caFile), `${where}.caFile`) : undefined,
    };
  });
}

/**
 * Every upstream of the flags and the file. A prefix may not be claimed twice, nor lie
 * inside another's (`hub` and `hub/x` would both own `hub/x/y`), nor a namespace.
 */
export function mirrorUpstreams(flags: string[], file: string | undefined): Upstream[] {
  const all = [...flags.map(parseMirrorFlag), ...(file !== undefined ? loadMirrorFile(file) : [])];
  for (const [i, a] of all.entries()) {
    for (const b of all.slice(i + 1)) {
      if (a.prefix === b.prefix || b.prefix.startsWith(`${a.prefix}/`) || a.prefix.startsWith(`${b.prefix}/`)) {
        throw new MirrorConfigError(`mirror prefixes ${a.prefix} and ${b.prefix} overlap`);
      }
      const shared = a.namespaces.find((n) => b.namespaces.includes(n));
      if (shared) throw new MirrorConfigError(`namespace ${shared} is mirrored by both ${a.prefix} and ${b.prefix}`);
    }
  }
  return all;
}
