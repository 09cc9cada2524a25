// bench/http2: would offering HTTP/2 over TLS (ALPN) help anyone pushing to or pulling
// from nixreg?
//
//   npm run bench:http2 [-- --rounds 3 --rtt-ms 0,20 --no-probe ...]
//
// 1. Probe (root, dockerd, containerd, skopeo, curl): which clients negotiate h2 when it
//    is offered (probe.ts).
// 2. Timing: one image of many small layers and one big layer, pushed and then pulled
//    by a client that speaks either protocol with the same requests and concurrency
//    (client.ts), at each round-trip time given (0: plain loopback; more: through the
//    delay proxy, delay.ts). Variants, in rotating order each round, each on a fresh
//    server and data dir:
//      h1        nixreg serve --tls-cert: HTTP/1.1 as served today (the baseline)
//      h1-front  the HTTP/2 front (front.ts), with the client offering only HTTP/1.1:
//                what merely offering h2 costs the clients that do not take it
//      h2        the front over HTTP/2 with Node's default 64 KiB receive windows
//      h2-big    the front over HTTP/2 with 8 MiB stream / 32 MiB session windows
//    Ratios are against h1 measured in the same run.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { bufferBlob, syntheticBlob } from './serve/content.js';
import { cpuMsOf } from './serve/proc.js';
import { http1, http2, imageOf, pull, push, type Image, type Transport, type Windows } from './http2/client.js';
import { probeClients, type ProbeRow } from './http2/probe.js';
import { makeCerts, startDelay, startFront, startNixregTls, type Certs, type Proc } from './http2/servers.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const CLI = join(ROOT, 'dist/src/main.cjs');
const BIG: Windows = { streamKiB: 8 * 1024, sessionKiB: 32 * 1024 };

const { values: opt } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    'rtt-ms': { type: 'string', default: '0,20' },
    'small-layers': { type: 'string', default: '48' },
    'small-kib': { type: 'string', default: '128' },
    'big-mib': { type: 'string', default: '256' },
    variants: { type: 'string', default: 'h1,h1-front,h2,h2-big' },
    'no-probe': { type: 'boolean' },
    json: { type: 'string' },
    help: { type: 'boolean' },
  },
});
if (opt.help) {
  process.stdout.write(`usage: node dist/bench/http2.js [options]   (defaults in brackets)
  --rounds N          rounds per round-trip time, variants alternating [3]
  --rtt-ms LIST       round-trip times to emulate, comma-separated; 0 = plain loopback [0,20]
  --small-layers N    small layers in the image [48]
  --small-kib N       size of each small layer [128]
  --big-mib N         size of the big layer [256]
  --variants LIST     of h1, h1-front, h2, h2-big [all]
  --no-probe          skip the client probe (needs root, dockerd, containerd, skopeo)
  --json FILE         also write the results as JSON
`);
  process.exit(0);
}
const int = (k: 'rounds' | 'small-layers' | 'small-kib' | 'big-mib') => {
  const n = Number(opt[k]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${k} must be a positive integer`);
  return n;
};
const rounds = int('rounds');
const rtts = opt['rtt-ms'].split(',').map(Number);
if (rtts.some((r) => !Number.isInteger(r) || r < 0)) throw new Error('--rtt-ms must list whole milliseconds >= 0');
type Variant = 'h1' | 'h1-front' | 'h2' | 'h2-big';
const variants = opt.variants.split(',') as Variant[];
for (const v of variants) if (!['h1', 'h1-front', 'h2', 'h2-big'].includes(v)) throw new Error(`unknown variant ${v}`);

const work = mkdtempSync(join(tmpdir(), 'nixreg-bench-h2-'));
const live = new Set<Proc>();
const cleanup = () => { for (const p of live) void p.stop(); rmSync(work, { recursive: true, force: true }); };
process.on('SIGINT', () => { cleanup(); process.exit(130); });

interface Sample { variant: Variant; rtt: number; round: number; pushMs: number; pullMs: number; curlPullMs: number; serverCpuMs: number; protocol: string }

/**
 * The same pull by curl (a C client, nghttp2 for h2, its own 32 MiB windows): every
 * blob, 3 at a time, multiplexed on one connection over h2. Returns milliseconds.
 */
function curlPull(url: string, ca: string, img: Image, h2: boolean): Promise<number> {
  const urls = [img.config, ...img.layers].map((b) => `${url}/v2/bench/img/blobs/${b.digest}`);
  const args = ['-sS', '--fail', '--cacert', ca, h2 ? '--http2' : '--http1.1', '--parallel', '--parallel-max', '3',
    ...urls.flatMap((u) => ['-o', '/dev/null', u])];
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    execFile('curl', args, { maxBuffer: 1 << 20 }, (err, _out, stderr) => {
      if (err) reject(new Error(`curl: ${err.message} ${stderr}`)); else resolve(performance.now() - t0);
    });
  });
}

async function once(certs: Certs, img: Image, variant: Variant, rtt: number, round: number): Promise<Sample> {
  const dir = join(work, `${variant}-${rtt}-${round}`);
  mkdirSync(dir);
  const server = variant === 'h1' ? await startNixregTls(CLI, dir, certs)
    : await startFront(ROOT, dir, certs, variant === 'h2-big' ? BIG : undefined);
  live.add(server);
  const proxy = rtt > 0 ? await startDelay(ROOT, dir, server, rtt / 2, certs.caPem) : undefined;
  if (proxy) live.add(proxy);
  const url = (proxy ?? server).url;
  const connect = async (): Promise<Transport> => (variant === 'h1' || variant === 'h1-front'
    ? http1(url, certs.caPem, 5)
    : http2(url, certs.caPem, variant === 'h2-big' ? BIG : undefined));
  try {
    const cpu0 = cpuMsOf(server.pid);
    const up = await connect();
    const pushMs = await push(up, 'bench/img', img);
    const protocol = up.protocol();
    up.close();
    // A fresh connection for the pull, as another machine pulling would have.
    const down = await connect();
    const pullMs = await pull(down, 'bench/img', img);
    down.close();
    const serverCpuMs = cpuMsOf(server.pid) - cpu0;
    const curlPullMs = await curlPull(url, certs.ca, img, variant === 'h2' || variant === 'h2-big');
    return { variant, rtt, round, pushMs, pullMs, curlPullMs, serverCpuMs, protocol };
  } finally {
    if (proxy) { await proxy.stop(); live.delete(proxy); }
    await server.stop();
    live.delete(server);
    rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2; };
const fmt = (ms: number) => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);

function table(samples: Sample[]): string {
  const out: string[] = [];
  for (const rtt of rtts) {
    const base = samples.filter((s) => s.rtt === rtt && s.variant === 'h1');
    const basePush = base.length ? median(base.map((s) => s.pushMs)) : NaN;
    const basePull = base.length ? median(base.map((s) => s.pullMs)) : NaN;
    const baseCurl = base.length ? median(base.map((s) => s.curlPullMs)) : NaN;
    out.push('', `RTT ${rtt} ms${rtt ? ' (delay proxy)' : ' (loopback)'}:`, '',
      '| variant | protocol | push (median; min–max) | /h1 | pull (median; min–max) | /h1 | curl pull (median; min–max) | /h1 | server CPU, push + pull |',
      '|---|---|---|---|---|---|---|---|---|');
    for (const v of variants) {
      const s = samples.filter((x) => x.rtt === rtt && x.variant === v);
      if (!s.length) continue;
      const p = s.map((x) => x.pushMs);
      const q = s.map((x) => x.pullMs);
      const c = s.map((x) => x.curlPullMs);
      const ratio = (a: number, b: number) => (Number.isNaN(b) ? '–' : (a / b).toFixed(2));
      const cell = (xs: number[]) => `${fmt(median(xs))}; ${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`;
      out.push(`| ${v} | ${[...new Set(s.map((x) => x.protocol))].join(',')} | ${cell(p)} | ${ratio(median(p), basePush)} | ${cell(q)} | ${ratio(median(q), basePull)} `
        + `| ${cell(c)} | ${ratio(median(c), baseCurl)} | ${fmt(median(s.map((x) => x.serverCpuMs)))} |`);
    }
  }
  return out.join('\n');
}

function probeTable(rows: ProbeRow[]): string {
  const kv = (r: Record<string, number>) => Object.entries(r).map(([k, n]) => `${k} ×${n}`).join(', ') || '–';
  return ['| client | version | ALPN result per connection | HTTP version per request |', '|---|---|---|---|',
    ...rows.map((r) => `| ${r.client} | ${r.version} | ${kv(r.alpn)} | ${kv(r.http)} |`)].join('\n');
}

try {
  const certs = makeCerts(work);
  let probe: ProbeRow[] = [];
  if (!opt['no-probe']) {
    process.stderr.write('probe: docker, ctr, skopeo, curl against a server offering h2 and http/1.1 …\n');
    const dir = join(work, 'probe');
    mkdirSync(dir);
    const front = await startFront(ROOT, dir, certs);
    live.add(front);
    try { probe = await probeClients(front, certs, dir); } finally { await front.stop(); live.delete(front); }
    process.stdout.write(`\nWhat each client negotiated (ALPN "none": the client sent no ALPN at all):\n\n${probeTable(probe)}\n`);
  }

  process.stderr.write('making the image …\n');
  const smallKiB = int('small-kib');
  const layers = [...Array.from({ length: int('small-layers') }, () => bufferBlob(randomBytes(smallKiB * 1024))), syntheticBlob(int('big-mib') * 1024 * 1024)];
  const img = imageOf(bufferBlob(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }))), layers);
  const samples: Sample[] = [];
  // One untimed pass of every variant: the client's JIT and the page cache warm up
  // before anything counts (the first variant of a cold run was up to 2x slower).
  for (const v of variants) await once(certs, img, v, 0, -1);
  for (const rtt of rtts) {
    for (let round = 0; round < rounds; round++) {
      // Rotate the order, so no variant always runs first (or right after the slowest).
      const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
      for (const v of order) {
        const s = await once(certs, img, v, rtt, round);
        process.stderr.write(`rtt ${rtt} round ${round + 1}/${rounds} ${v}: push ${fmt(s.pushMs)}, pull ${fmt(s.pullMs)}, curl pull ${fmt(s.curlPullMs)} (HTTP/${s.protocol})\n`);
        samples.push(s);
      }
    }
  }
  process.stdout.write(`\nImage: ${int('small-layers')} layers of ${smallKiB} KiB + 1 of ${int('big-mib')} MiB; push 5 blobs at a time, pull 3 (dockerd's defaults); ${rounds} rounds.\n${table(samples)}\n`);
  if (opt.json) writeFileSync(opt.json, JSON.stringify({ probe, samples }, null, 2));
} finally {
  cleanup();
}
