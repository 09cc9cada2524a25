// Runs wrk (GET only: see headload.ts for HEAD) against one URL and reads its summary.
import { spawn } from 'node:child_process';

export interface WrkResult {
  rps: number;
  p50ms: number;
  p99ms: number;
  requests: number;
}

export interface WrkOptions {
  url: string;
  headers: Record<string, string>;
  seconds: number;
  threads: number;
  connections: number;
}

function toMs(v: string, unit: string): number {
  const n = Number(v);
  switch (unit) {
    case 'us': return n / 1000;
    case 'ms': return n;
    case 's': return n * 1000;
    case 'm': return n * 60_000;
    default: throw new Error(`unknown wrk time unit ${unit}`);
  }
}

export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp, what: string) => {
    const m = re.exec(out);
    if (!m) throw new Error(`wrk output has no ${what}:\n${out}`);
    return m;
  };
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(out);
  if (non2xx) throw new Error(`wrk saw ${non2xx[1]} error responses:\n${out}`);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  if (sock && sock.slice(1).some((n) => Number(n) > 0)) throw new Error(`wrk saw socket errors:\n${out}`);
  const p50 = num(/^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$/m, 'p50');
  const p99 = num(/^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$/m, 'p99');
  return {
    rps: Number(num(/Requests\/sec:\s+([\d.]+)/, 'Requests/sec')[1]),
    requests: Number(num(/(\d+) requests in/, 'request count')[1]),
    p50ms: toMs(p50[1]!, p50[2]!),
    p99ms: toMs(p99[1]!, p99[2]!),
  };
}

export function runWrk(o: WrkOptions): Promise<WrkResult> {
  const args = [`-t${o.threads}`, `-c${o.connections}`, `-d${o.seconds}s`, '--timeout', '5s', '--latency'];
  for (const [k, v] of Object.entries(o.headers)) args.push('-H', `${k}: ${v}`);
  args.push(o.url);
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) { reject(new Error(`wrk exited ${code}:\n${out}`)); return; }
      try { resolve(parseWrk(out)); } catch (e) { reject(e); }
    });
  });
}
