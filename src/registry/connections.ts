// How long a client may hold a connection without making progress, and how many it
// may hold at all: the HTTP server's side of "every socket has a bound".
//
// Why a watchdog of our own on top of Node's timeouts. Node's `requestTimeout` bounds a
// whole request, which would cut a slow but moving multi-GiB upload and a pull that
// waits minutes for its image to build. What a production server needs instead is a
// bound on *no progress*, judged by what the connection is doing when it goes quiet:
//  - before a request's headers are complete: Node's `headersTimeout` (which also
//    covers a socket that never sends a byte);
//  - between requests: Node's `keepAliveTimeout`;
//  - while a request body is being read: quiet for `bodyMs` means the client stalled
//    (unless the body is waiting on us: then the unread bytes are in our buffer);
//  - while a response is being written: quiet for `bodyMs` means the client stopped
//    reading;
//  - while a handler works before answering (a build): no bound here, the build's own
//    timeout bounds it.
// Beyond `maxConnections`, a new connection gets a 503 and is closed at once, before any
// of its bytes are parsed, rather than holding a descriptor that every other client needs.
// So does one beyond `maxConnectionsPerClient` from one address: else a single host
// could take every slot and leave the rest of the world the 503s. Counted by the
// address as the socket has it: a dual-stack listener sees an IPv4 client as
// ::ffff:a.b.c.d every time, so no folding is needed to count it as one.
//
// Why a lingering close. An answer that comes before the request body has all arrived
// (a 507 when the disk fills mid-upload, a 401, a 413) on a connection that must close
// (the client sent `Connection: close`, as skopeo does on every PATCH) is lost if the
// socket is simply closed: the unread body makes the kernel send a reset, and a reset
// throws away the answer the client has not read yet. skopeo then reports "broken pipe"
// instead of the 507. Node closes such a socket as soon as the answer is flushed, so we
// close only our sending side and read and drop the rest of the body, for at most
// LINGER_MS (nginx's `lingering_close` does the same; Go's server waits 500 ms).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { TrustedProxies } from './client-address.js';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export interface ConnectionLimits {
  /** Headers of a request must be complete this long after it starts (and after connecting). */
  headersMs: number;
  /** An idle keep-alive connection is closed after this long. */
  idleMs: number;
  /** A request body or response that makes no progress for this long is aborted. */
  bodyMs: number;
  /** Connections open at once; more are answered 503 and closed. */
  maxConnections: number;
  /** Connections open at once from one address; more are refused as above. No bound unless set. */
  maxConnectionsPerClient?: number | undefined;
  /** Their connections count towards maxConnections only: a proxy carries many clients' (client-address.ts). */
  trustedProxies?: TrustedProxies | undefined;
  /**
   * A TLS server: its 'connection' sockets carry the handshake, so a refusal cannot be
   * an HTTP answer there; it is a close, before any handshake work is spent on it.
   */
  tls?: boolean;
  /** A lingering close (see the header) ends after this long; LINGER_MS unless set. */
  lingerMs?: number;
}

interface InFlight { req: IncomingMessage; res: ServerResponse }

/** How long a connection may keep sending a body nobody will read after its answer. */
const LINGER_MS = 10_000;

export interface ConnectionStats {
  open: number;
  /** Refused at maxConnections. */
  refused: number;
  /** Refused at maxConnectionsPerClient. */
  refusedPerClient: number;
  /** Addresses with connections open (derived from the per-address counts). */
  readonly clients: number;
  stalled: number;
}

/** Applies `limits` to `server` (before it listens); returns live counters. */
export function limitConnections(server: Server, limits: ConnectionLimits): ConnectionStats {
  const perClient = limits.maxConnectionsPerClient ?? Infinity;
  const byAddress = new Map<string, number>();
  const stats: ConnectionStats = { open: 0, refused: 0, refusedPerClient: 0, get clients() { return byAddress.size; }, stalled: 0 };
  server.headersTimeout = limits.headersMs;
  // Off: it would bound the whole request, body and build included (see above).
  server.requestTimeout = 0;
  server.keepAliveTimeout = limits.idleMs;
  // Node checks headersTimeout on this interval: at most 1 s late, whatever the bound.
  (server as Server & { connectionsCheckingInterval: number }).connectionsCheckingInterval = 1000;
  // The inactivity timer of every socket; Node re-arms it with this value whenever a new
  // request starts on a kept-alive connection.
  server.timeout = limits.bodyMs;

  const inflight = new WeakMap<Socket, InFlight>();
  const lingering = new WeakSet<Socket>();
  server.on('connection', (socket: Socket) => {
    // Undefined once the peer has gone already: nothing to count, and nothing to serve.
    const address = socket.remoteAddress ?? '';
    const mine = byAddress.get(address) ?? 0;
    const overShare = mine >= perClient && !limits.trustedProxies?.trusts(address);
    if (overShare || stats.open >= limits.maxConnections) {
      if (overShare) stats.refusedPerClient++; else stats.refused++;
      if (limits.tls) socket.destroy(); else refuse(socket, overShare ? REFUSAL_PER_CLIENT : REFUSAL);
      return;
    }
    stats.open++;
    byAddress.set(address, mine + 1);
    socket.once('close', () => {
      stats.open--;
      const left = byAddress.get(address)! - 1;
      if (left > 0) byAddress.set(address, left); else byAddress.delete(address);
    });
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    // The socket of the request, not of 'connection': under TLS that is the TLS socket.
    if (!lingering.has(socket)) { lingering.add(socket); lingerOnClose(socket, inflight, limits.lingerMs ?? LINGER_MS); }
    inflight.set(socket, { req, res });
    res.once('close', () => { if (inflight.get(socket)?.res === res) inflight.delete(socket); });
  });
  // With a listener here Node leaves the decision to us instead of destroying the socket.
  server.on('timeout', (socket: Socket) => {
    const f = inflight.get(socket);
    if (f && !f.res.headersSent && (f.req.complete || f.req.readableLength > 0)) {
      // The handler is working (or has not read what the client sent): not the client's
      // stall. The timer re-arms at the next byte either way.
      return;
    }
    if (f) stats.stalled++;
    socket.destroy();
  });
  // A registry is no proxy: CONNECT gets an answer (Node would close it silently).
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    socket.on('error', () => {});
    socket.end(METHOD_NOT_ALLOWED);
  });
  return stats;
}

const METHOD_NOT_ALLOWED = errorResponse('405 Method Not Allowed', 'UNSUPPORTED', 'CONNECT is not supported', {});
const REFUSAL = errorResponse('503 Service Unavailable', 'UNAVAILABLE', 'too many connections; retry shortly', { 'Retry-After': '1' });
const REFUSAL_PER_CLIENT = errorResponse('503 Service Unavailable', 'UNAVAILABLE',
  'too many connections from this address; close some or retry shortly', { 'Retry-After': '1' });

function errorResponse(status: string, code: string, message: string, headers: Record<string, string>): Buffer {
  const body = JSON.stringify({ errors: [{ code, message, detail: {} }] });
  return Buffer.from([
    `HTTP/1.1 ${status}`,
    'Content-Type: application/json',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Docker-Distribution-API-Version: registry/2.0',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    'Connection: close',
    '', body,
  ].join('\r\n'));
}

/**
 * Makes Node's close after a last answer (`destroySoon`, called as the answer is
 * finished) a lingering close when the request body is still coming: see the header.
 */
function lingerOnClose(socket: Socket, inflight: WeakMap<Socket, InFlight>, ms: number): void {
  const destroySoon = socket.destroySoon.bind(socket);
  socket.destroySoon = () => {
    const req = inflight.get(socket)?.req;
    if (!req || req.complete || req.destroyed) { destroySoon(); return; }
    socket.end();
    req.resume();
    const close = () => socket.destroy();
    req.once('end', close);
    req.once('error', close);
    setTimeout(close, ms).unref();
  };
}

function refuse(socket: Socket, answer: Buffer): void {
  // The HTTP parser is attached already (this listener runs after Node's): stop feeding
  // it, so the refused connection costs no request handling at all.
  socket.removeAllListeners('data');
  socket.on('data', () => {});
  socket.on('error', () => {});
  socket.end(answer);
  // A client that never reads the refusal must not keep the descriptor either.
  setTimeout(() => socket.destroy(), 1000).unref();
}
