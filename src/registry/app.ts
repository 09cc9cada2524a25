// The Express application: common headers, the endpoint table, and OCI error bodies.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import type { Storage } from '../blobs/storage.js';
import type { ImageSource } from '../build/image-source.js';
import { openGate, type Gate } from './auth/gate.js';
import { addressOf } from './client-address.js';
import { RegistryError, registryErrorOf } from './errors.js';
import type { Limits } from './handlers/context.js';
import { MemoryBudget } from './http.js';
import { Metrics } from './metrics.js';
import type { Mirror } from './mirror/mirror.js';
import { Readiness } from './readiness.js';
import { endpoints } from './routes.js';
import type { BodyBytes } from './send-file.js';
import { sendfileSupport } from './zero-copy.js';

export interface AppOptions {
  storage: Storage;
  source?: ImageSource | undefined;
  log: Logger;
  limits: Limits & { manifestMemoryBytes: number; manifestTimeoutMs?: number | undefined };
  /** Counters kept outside the app (connections), shown in /nixreg/stats. */
  counters?: () => Record<string, unknown>;
  /** Authentication and access control; everything is allowed without one. */
  gate?: Gate;
  /** /readyz: free bytes below which the data directory counts as full (default in readiness.ts). */
  minFreeBytes?: number | undefined;
  /** Send blob bodies by sendfile where possible; default true (zero-copy.ts). */
  sendfile?: boolean | undefined;
  /** Redirect blob GETs to the store's presigned URLs valid this long (--s3-redirect). */
  blobRedirectSeconds?: number | undefined;
  /** The pull-through cache (--mirror, --mirror-config). */
  mirror?: Mirror | undefined;
  /** The web page at / (ui/pages.ts); default true. The JSON API is served either way. */
  ui?: boolean | undefined;
}

export function createApp({ storage, source, log, limits, counters, gate = openGate, minFreeBytes, sendfile, blobRedirectSeconds, mirror, ui = true }: AppOptions) {
  const table = ui ? endpoints : endpoints.filter((e) => !e.page);
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.set('query parser', 'simple');

  // Said once, at start-up: a server that quietly copies (no compiler at npm ci) costs CPU.
  const support = sendfileSupport(sendfile);
  const blobBodies = { sendfile: support.available, bytes: { sendfile: 0, copy: 0 } satisfies BodyBytes };
  log.info({ sendfile: support.available, reason: support.reason }, support.available
    ? 'blob bodies are sent by sendfile(2)' : 'blob bodies are copied through user space');

  // On unless NIXREG_METRICS=off, a switch for measuring what metrics cost (bench/metrics.ts).
  const metrics = process.env.NIXREG_METRICS === 'off' ? undefined
    : new Metrics({ storage, source, routes: table.map((e) => e.id), blobBodies });
  metrics?.countWrites(app.response);

  // The access log, at debug level only: a line per request costs ~5 µs, which a busy
  // registry at info level should not pay. Path without query, user without credentials.
  if (log.isLevelEnabled('debug')) {
    app.use((req, res, next) => {
      const start = process.hrtime.bigint();
      res.once('finish', () => log.debug({
        method: req.method, path: req.path.slice(0, 300), status: res.statusCode, user: gate.user(req),
        client: addressOf(req), ms: Number(process.hrtime.bigint() - start) / 1e6,
      }, 'request'));
      next();
    });
  }

  app.use((req, res, next) => {
    // Every request passes here first, refused ones too; not a router layer of its own,
    // which every request would pay to walk through.
    metrics?.time(req, res);
    res.set('Docker-Distribution-API-Version', 'registry/2.0');
    // Nothing valid in a /v2 path is ever percent-encoded in a way that changes its
    // structure: an encoded slash, backslash or NUL, or broken encoding, is refused here
    // before any route can decode it into a name, digest or upload id.
    if (/%(?:2f|5c|00)/i.test(req.path) || !decodes(req.path)) {
      next(new RegistryError('NAME_INVALID', 'malformed or encoded path separator in request path',
        { path: req.path.slice(0, 300) }));
      return;
    }
    // A browser signed in to the web page sends its credentials by itself: another site's
    // page must not make it write (CSRF). Registry clients send neither header.
    if (req.method !== 'GET' && req.method !== 'HEAD' && fromElsewhere(req)) {
      next(new RegistryError('DENIED', 'a request from another site\'s page is refused: nixreg changes nothing for a cross-origin browser request'));
      return;
    }
    next();
  });

  // containerd's mirror mode (hosts.toml): `/v2/library/alpine/…?ns=docker.io` is the
  // upstream's own name; it becomes the local mirror repository `<prefix>/library/alpine`
  // before routing, so that the gate, the policy and the handlers see one name.
  if (mirror) {
    app.use((req, _res, next) => {
      const ns = req.query.ns;
      if (typeof ns === 'string' && req.path.startsWith('/v2/') && req.path.length > 4 && !req.path.startsWith('/v2/_catalog')) {
        const prefix = mirror.prefixFor(ns);
        if (prefix) req.url = `/v2/${prefix}/${req.url.slice(4)}`;
      }
      next();
    });
  }

  const bodies = new MemoryBudget(limits.manifestMemoryBytes, limits.manifestTimeoutMs);
  const ctx = {
    storage, source, bodies, limits, gate, metrics, blobBodies, blobRedirectSeconds, mirror, readiness: new Readiness({ storage, source, minFreeBytes }),
    counters: () => ({
      ...counters?.(),
      ...(mirror ? { mirror: mirror.counts } : {}),
      manifestMemory: {
        used: bodies.used, limit: bodies.limit, perClient: bodies.perClient, clients: bodies.clients,
        refused: bodies.refused, refusedPerClient: bodies.refusedPerClient, timedOut: bodies.timedOut,
      },
    }),
  };
  for (const e of table) {
    const h = e.handler(ctx);
    const guard = metrics ? metrics.labelled(e.id, gate.guard(e.access)) : gate.guard(e.access);
    for (const m of e.methods) app[m](e.path, guard, h);
  }

  // A known path with a method the table lacks is 405; anything else under /v2 is 404.
  app.use((req, _res, next) => {
    const known = table.some((e) => e.path.test(req.path));
    next(known
      ? new RegistryError('UNSUPPORTED', `${req.method} is not supported on ${req.path.slice(0, 300)}`)
      : new RegistryError('NAME_UNKNOWN', `no such endpoint: ${req.path.slice(0, 300)}`, undefined, 404));
  });

  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    if (res.headersSent) {
      // Mid-stream failure: the only honest signal left is to cut the connection.
      log.warn({ err, path: req.path }, 'response failed after headers were sent');
      res.destroy();
      return;
    }
    // Storage, the builder and the handlers say what went wrong in their own terms;
    // errors.ts turns that into the OCI answer.
    let e = registryErrorOf(err);
    if (!e && isHttpClientError(err)) {
      // Errors raised by express or Node for a malformed request (bad encoding, …).
      e = new RegistryError('UNSUPPORTED', (err as Error).message.slice(0, 300), undefined, (err as { status: number }).status);
    }
    if (!e && isClientAbort(err)) {
      log.debug({ path: req.path }, 'client went away');
      res.destroy();
      return;
    }
    if (!e) {
      log.error({ err, method: req.method, path: req.path }, 'internal error');
      e = new RegistryError('INTERNAL', 'internal server error');
    }
    if (e.status >= 500) log.warn({ code: e.code, message: e.message, path: req.path }, 'request failed');
    // An error before the body was read must not leave the client writing into a void.
    if (!req.complete) req.resume();
    const body = JSON.stringify(e.toJSON());
    // Load shedding, not a verdict: the same request may succeed in a moment.
    if (e.status === 429 || e.status === 503) res.set('Retry-After', '1');
    res.set(e.headers);
    res.status(e.status).set({ 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(body)) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  return app;
}

function isClientAbort(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ECONNABORTED';
}

function isHttpClientError(err: unknown): boolean {
  const status = (err as { status?: unknown } | null)?.status;
  return typeof status === 'number' && status >= 400 && status < 500;
}

/** Whether a browser says the request comes from a page of another origin (Fetch Metadata, else Origin). */
function fromElsewhere(req: Request): boolean {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined) return site === 'cross-site' || site === 'same-site';
  const origin = req.headers.origin;
  if (origin === undefined) return false;
  try { return new URL(origin).host !== req.headers.host; } catch { return true; }
}

function decodes(path: string): boolean {
  try { decodeURIComponent(path); return true; } catch { return false; }
}
