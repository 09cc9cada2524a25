// bench/http2's HTTP/2 server: nixreg's own Express app and storage behind
// `http2.createSecureServer({ allowHTTP1: true })`, as a process of its own. It exists
// only to measure what offering HTTP/2 would change; nixreg itself serves HTTP/1.1 over
// TLS, and BENCHMARKS.md (bench/http2) says why. It has none of nixreg's connection
// bounds (streams per session, idle and body timeouts, session count): a benchmark
// server on loopback, never one to expose.
//
//   node dist/bench/http2/front.js --port P --data DIR --cert F --key F [--stream-window-kib N] [--session-window-kib N]
//
// Why a second view of the app: Express 5 moves every request and response onto its own
// prototypes, which inherit from http.IncomingMessage / ServerResponse; Node's HTTP/2
// compatibility objects (Http2ServerRequest / Http2ServerResponse) lose their methods
// that way. The view below is the same app (one router, one manifest memory budget) whose
// request and response prototypes are Express's own properties laid over the HTTP/2 ones.
//
// Every connection's ALPN result and every request's HTTP version and User-Agent are
// printed as JSON lines: the probe reads them to learn what each client negotiated.
import { readFileSync } from 'node:fs';
import { createSecureServer, Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { parseArgs } from 'node:util';
import express, { type Express } from 'express';
import { pino } from 'pino';
import { Storage } from '../../src/blobs/storage.js';
import { limitsConfig } from '../../src/config.js';
import { createApp } from '../../src/registry/app.js';

/** `app` as seen by HTTP/2 requests: same routes and state, HTTP/2-based prototypes. */
function http2View(app: Express): Express {
  const view = Object.create(app) as Express;
  const own = { configurable: true, enumerable: true, writable: true, value: view };
  const req = Object.create(Http2ServerRequest.prototype, Object.getOwnPropertyDescriptors(express.request)) as object;
  const res = Object.create(Http2ServerResponse.prototype, Object.getOwnPropertyDescriptors(express.response)) as object;
  view.request = Object.create(req, { app: own }) as Express['request'];
  view.response = Object.create(res, { app: own }) as Express['response'];
  return view;
}

const { values: opt } = parseArgs({
  options: {
    port: { type: 'string' }, data: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
    'stream-window-kib': { type: 'string' }, 'session-window-kib': { type: 'string' },
  },
});
const kib = (v: string | undefined) => (v === undefined ? undefined : Number(v) * 1024);
const streamWindow = kib(opt['stream-window-kib']);
const sessionWindow = kib(opt['session-window-kib']);

const storage = await Storage.open(opt.data!);
const limits = limitsConfig({});
const app = createApp({ storage, log: pino({ level: 'silent' }), limits });
const view = http2View(app);
const server = createSecureServer({
  allowHTTP1: true,
  cert: readFileSync(opt.cert!),
  key: readFileSync(opt.key!),
  // Past this a session's new streams are refused (Node's default is 10 MiB): room for
  // what the client may have in flight under the windows below.
  maxSessionMemory: Math.max(10, Math.ceil(((sessionWindow ?? 0) * 2) / 2 ** 20)),
  settings: streamWindow !== undefined ? { initialWindowSize: streamWindow } : {},
});
server.on('session', (s) => { if (sessionWindow !== undefined) s.setLocalWindowSize(sessionWindow); });
server.on('secureConnection', (s: TLSSocket) => {
  process.stdout.write(`${JSON.stringify({ event: 'connection', alpn: s.alpnProtocol || null })}\n`);
});
server.on('request', (req: Http2ServerRequest | IncomingMessage, res: Http2ServerResponse | ServerResponse) => {
  process.stdout.write(`${JSON.stringify({ event: 'request', http: req.httpVersion, method: req.method, ua: req.headers['user-agent'] ?? null })}\n`);
  if (req.httpVersionMajor === 2) (view as unknown as { handle(q: unknown, s: unknown): void }).handle(req, res);
  else app(req as IncomingMessage, res as ServerResponse);
});
server.on('stream', (stream) => { stream.on('error', () => {}); });
server.on('sessionError', () => {});
server.listen(Number(opt.port), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ event: 'listening', url: `https://127.0.0.1:${opt.port}` })}\n`);
});
process.on('SIGTERM', () => { server.close(); void storage.close().finally(() => process.exit(0)); });
