// How the HTTP fuzzer sends: node:http over a keep-alive agent for requests that are
// well-formed HTTP (whatever they say to the registry), and hand-written bytes on a
// fresh socket for what node:http refuses to send (bad request lines, lying lengths,
// broken chunking, invalid header bytes, pipelining).
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';

export interface Req {
  method: string;
  /** Sent exactly as given. */
  path: string;
  headers?: Record<string, string | string[]>;
  body?: Buffer;
  /** Send the body with Transfer-Encoding: chunked, in pieces of this many bytes. */
  chunked?: number;
  /** Bytes written as they are on a fresh connection; method, path and headers only describe them. */
  raw?: Buffer;
  /** The input cannot be answered in full (a body shorter than declared): silence is fine. */
  mayHang?: boolean;
}

export interface Answer {
  /** Every status line received (several when requests were pipelined). */
  statuses: number[];
  headers?: IncomingHttpHeaders;
  body?: Buffer;
  /** Transport failure: reset, timeout, response cut short. */
  error?: string;
  ms: number;
}

const BODY_CAP = 64 * 1024;
/** How long an input that cannot be answered waits before it gives up (the client leaves). */
const MAY_HANG_MS = 400;

export class Client {
  readonly agent: Agent;
  private readonly host: string;
  private readonly port: number;

  constructor(url: string, sockets: number, private readonly timeoutMs = 30_000) {
    const u = new URL(url);
    this.host = u.hostname;
    this.port = Number(u.port);
    this.agent = new Agent({ keepAlive: true, maxSockets: sockets });
  }

  close(): void { this.agent.destroy(); }

  send(r: Req): Promise<Answer> {
    return r.raw ? this.raw(r.raw, r.mayHang ?? false) : this.http(r);
  }

  private http(r: Req): Promise<Answer> {
    const t0 = performance.now();
    return new Promise((resolve) => {
      let settled = false;
      const finish = (a: Omit<Answer, 'ms'>) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ ...a, ms: performance.now() - t0 });
      };
      const headers = { ...r.headers };
      // node:http frames a body as chunked only for some methods unless told so explicitly;
      // unframed bytes would be read as the next request on this keep-alive connection.
      // Nor does it declare a length for GET, HEAD, DELETE and OPTIONS bodies by itself.
      if (r.chunked && r.body) headers['Transfer-Encoding'] = 'chunked';
      else if (r.body && !Object.keys(headers).some((k) => k.toLowerCase() === 'content-length')) headers['Content-Length'] = String(r.body.length);
      const req = request({ host: this.host, port: this.port, method: r.method, path: r.path, headers, agent: this.agent });
      const timer = setTimeout(() => {
        finish(r.mayHang ? { statuses: [] } : { statuses: [], error: `no answer within ${this.timeoutMs} ms` });
        req.destroy();
      }, r.mayHang ? MAY_HANG_MS : this.timeoutMs);
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on('data', (c: Buffer) => { if (n < BODY_CAP) { chunks.push(c); n += c.length; } });
        res.on('end', () => finish({ statuses: [res.statusCode!], headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', (e: NodeJS.ErrnoException) => finish({ statuses: [res.statusCode!], headers: res.headers, error: `response cut short: ${e.code ?? e.message}` }));
        res.on('close', () => finish({ statuses: [res.statusCode!], headers: res.headers, error: res.complete ? undefined : 'response cut short' }));
      });
      req.on('error', (e: NodeJS.ErrnoException) => finish({ statuses: [], error: e.code ?? e.message }));
      if (r.body && r.chunked) {
        for (let i = 0; i < r.body.length; i += r.chunked) req.write(r.body.subarray(i, i + r.chunked));
        req.end();
      } else {
        req.end(r.body);
      }
    });
  }

  private raw(bytes: Buffer, mayHang: boolean): Promise<Answer> {
    const t0 = performance.now();
    return new Promise((resolve) => {
      const sock = connect(this.port, this.host);
      const chunks: Buffer[] = [];
      let settled = false;
      let grace: NodeJS.Timeout | undefined;
      const statuses = () => [...Buffer.concat(chunks).toString('latin1').matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
      const finish = (error?: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(grace);
        sock.destroy();
        const body = Buffer.concat(chunks);
        resolve({ statuses: statuses(), body: body.subarray(0, BODY_CAP), ...(error ? { error } : {}), ms: performance.now() - t0 });
      };
      const timer = setTimeout(() => {
        const got = statuses().length > 0;
        finish(got || mayHang ? undefined : `no answer within ${this.timeoutMs} ms`);
      }, mayHang ? MAY_HANG_MS : this.timeoutMs);
      sock.on('data', (c: Buffer) => {
        chunks.push(c);
        // Pipelined answers arrive back to back: a short grace after each one, not the timeout.
        clearTimeout(grace);
        grace = setTimeout(() => finish(), 300);
      });
      sock.on('close', () => finish(statuses().length || mayHang ? undefined : 'connection closed without an answer'));
      sock.on('error', () => { /* close follows */ });
      sock.write(bytes);
    });
  }
}

/** A request as raw bytes: request line, headers in order (duplicates allowed), body. */
export function wire(requestLine: string, headers: [string, string][], body: Buffer = Buffer.alloc(0)): Buffer {
  const head = `${requestLine}\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

/** `body` in chunked transfer encoding, cut into pieces of `size` (written into one buffer: 1-byte pieces of a MiB are cheap). */
export function chunkedBody(body: Buffer, size: number, extension = ''): Buffer {
  const pieces = Math.ceil(body.length / size);
  const out = Buffer.alloc(body.length + pieces * (size.toString(16).length + extension.length + 4) + 5);
  let at = 0;
  for (let i = 0; i < body.length; i += size) {
    const piece = body.subarray(i, i + size);
    at += out.write(`${piece.length.toString(16)}${extension}\r\n`, at, 'latin1');
    at += piece.copy(out, at);
    at += out.write('\r\n', at, 'latin1');
  }
  at += out.write('0\r\n\r\n', at, 'latin1');
  return out.subarray(0, at);
}
