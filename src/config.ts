// Command-line flags and their environment variables, resolved in one place.
//
// Composition root: may import every room; no room imports it.
import { parseTrustedProxies, type TrustedProxies } from './registry/client-address.js';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { PackageSource } from './build/origins/origins.js';
import { parseCompression, type CompressionSetting } from './build/assembly/compression.js';
import { parseS3Url, type S3Location } from './blobs/store/s3-location.js';

export interface ServeConfig {
  host: string;
  port: number;
  data: string;
  images: string;
  /** Uploads untouched this long are purged (--upload-max-age seconds, env NIXREG_UPLOAD_MAX_AGE). */
  uploadMaxAgeMs: number;
  /** Base URL that users reach this server at, for links in messages (--public-url, env NIXREG_PUBLIC_URL). */
  publicUrl: string | undefined;
  /** Serve HTTPS with these PEM files (--tls-cert/--tls-key, env NIXREG_TLS_CERT/NIXREG_TLS_KEY). */
  tls: { cert: string; key: string } | undefined;
  /** The auth file (--auth, env NIXREG_AUTH); none: no authentication. */
  auth: string | undefined;
  /** Garbage collection spares what is younger (--gc-grace seconds, env NIXREG_GC_GRACE). */
  gcGraceMs: number;
  /** Collect garbage this often; 0: on demand only (--gc-interval seconds, env NIXREG_GC_INTERVAL). */
  gcIntervalMs: number;
  /** Bytes built images may use; none: no quota (--cache-max-bytes, env NIXREG_CACHE_MAX_BYTES). */
  cacheMaxBytes: number | undefined;
  /** The bearer token file for /metrics (--metrics-auth, env NIXREG_METRICS_AUTH). */
  metricsAuth: string | undefined;
  /** /readyz's free-space threshold in bytes (--min-free-space, env NIXREG_MIN_FREE_SPACE); default: min(1 GiB, 5 %). */
  minFreeSpace: number | undefined;
  /** Build what changed under --images, at start and after each change (--prebuild, env NIXREG_PREBUILD=1). */
  prebuild: boolean;
  /** Blob bodies by sendfile(2) where the addon built (off: --no-sendfile, env NIXREG_SENDFILE=0). */
  sendfile: boolean;
  /** Blobs and uploads in S3 (--storage s3://BUCKET[/PREFIX], env NIXREG_STORAGE); none: the local disk under data. */
  storage: (S3Location & { timeoutMs: number }) | undefined;
  /** Blob GETs redirect to presigned S3 URLs valid this long (--s3-redirect, env NIXREG_S3_REDIRECT=1); 0: streamed. */
  s3RedirectSeconds: number;
  /** Pull-through cache: PREFIX=URL each (--mirror, repeatable; env NIXREG_MIRROR, comma- or space-separated). */
  mirrors: string[];
  /** Upstreams with credentials, namespaces, freshness, CA (--mirror-config, env NIXREG_MIRROR_CONFIG). */
  mirrorConfig: string | undefined;
  /** The web page at / (--ui on|off, env NIXREG_UI; default on). */
  ui: boolean;
  /** The index in PostgreSQL (--database postgres://…, env NIXREG_DATABASE); none: SQLite under data. */
  database: DatabaseConfig | undefined;
}

/** --database and what goes with it. */
export interface DatabaseConfig {
  url: string;
  /** Connections at most (--database-pool, env NIXREG_DATABASE_POOL). */
  poolSize: number;
  /** Connecting, waiting for a connection, and each statement, at most (--database-timeout seconds, env NIXREG_DATABASE_TIMEOUT). */
  timeoutMs: number;
}

export interface ServeFlags {
  listen?: string; data?: string; images?: string; uploadMaxAge?: string; publicUrl?: string;
  tlsCert?: string; tlsKey?: string; auth?: string; gcGrace?: string; gcInterval?: string; cacheMaxBytes?: string;
  metricsAuth?: string; minFreeSpace?: string; prebuild?: boolean; storage?: string; s3Timeout?: string; s3Redirect?: boolean;
  mirror?: string[]; mirrorConfig?: string;
  database?: string; databasePool?: string; databaseTimeout?: string;
  /** false with --no-sendfile (commander's negated option; true otherwise). */
  sendfile?: boolean;
  ui?: string;
}

export const DEFAULTS = {
  listen: '127.0.0.1:5000', data: './data', images: './examples', uploadMaxAge: '86400', gcGrace: '3600', gcInterval: '3600',
  s3Timeout: '15', databasePool: '10', databaseTimeout: '10',
} as const;

/** How long a presigned blob URL of --s3-redirect is valid (Distribution's 20 minutes). */
export const S3_REDIRECT_SECONDS = 1200;

/** --storage and what goes with it: undefined for the local disk. */
export function storageConfig(flags: Pick<ServeFlags, 'storage' | 's3Timeout'>, env = process.env): ServeConfig['storage'] {
  const url = flags.storage ?? env.NIXREG_STORAGE;
  if (url === undefined || url === '') return undefined;
  return { ...parseS3Url(url), timeoutMs: parseSeconds(flags.s3Timeout ?? env.NIXREG_S3_TIMEOUT ?? DEFAULTS.s3Timeout, '--s3-timeout') };
}

/**
 * --database and what goes with it: undefined for the SQLite file in the data directory.
 * The URL is libpq's (postgres:// or postgresql://); it is checked here, not at the
 * first request, and never echoed back whole (it may hold a password).
 */
export function databaseConfig(flags: Pick<ServeFlags, 'database' | 'databasePool' | 'databaseTimeout'>, env = process.env): DatabaseConfig | undefined {
  const url = flags.database ?? env.NIXREG_DATABASE;
  if (url === undefined || url === '') return undefined;
  let ok = false;
  try { ok = /^postgres(ql)?:$/.test(new URL(url).protocol); } catch { /* below */ }
  if (!ok) throw new Error('--database must be a PostgreSQL URL, postgres://USER:PASSWORD@HOST[:PORT]/DATABASE');
  const pool = (flags.databasePool ?? env.NIXREG_DATABASE_POOL ?? DEFAULTS.databasePool).trim();
  if (!/^\d{1,4}$/.test(pool) || Number(pool) < 2) throw new Error(`--database-pool must be a whole number >= 2, got ${JSON.stringify(pool)}`);
  return {
    url,
    poolSize: Number(pool),
    timeoutMs: parseSeconds(flags.databaseTimeout ?? env.NIXREG_DATABASE_TIMEOUT ?? DEFAULTS.databaseTimeout, '--database-timeout'),
  };
}

/** Whole seconds, at least `min` (0 for a grace of 0, or an interval of 0 = off), in ms. */
export function parseSeconds(v: string, what: string, min = 1): number {
  if (!/^\d{1,10}$/.test(v.trim()) || Number(v) < min) throw new Error(`${what} must be a whole number of seconds >= ${min}, got ${JSON.stringify(v)}`);
  return Number(v) * 1000;
}

/**
 * A size in bytes: plain bytes (`1048576`) or a number with a unit, decimal (`60MB`,
 * `50GB`, `1.5TB`) or binary (`512MiB`, `2GiB`); `B`, `KB`…`TB`, `KiB`…`TiB`, any case.
 */
export function parseSize(v: string, what: string): number {
  const m = /^\s*(\d{1,15}(?:\.\d{1,6})?)\s*([kmgt]i?)?b?\s*$/i.exec(v);
  const unit = m?.[2]?.toLowerCase() ?? '';
  const scale = unit === '' ? 1 : (unit.endsWith('i') ? 1024 : 1000) ** (' kmgt'.indexOf(unit[0]!));
  const n = m ? Math.floor(Number(m[1]) * scale) : NaN;
  if (!Number.isSafeInteger(n) || n < 0 || (unit === '' && m![1]!.includes('.'))) {
    throw new Error(`${what} must be a size such as 60MB, 50GB, 512MiB or a number of bytes, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** An on/off environment variable: 1/true/yes/on or 0/false/no/off (unset or empty: `unset`). */
export function parseSwitch(v: string | undefined, what: string, unset = false): boolean {
  if (v === undefined || v === '') return unset;
  const s = v.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(s)) return true;
  if (['0', 'false', 'no', 'off'].includes(s)) return false;
  throw new Error(`${what} must be 1 or 0 (true/false, yes/no, on/off), got ${JSON.stringify(v)}`);
}

export function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(v);
  if (!m) throw new Error(`--listen must be HOST:PORT, got ${JSON.stringify(v)}`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port out of range in ${JSON.stringify(v)}`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export function serveConfig(flags: ServeFlags, env = process.env): ServeConfig {
  const listen = flags.listen ?? env.NIXREG_LISTEN ?? DEFAULTS.listen;
  const publicUrl = flags.publicUrl ?? env.NIXREG_PUBLIC_URL;
  if (publicUrl !== undefined && !/^https?:\/\/[^\s/]+$/.test(publicUrl)) {
    throw new Error(`--public-url must be http(s)://host[:port] with no path, got ${JSON.stringify(publicUrl)}`);
  }
  const cert = flags.tlsCert ?? env.NIXREG_TLS_CERT;
  const key = flags.tlsKey ?? env.NIXREG_TLS_KEY;
  if ((cert === undefined) !== (key === undefined)) throw new Error('--tls-cert and --tls-key go together: give both or neither');
  const auth = flags.auth ?? env.NIXREG_AUTH;
  const cacheMax = flags.cacheMaxBytes ?? env.NIXREG_CACHE_MAX_BYTES;
  const metricsAuth = flags.metricsAuth ?? env.NIXREG_METRICS_AUTH;
  const minFreeSpace = flags.minFreeSpace ?? env.NIXREG_MIN_FREE_SPACE;
  const storage = storageConfig(flags, env);
  const redirect = flags.s3Redirect ?? parseSwitch(env.NIXREG_S3_REDIRECT, 'NIXREG_S3_REDIRECT');
  if (redirect && !storage) throw new Error('--s3-redirect needs --storage s3://…: blobs on the local disk have no URL to redirect to');
  const mirrorConfig = flags.mirrorConfig ?? env.NIXREG_MIRROR_CONFIG;
  return {
    mirrors: flags.mirror?.length ? flags.mirror : (env.NIXREG_MIRROR ?? '').split(/[\s,]+/).filter((s) => s !== ''),
    mirrorConfig: mirrorConfig !== undefined && mirrorConfig !== '' ? resolve(mirrorConfig) : undefined,
    storage,
    database: databaseConfig(flags, env),
    s3RedirectSeconds: redirect ? S3_REDIRECT_SECONDS : 0,
    gcGraceMs: parseSeconds(flags.gcGrace ?? env.NIXREG_GC_GRACE ?? DEFAULTS.gcGrace, '--gc-grace', 0),
    gcIntervalMs: parseSeconds(flags.gcInterval ?? env.NIXREG_GC_INTERVAL ?? DEFAULTS.gcInterval, '--gc-interval', 0),
    cacheMaxBytes: cacheMax !== undefined ? parseSize(cacheMax, '--cache-max-bytes') : undefined,
    publicUrl,
    tls: cert !== undefined && key !== undefined ? { cert: resolve(cert), key: resolve(key) } : undefined,
    auth: auth !== undefined ? resolve(auth) : undefined,
    metricsAuth: metricsAuth !== undefined ? resolve(metricsAuth) : undefined,
    minFreeSpace: minFreeSpace !== undefined ? parseSize(minFreeSpace, '--min-free-space') : undefined,
    prebuild: flags.prebuild ?? parseSwitch(env.NIXREG_PREBUILD, 'NIXREG_PREBUILD'),
    // Off wins from either side: the flag cannot turn on what the variable turned off.
    sendfile: flags.sendfile !== false && parseSwitch(env.NIXREG_SENDFILE, 'NIXREG_SENDFILE', true),
    ui: parseSwitch(flags.ui ?? env.NIXREG_UI, flags.ui !== undefined ? '--ui' : 'NIXREG_UI', true),
    ...parseListen(listen),
    data: resolve(flags.data ?? env.NIXREG_DATA ?? DEFAULTS.data),
    images: resolve(flags.images ?? env.NIXREG_IMAGES ?? DEFAULTS.images),
    uploadMaxAgeMs: parseSeconds(flags.uploadMaxAge ?? env.NIXREG_UPLOAD_MAX_AGE ?? DEFAULTS.uploadMaxAge, '--upload-max-age'),
  };
}

/** Build-on-pull settings, shared by `serve` and `build`. */
export interface BuildConfig {
  buildTimeoutMs: number;
  /** A pull waits this long for a build, then gets 429 with Retry-After (--pull-wait, env NIXREG_PULL_WAIT). */
  pullWaitMs: number;
  /** The package set of package-list images (--packages, env NIXREG_PACKAGES); none: off. */
  packages?: string | undefined;
  maxBuilds: number;
  evalTtlMs: number;
  negativeTtlMs: number;
  /** How layers are compressed (--layer-compression, --gzip-level). */
  compression: CompressionSetting;
}

export interface BuildFlags {
  buildTimeout?: string; maxBuilds?: string; evalTtl?: string; negativeTtl?: string; pullWait?: string; packages?: string;
  layerCompression?: string; gzipLevel?: string;
}

/**
 * --pull-wait 25: below the 30 s that containerd (>= 2.3, so most Kubernetes nodes)
 * gives a registry to send response headers before it drops the request.
 */
export const BUILD_DEFAULTS = {
  buildTimeout: '600', maxBuilds: '2', evalTtl: '10', negativeTtl: '30', pullWait: '25', layerCompression: 'gzip', gzipLevel: '6',
} as const;

/** --packages, checked now (a typo is a start-up error, not a failing pull). */
function packagesOf(v: string | undefined): { packages?: string } {
  if (v === undefined || v === '') return {};
  PackageSource.parse(v);
  return { packages: v };
}

export function buildConfig(flags: BuildFlags, env = process.env): BuildConfig {
  const secs = (v: string, what: string) => {
    // 0 is allowed for the TTLs: it turns the cache off.
    if (!/^\d{1,7}(\.\d{1,3})?$/.test(v.trim())) throw new Error(`${what} must be a number of seconds, got ${JSON.stringify(v)}`);
    return Math.round(Number(v) * 1000);
  };
  const maxBuilds = flags.maxBuilds ?? env.NIXREG_MAX_BUILDS ?? BUILD_DEFAULTS.maxBuilds;
  if (!/^\d{1,3}$/.test(maxBuilds.trim()) || Number(maxBuilds) < 1) throw new Error(`--max-builds must be a whole number >= 1, got ${JSON.stringify(maxBuilds)}`);
  const buildTimeoutMs = secs(flags.buildTimeout ?? env.NIXREG_BUILD_TIMEOUT ?? BUILD_DEFAULTS.buildTimeout, '--build-timeout');
  if (buildTimeoutMs < 1000) throw new Error('--build-timeout must be at least 1 second');
  return {
    buildTimeoutMs,
    pullWaitMs: parseSeconds(flags.pullWait ?? env.NIXREG_PULL_WAIT ?? BUILD_DEFAULTS.pullWait, '--pull-wait'),
    ...packagesOf(flags.packages ?? env.NIXREG_PACKAGES),
    maxBuilds: Number(maxBuilds),
    evalTtlMs: secs(flags.evalTtl ?? env.NIXREG_EVAL_TTL ?? BUILD_DEFAULTS.evalTtl, '--eval-ttl'),
    negativeTtlMs: secs(flags.negativeTtl ?? env.NIXREG_NEGATIVE_TTL ?? BUILD_DEFAULTS.negativeTtl, '--negative-ttl'),
    compression: parseCompression(flags.layerCompression ?? env.NIXREG_LAYER_COMPRESSION ?? BUILD_DEFAULTS.layerCompression,
      flags.gzipLevel ?? env.NIXREG_GZIP_LEVEL ?? BUILD_DEFAULTS.gzipLevel),
  };
}

/** What clients may hold: connections, time without progress, memory, uploads. */
export interface LimitsConfig {
  headersMs: number;
  idleMs: number;
  bodyMs: number;
  maxConnections: number;
  /** Connections one client address may hold open; more get the same 503 as past maxConnections. */
  maxConnectionsPerClient: number;
  manifestMemoryBytes: number;
  /** A body read into memory (a manifest, a token form, a build request) must arrive in full within this. */
  manifestTimeoutMs: number;
  uploadsPerRepo: number;
  uploadsPerClient: number;
  uploads: number;
  /** Bytes per second an upload body must average over each window; 0: no check (--min-upload-rate). */
  minUploadRate: number;
  /** The window of minUploadRate (--upload-rate-window seconds). */
  uploadRateWindowMs: number;
  /** How long a lingering close may last (src/registry/connections.ts); no flag, tests shorten it. */
  lingerMs?: number;
  /** Proxies whose X-Forwarded-For names the client (--trusted-proxies; src/registry/client-address.ts). */
  trustedProxies: TrustedProxies;
}

export interface LimitFlags {
  headerTimeout?: string; idleTimeout?: string; bodyTimeout?: string; maxConnections?: string; maxConnectionsPerClient?: string;
  manifestMemory?: string; manifestTimeout?: string; maxUploadsPerRepo?: string; maxUploadsPerClient?: string; maxUploads?: string;
  minUploadRate?: string; uploadRateWindow?: string; trustedProxies?: string;
}

export const LIMIT_DEFAULTS = {
  headerTimeout: '30', idleTimeout: '60', bodyTimeout: '60', manifestMemory: '128', manifestTimeout: '60',
  maxUploadsPerRepo: '100', maxUploadsPerClient: '100', maxUploads: '10000',
  // 1 KiB/s is 8 kbit/s, below any link a registry client pushes over, even one shared by
  // a few parallel layer uploads; Apache's mod_reqtimeout asks 500 B/s by default. The
  // window rides out a stall of most of half a minute.
  minUploadRate: '1KiB', uploadRateWindow: '30',
} as const;

/**
 * 4096 connections, or fewer when the process may not open that many files: each
 * connection is a descriptor, and blob files, the index and Nix need theirs too.
 */
export function defaultMaxConnections(): number {
  let soft = Infinity;
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m && m[1] !== 'unlimited') soft = Number(m[1]);
  } catch { /* not Linux: keep the default */ }
  return Math.max(16, Math.min(4096, soft - 256));
}

/**
 * A quarter of the connection cap: it takes four addresses to fill the cap, and one
 * address still has room for a NAT gateway in front of many busy hosts (1024 of the
 * default 4096, where a docker pull opens a handful). Scales with a cap lowered by
 * the open-file limit.
 */
export function defaultConnectionsPerClient(maxConnections: number): number {
  return Math.max(1, Math.floor(maxConnections / 4));
}

export function limitsConfig(flags: LimitFlags, env = process.env): LimitsConfig {
  const whole = (v: string, what: string, min = 1) => {
    if (!/^\d{1,9}$/.test(v.trim()) || Number(v) < min) throw new Error(`${what} must be a whole number >= ${min}, got ${JSON.stringify(v)}`);
    return Number(v);
  };
  const pick = (k: keyof LimitFlags, envName: string, def: string) => flags[k] ?? env[envName] ?? def;
  const maxConnections = whole(pick('maxConnections', 'NIXREG_MAX_CONNECTIONS', String(defaultMaxConnections())), '--max-connections');
  return {
    headersMs: parseSeconds(pick('headerTimeout', 'NIXREG_HEADER_TIMEOUT', LIMIT_DEFAULTS.headerTimeout), '--header-timeout'),
    idleMs: parseSeconds(pick('idleTimeout', 'NIXREG_IDLE_TIMEOUT', LIMIT_DEFAULTS.idleTimeout), '--idle-timeout'),
    bodyMs: parseSeconds(pick('bodyTimeout', 'NIXREG_BODY_TIMEOUT', LIMIT_DEFAULTS.bodyTimeout), '--body-timeout'),
    maxConnections,
    maxConnectionsPerClient: whole(pick('maxConnectionsPerClient', 'NIXREG_MAX_CONNECTIONS_PER_CLIENT',
      String(defaultConnectionsPerClient(maxConnections))), '--max-connections-per-client'),
    manifestMemoryBytes: whole(pick('manifestMemory', 'NIXREG_MANIFEST_MEMORY', LIMIT_DEFAULTS.manifestMemory), '--manifest-memory', 4) * 1024 * 1024,
    manifestTimeoutMs: parseSeconds(pick('manifestTimeout', 'NIXREG_MANIFEST_TIMEOUT', LIMIT_DEFAULTS.manifestTimeout), '--manifest-timeout'),
    uploadsPerRepo: whole(pick('maxUploadsPerRepo', 'NIXREG_MAX_UPLOADS_PER_REPO', LIMIT_DEFAULTS.maxUploadsPerRepo), '--max-uploads-per-repo'),
    uploadsPerClient: whole(pick('maxUploadsPerClient', 'NIXREG_MAX_UPLOADS_PER_CLIENT', LIMIT_DEFAULTS.maxUploadsPerClient), '--max-uploads-per-client'),
    uploads: whole(pick('maxUploads', 'NIXREG_MAX_UPLOADS', LIMIT_DEFAULTS.maxUploads), '--max-uploads'),
    // "1KiB/s" reads as well as "1KiB": the unit is per second either way.
    minUploadRate: parseSize(pick('minUploadRate', 'NIXREG_MIN_UPLOAD_RATE', LIMIT_DEFAULTS.minUploadRate).replace(/\/s\s*$/i, ''), '--min-upload-rate'),
    uploadRateWindowMs: parseSeconds(pick('uploadRateWindow', 'NIXREG_UPLOAD_RATE_WINDOW', LIMIT_DEFAULTS.uploadRateWindow), '--upload-rate-window'),
    trustedProxies: parseTrustedProxies(pick('trustedProxies', 'NIXREG_TRUSTED_PROXIES', '')),
  };
}
