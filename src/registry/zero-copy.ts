// Blob bodies sent by the kernel: sendfile(2) from the page cache to the client's socket,
// through the native addon native/sendfile.c (built by `npm ci`'s install script into
// build/Release). It owns loading that addon, deciding per response whether it may be
// used, and one transfer from handing the socket over to giving it back.
//
// Why: copying through user space (send-file.ts) costs a read() into a buffer and a
// write() out of it per 256 KiB, and the V8 and libuv work around each; sendfile costs
// one system call per socket-buffer's worth and no copy into the process. It is what
// Distribution, nginx and Go's net/http do for files.
//
// When not: TLS (the bytes must be encrypted in user space), HTTP/2 (frames), a response
// whose socket is not yet its own (a pipelined request waits for the one before it), an
// addon that did not build (no compiler), or --no-sendfile (NIXREG_SENDFILE=0). Then
// send-file.ts copies as before. Whether a server can use it is said at start-up
// (app.ts) and in the metric nixreg_blob_sendfile.
//
// The handover: Node must have written everything it holds for this socket before the
// kernel appends the body, or its bytes would land inside ours; the headers are written
// with a callback and the socket's queue checked empty. During the transfer Node writes
// nothing to the socket (a pipelined response waits for this one's end()); the addon
// reports progress, which re-arms the socket's inactivity timer, so the watchdog of
// connections.ts cuts only a client that stopped reading. A response that closes (client
// gone, watchdog) cancels the job, which closes the addon's duplicate of the socket at
// once: a duplicate left open would hold the TCP connection open after Node closed it.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { FileHandle } from 'node:fs/promises';
import { ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { getSystemErrorName } from 'node:util';

type Job = object;
interface Addon {
  /** cb(code, sent, done): code 0 ok, -1 the file ended first, > 0 an errno; done=false is progress. */
  start(socketFd: number, fileFd: number, offset: number, count: number, reportMs: number,
    cb: (code: number, sent: number, done: boolean) => void): Job;
  /** Stops the job at once (no callback follows); returns the bytes it sent. */
  cancel(job: Job): number;
}

/** Whether sendfile can be used in this process, and if not, why not. */
export interface SendfileSupport { available: boolean; reason: string }

const ADDON = '../../../build/Release/nixreg_sendfile.node';
let addon: Addon | undefined;
let loadError = '';
try {
  addon = createRequire(import.meta.url)(ADDON) as Addon;
} catch (e) {
  loadError = (e as Error).message.split('\n')[0]!;
}

/**
 * Whether blob bodies go out by sendfile: unless `wanted` is false (the server's option;
 * config.ts reads --no-sendfile and NIXREG_SENDFILE into it), wherever the addon loaded.
 */
export function sendfileSupport(wanted = true): SendfileSupport {
  if (!wanted) return { available: false, reason: 'turned off (--no-sendfile or NIXREG_SENDFILE=0)' };
  if (process.platform !== 'linux') return { available: false, reason: `not on ${process.platform}` };
  if (!addon) return { available: false, reason: `the addon did not load (${loadError}); run npm ci with python3, make and a C compiler` };
  return { available: true, reason: 'sendfile(2) through native/sendfile.c' };
}

interface NodeSocket extends Socket {
  _handle?: { fd?: number } | null;
  _httpMessage?: unknown;
  _unrefTimer?: () => void;
}

/** The plain TCP or Unix socket that `res` alone writes to now, or undefined. */
export function sendfileSocket(res: ServerResponse): NodeSocket | undefined {
  const s = res.socket as NodeSocket | null;
  if (!(res instanceof ServerResponse) || !(s instanceof Socket) || s instanceof TLSSocket) return undefined;
  if (s._httpMessage !== res || s.destroyed || !s.writable) return undefined;
  const fd = s._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? s : undefined;
}

/** A client that went away, as send-file.ts and app.ts name it (a client abort, not a fault). */
export function clientGone(): NodeJS.ErrnoException {
  return Object.assign(new Error('client went away'), { code: 'ECONNRESET' });
}

/**
 * Sends bytes [start, end] of the open file `fh` by sendfile. Writes the response's
 * headers first; does not end it. Resolves with the bytes sent, or with undefined when
 * the socket turned out not to be handed over cleanly (nothing of the body sent: the
 * caller copies instead). Rejects on failure. `onCancel(cancel)`: how the caller's close
 * listener stops the job; `counted(n)`: n more bytes went out (as they go, for metrics).
 */
export async function sendfileRange(fh: FileHandle, path: string, start: number, end: number, res: ServerResponse,
  onCancel: (cancel: ((e: Error) => void) | undefined) => void, counted: (n: number) => void): Promise<number | undefined> {
  if (!addon) return undefined;
  const a = addon;
  // The headers (never the body: none has been written), with a callback once the socket
  // has handed them and everything queued before them to the kernel.
  await new Promise<void>((resolve, reject) => {
    onCancel(reject);
    res.write('', (err) => (err ? reject(err) : resolve()));
  });
  const socket = sendfileSocket(res);
  if (!socket || socket.writableLength > 0 || socket.writableCorked) return undefined;
  const timeout = socket.timeout ?? 0;
  // Often enough that the watchdog sees progress well within its bound.
  const reportMs = timeout > 0 ? Math.max(10, Math.min(1000, Math.floor(timeout / 10))) : 1000;
  const count = end - start + 1;
  let sent = 0;
  const upTo = (n: number) => { counted(n - sent); sent = n; };
  let settle: { resolve(n: number): void; reject(e: Error): void } | undefined;
  let job: Job;
  try {
    // The socket's number is read and duplicated in this one synchronous step. The
    // callback comes from the event loop, never from within start().
    job = a.start(socket._handle!.fd!, fh.fd, start, count, reportMs, (code, n, done) => {
      upTo(n);
      refreshTimeout(socket);
      if (!done) return;
      onCancel(undefined);
      if (code === 0) settle!.resolve(n);
      else if (code === -1) settle!.reject(new Error(`${path} ends at byte ${start + n}, before ${end + 1}`));
      else settle!.reject(errnoError(code));
    });
  } catch {
    // No descriptor to spare for the duplicates (EMFILE): copying needs none.
    return undefined;
  }
  return new Promise<number>((resolve, reject) => {
    settle = { resolve, reject };
    onCancel((e) => {
      onCancel(undefined);
      upTo(a.cancel(job));
      reject(e);
    });
  });
}

/** Counts as activity for the socket's inactivity timer (connections.ts's watchdog). */
function refreshTimeout(s: NodeSocket): void {
  // Node's own re-arm for a socket that moved bytes; setTimeout re-creates the timer.
  if (typeof s._unrefTimer === 'function') s._unrefTimer();
  else if (s.timeout) s.setTimeout(s.timeout);
}

function errnoError(errno: number): NodeJS.ErrnoException {
  let code = 'EIO';
  try { code = getSystemErrorName(-errno); } catch { /* an errno Node does not name */ }
  // The peer closed or reset the connection: the same client abort as the copy path's.
  if (code === 'EPIPE' || code === 'ECONNRESET') return clientGone();
  return Object.assign(new Error(`sendfile: ${code}`), { code, errno: -errno, syscall: 'sendfile' });
}
