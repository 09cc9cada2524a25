// bench/http2's processes: a throwaway CA and server certificate, nixreg as users run it
// with --tls-cert (HTTP/1.1 only), the HTTP/2 front (front.ts), and the delay proxy
// (delay.ts). Each runs as its own process on a free loopback port, output to a file.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { freePort, spawnReady } from '../serve/servers.js';

export interface Certs { dir: string; ca: string; cert: string; key: string; caPem: Buffer }

/** A CA and a certificate for 127.0.0.1 and localhost signed by it (P-256, 2 days). */
export function makeCerts(dir: string): Certs {
  const f = (n: string) => join(dir, n);
  const ssl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=bench-ca', '-keyout', f('ca.key'), '-out', f('ca.crt')]);
  ssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', f('server.key'), '-out', f('server.csr')]);
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  ssl(['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('ext.cnf'), '-out', f('server.crt')]);
  return { dir, ca: f('ca.crt'), cert: f('server.crt'), key: f('server.key'), caPem: readFileSync(f('ca.crt')) };
}

export interface Proc { url: string; port: number; pid: number; log: string; stop(): Promise<void> }

async function launch(cmd: string, args: string[], port: number, log: string, ready: () => Promise<boolean>, env?: NodeJS.ProcessEnv): Promise<Proc> {
  const p = await spawnReady(cmd, args, log, ready, env);
  return { url: `https://127.0.0.1:${port}`, port, log, ...p };
}

/** Whether GET /v2/ over TLS answers 200 (HTTP/1.1, a new connection each time). */
function answers(port: number, ca: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/v2/', ca, agent: false }, (res) => { res.resume(); resolve(res.statusCode === 200); });
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** `nixreg serve --tls-cert … --tls-key …`: the server as it is. */
export async function startNixregTls(cli: string, dir: string, certs: Certs): Promise<Proc> {
  const port = await freePort();
  return launch(process.execPath, [cli, 'serve', '--listen', `127.0.0.1:${port}`, '--data', join(dir, 'data'), '--images', join(dir, 'no-images'),
    '--tls-cert', certs.cert, '--tls-key', certs.key], port, join(dir, 'nixreg.log'), () => answers(port, certs.caPem));
}

/** The HTTP/2 front (front.ts) over a data dir of its own; windows in KiB, Node's if none. */
export async function startFront(root: string, dir: string, certs: Certs, windows?: { streamKiB: number; sessionKiB: number }): Promise<Proc> {
  const port = await freePort();
  return launch(process.execPath, [join(root, 'dist/bench/http2/front.js'), '--port', String(port), '--data', join(dir, 'data'),
    '--cert', certs.cert, '--key', certs.key,
    ...(windows ? ['--stream-window-kib', String(windows.streamKiB), '--session-window-kib', String(windows.sessionKiB)] : [])],
  port, join(dir, 'front.log'), () => answers(port, certs.caPem));
}

/** The delay proxy (delay.ts) in front of `target`. */
export async function startDelay(root: string, dir: string, target: Proc, oneWayMs: number, ca: Buffer): Promise<Proc> {
  const port = await freePort();
  return launch(process.execPath, [join(root, 'dist/bench/http2/delay.js'), '--listen', String(port), '--target', String(target.port), '--one-way-ms', String(oneWayMs)],
    port, join(dir, 'delay.log'), () => answers(port, ca));
}
