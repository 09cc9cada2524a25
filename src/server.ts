// Starts and stops the registry: storage, the optional image source, the HTTP(S) server
// and the gate; and reloads the certificate, the auth file and the metrics token in
// place (SIGHUP).
//
// Composition root: may import every room; no room imports it.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createSecureContext } from 'node:tls';
import type { Request } from 'express';
import { Storage, type StorageOptions } from './blobs/storage.js';
import type { Logger } from './log.js';
import { limitsConfig, type LimitsConfig } from './config.js';
import { createApp } from './registry/app.js';
import { settleClient } from './registry/client-address.js';
import { limitConnections } from './registry/connections.js';
import type { ImageSource } from './build/image-source.js';
import { AuthGate, openGate } from './registry/auth/gate.js';
import { MetricsToken, withMetricsToken } from './registry/auth/metrics-token.js';
import { loadAuthConfig } from './registry/auth/config.js';
import { Tokens } from './registry/auth/tokens.js';
import { mirrorUpstreams } from './registry/mirror/config.js';
import { Mirror } from './registry/mirror/mirror.js';

export interface RunningRegistry {
  server: Server;
  storage: Storage;
  url: string;
  /** Re-reads the certificate, the auth file and the metrics token; a faulty one is reported and the old kept. */
  reload(): { reloaded: string[]; failed: string[] };
  close(): Promise<void>;
}

/** PEM files of the server certificate (chain) and its key. */
export interface TlsFiles { cert: string; key: string }

export interface StartOptions {
  host: string;
  port: number;
  data: string;
  log: Logger;
  /** Storage tuning (upload max age, cache sizes). */
  storage?: StorageOptions;
  /** Timeouts and bounds (config.ts; defaults for any left out). */
  limits?: Partial<LimitsConfig>;
  /** Serve HTTPS with this certificate (re-read by reload()). */
  tls?: TlsFiles | undefined;
  /** The auth file (src/registry/auth/config.ts); without one every request is allowed. */
  auth?: string | undefined;
  /** Where clients reach this server, for the token realm; else the Host of each request. */
  publicUrl?: string | undefined;
  /** A file holding the bearer token that may read /metrics (re-read by reload()). */
  metricsAuth?: string | undefined;
  /** /readyz: free bytes below which the data directory counts as full. */
  minFreeSpace?: number | undefined;
  /** Builds the image source once storage is open (build-on-pull). */
  source?: (storage: Storage) => ImageSource | undefined;
  /** Blob bodies by sendfile(2) where possible; default true; the CLI's --no-sendfile (registry/zero-copy.ts). */
  sendfile?: boolean | undefined;
  /** Blob GETs redirect to the store's presigned URLs valid this long (--s3-redirect); 0/undefined: streamed. */
  blobRedirectSeconds?: number | undefined;
  /** Pull-through cache: `PREFIX=URL`s of --mirror, and the --mirror-config file (registry/mirror/config.ts). */
  mirror?: { flags: string[]; file?: string | undefined } | undefined;
  /** The web page at /; default true (--ui). */
  ui?: boolean | undefined;
}

export async function startRegistry(opts: StartOptions): Promise<RunningRegistry> {
  const storage = await Storage.open(opts.data, opts.storage);
  const source = opts.source?.(storage);
  const limits = { ...limitsConfig({}), ...opts.limits };
  const tls = opts.tls;
  let gate: AuthGate | undefined;
  let metricsToken: MetricsToken | undefined;
  let server: Server;
  let mirror: Mirror | undefined;
  try {
    // All read before anything listens: a bad file fails the start, not the first request.
    const authConfig = opts.auth !== undefined ? loadAuthConfig(opts.auth) : undefined;
    const secure = tls ? readTls(tls) : undefined;
    const upstreams = opts.mirror ? mirrorUpstreams(opts.mirror.flags, opts.mirror.file) : [];
    if (upstreams.length) mirror = new Mirror(upstreams, storage, opts.log);
    if (opts.metricsAuth !== undefined) metricsToken = new MetricsToken(opts.metricsAuth);
    if (authConfig) gate = new AuthGate(authConfig, Tokens.open(storage.layout.tokenKeyPath), (req) => realmBase(req, opts.publicUrl, !!tls), opts.log);
    server = secure
      ? createHttpsServer({ ...secure, handshakeTimeout: limits.headersMs }) as unknown as Server
      : createServer();
  } catch (e) {
    await source?.close();
    await storage.close();
    throw e;
  }
  const connections = limitConnections(server, { ...limits, tls: !!tls });
  // Expect: 100-continue. Node writes the 100 at once, but while the previous response on
  // a kept-alive connection is still being flushed it queues it, and a response sent in
  // one piece then goes out as its headers, the 100, its body: a framing error for the
  // client (seen in the fuzz). A request without content needs no 100 (RFC 9110 §10.1.1).
  server.on('checkContinue', (req, res) => {
    const te = req.headers['transfer-encoding'];
    const cl = req.headers['content-length'];
    if (te !== undefined || (cl !== undefined && cl !== '0')) res.writeContinue();
    server.emit('request', req, res);
  });
  // When the last request came, so that garbage collection stands back while requests
  // come. Not a count in flight: a cached manifest GET starts and ends in one callback.
  let lastRequest = 0;
  server.on('request', (req) => {
    settleClient(req, limits.trustedProxies);
    // A collection asked for over HTTP is not traffic it should stand back for.
    if (!req.url?.startsWith('/nixreg/gc')) lastRequest = performance.now();
  });
  storage.busy = () => performance.now() - lastRequest < 200;
  server.on('request', createApp({
    storage, source, log: opts.log, limits, counters: () => ({ connections }), minFreeBytes: opts.minFreeSpace, sendfile: opts.sendfile,
    blobRedirectSeconds: opts.blobRedirectSeconds, mirror, ui: opts.ui,
    gate: metricsToken ? withMetricsToken(gate ?? openGate, metricsToken) : gate,
  }));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => { server.off('error', reject); resolve(); });
  });
  // For `nixreg gc`, which must not collect behind a running server's back.
  try { writeFileSync(storage.layout.pidPath, `${process.pid}\n`); } catch { /* a full disk: gc --dry-run still works */ }
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  let closing: Promise<void> | undefined;
  return {
    server,
    storage,
    url: `${tls ? 'https' : 'http'}://${host}:${addr.port}`,
    reload() {
      const reloaded: string[] = [];
      const failed: string[] = [];
      if (tls) {
        // Connections keep the context they were made with; new ones get the new one.
        try { (server as unknown as { setSecureContext(o: object): void }).setSecureContext(readTls(tls)); reloaded.push(`certificate ${tls.cert}`); }
        catch (e) { failed.push(`certificate ${tls.cert}: ${(e as Error).message}`); }
      }
      if (gate && opts.auth !== undefined) {
        try { gate.replace(loadAuthConfig(opts.auth)); reloaded.push(`auth file ${opts.auth}`); }
        catch (e) { failed.push((e as Error).message); }
      }
      if (metricsToken) {
        try { metricsToken.reload(); reloaded.push(`metrics auth file ${metricsToken.path}`); }
        catch (e) { failed.push((e as Error).message); }
      }
      return { reloaded, failed };
    },
    close() {
      closing ??= (async () => {
        // In-flight requests finish; idle keep-alive sockets are closed so close() returns.
        const done = new Promise<void>((r) => server.close(() => r()));
        server.closeIdleConnections();
        // A response the client has read in full may not have ended yet on this side
        // (a file sent chunk by chunk ends after its last write), so its keep-alive
        // connection turns idle only after the call above: keep closing what turns idle.
        const sweep = setInterval(() => server.closeIdleConnections(), 100);
        const force = setTimeout(() => server.closeAllConnections(), 30_000);
        force.unref();
        await done;
        clearTimeout(force);
        clearInterval(sweep);
        await source?.close();
        mirror?.close();
        await storage.close();
        rmSync(storage.layout.pidPath, { force: true });
      })();
      return closing;
    },
  };
}

/** A certificate or key that cannot be read or does not make a pair. */
export class TlsError extends Error {}

/** Reads and checks a certificate and key pair (a mismatch throws here, not at a handshake). */
function readTls(files: TlsFiles): { cert: Buffer; key: Buffer } {
  const read = (what: string, path: string) => {
    try { return readFileSync(path); } catch (e) { throw new TlsError(`cannot read the TLS ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`); }
  };
  const pair = { cert: read('certificate', files.cert), key: read('key', files.key) };
  try { createSecureContext(pair); } catch (e) { throw new TlsError(`TLS certificate ${files.cert} and key ${files.key}: ${(e as Error).message}`); }
  return pair;
}

const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$/;

/**
 * The base of the token realm: --public-url, or else the host the client asked for.
 * A Host that is not a plain host[:port] falls back to the address it connected to,
 * so no header a client sends can put anything else into the challenge.
 */
function realmBase(req: Request, publicUrl: string | undefined, tls: boolean): string {
  if (publicUrl) return publicUrl;
  const host = req.headers.host;
  if (host && HOST.test(host)) return `${tls ? 'https' : 'http'}://${host}`;
  const a = req.socket.localAddress ?? '127.0.0.1';
  return `${tls ? 'https' : 'http'}://${a.includes(':') ? `[${a}]` : a}:${req.socket.localPort}`;
}
