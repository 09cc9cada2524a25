// bench/serve's blob download section: what a blob GET costs the server per GiB and how
// fast it goes, with one download at a time and with 32 at once, for three servers: nixreg
// as built (sendfile, src/registry/zero-copy.ts), the same build with NIXREG_SENDFILE=0
// (bodies copied through user space: the gain of sendfile is the gap between the two),
// and the baseline (Distribution 2.8, or --peer-nixreg). It owns the copy-mode server.
//
// Why CPU per GiB: on this 2-core machine the client (curl) shares the cores with the
// server, so a rate says as much about the client as the server; the server's own CPU
// time per byte (from /proc, report.ts's alternate) is what sendfile changes. Why one
// curl with --parallel for the 32 downloads, not 32 curls: 32 client processes would
// take 32 shares of the CPU against one Node thread, and the result would measure the
// scheduler; one event-driven client keeps client cost equal for every server.
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { pushBlob } from './client.js';
import type { BlobSpec } from './content.js';
import { alternate, stat, type Measured, type Stat } from './report.js';
import { startNixreg, type Server } from './servers.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export interface BlobBenchOptions {
  cli: string;
  /** An empty directory for the copy-mode server. */
  dir: string;
  /** nixreg (sendfile) and the baseline, both holding `blob` in `repo`. */
  nixreg: Server;
  baseline: Server;
  baselineLabel: string;
  blob: BlobSpec;
  repo: string;
  rounds: number;
  /** Downloads at once in the concurrent case. */
  concurrency: number;
  /** Whether to judge the goals (not against another nixreg). */
  goals: boolean;
  track(s: Server): void;
  log(msg: string): void;
}

export interface BlobRow { metric: string; cells: Stat[]; ratio: number; copyRatio: number; better: 'higher' | 'lower'; digits: number; goal?: string; pass?: boolean }
export interface BlobBenchResult { rows: BlobRow[]; columns: string[] }

/** curl fetching `url` `n` times at once (one process); returns [bytes, milliseconds]. */
export function downloadMany(url: string, n: number): Promise<[number, number]> {
  const args = ['-sS', '--fail', '-Z', '--parallel-immediate', '--parallel-max', String(n), '-w', '%{size_download}\\n'];
  for (let i = 0; i < n; i++) args.push('-o', '/dev/null', url);
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    execFile('curl', args, { maxBuffer: 1 << 20 }, (err, stdout) => {
      const ms = performance.now() - t0;
      if (err) { reject(new Error(`curl ×${n} ${url}: ${err.message}`)); return; }
      const sizes = stdout.trim().split('\n').map(Number);
      if (sizes.length !== n) { reject(new Error(`curl ×${n}: ${sizes.length} results`)); return; }
      resolve([sizes.reduce((a, b) => a + b, 0), ms]);
    });
  });
}

export async function runBlobBench(o: BlobBenchOptions): Promise<BlobBenchResult> {
  mkdirSync(o.dir, { recursive: true });
  const copy = await startNixreg(o.cli, o.dir, { name: 'nixreg copy', env: { ...process.env, NIXREG_SENDFILE: '0' } });
  o.track(copy);
  await pushBlob(copy.url, o.repo, o.blob);
  const servers = [o.nixreg, copy, o.baseline];
  const path = `/v2/${o.repo}/blobs/${o.blob.digest}`;
  const expect = (s: Server, n: number, bytes: number) => {
    if (bytes !== n * o.blob.size) throw new Error(`${s.name} sent ${bytes} of ${n * o.blob.size} bytes`);
  };
  // One at a time: enough sequential downloads per sample for a GiB, so that the 10 ms
  // ticks of /proc's CPU times are small against what is measured.
  const serial = Math.max(1, Math.ceil(GiB / o.blob.size));
  const one = async (s: Server) => {
    let bytes = 0;
    let ms = 0;
    for (let i = 0; i < serial; i++) {
      const [b, t] = await downloadMany(`${s.url}${path}`, 1);
      bytes += b;
      ms += t;
    }
    expect(s, serial, bytes);
    return { bytes, ms };
  };
  const many = async (s: Server) => {
    const [bytes, ms] = await downloadMany(`${s.url}${path}`, o.concurrency);
    expect(s, o.concurrency, bytes);
    return { bytes, ms };
  };
  // Warm-up (page cache, JIT, connection set-up), not recorded.
  for (const s of servers) { await downloadMany(`${s.url}${path}`, 1); await many(s); }
  const serialRuns = await alternate(servers, o.rounds, one);
  const manyRuns = await alternate(servers, o.rounds, many);

  type Run = Measured<{ bytes: number; ms: number }>;
  const mibps = (x: Run) => x.v.bytes / MiB / (x.v.ms / 1000);
  const cpuPerGiB = (x: Run) => x.cpuMs / (x.v.bytes / GiB);
  for (const [label, runs] of [['1 at a time', serialRuns], [`${o.concurrency} at once`, manyRuns]] as const) {
    for (const s of servers) {
      o.log(`blob GET ${label}, ${s.name}: ${runs.get(s)!.map((x) => `${mibps(x).toFixed(0)} MiB/s ${cpuPerGiB(x).toFixed(0)} ms/GiB`).join('; ')}`);
    }
  }
  const rows: BlobRow[] = [];
  const add = (metric: string, runs: Map<Server, Run[]>, f: (x: Run) => number, better: 'higher' | 'lower', digits: number, goal?: number) => {
    const cells = servers.map((s) => stat(runs.get(s)!.map(f)));
    const ratio = cells[0]!.median / cells[2]!.median;
    const r: BlobRow = { metric, cells, ratio, copyRatio: cells[1]!.median / cells[2]!.median, better, digits };
    if (goal !== undefined && o.goals) {
      r.goal = better === 'higher' ? `≥ ${goal.toFixed(1)}×` : `≤ ${goal.toFixed(1)}×`;
      const printed = Math.round(ratio * 100) / 100;
      r.pass = better === 'higher' ? printed >= goal : printed <= goal;
    }
    rows.push(r);
  };
  const mib = o.blob.size / MiB;
  add(`blob GET ${mib} MiB, 1 at a time (MiB/s)`, serialRuns, mibps, 'higher', 0, 1.0);
  add(`blob GET ${mib} MiB, 1 at a time: server CPU per GiB (ms)`, serialRuns, cpuPerGiB, 'lower', 0, 1.0);
  add(`blob GET ${mib} MiB, ${o.concurrency} at once (MiB/s in all)`, manyRuns, mibps, 'higher', 0, 1.0);
  add(`blob GET ${mib} MiB, ${o.concurrency} at once: server CPU per GiB (ms)`, manyRuns, cpuPerGiB, 'lower', 0, 1.0);
  return { rows, columns: ['nixreg (sendfile)', 'nixreg NIXREG_SENDFILE=0', o.baselineLabel] };
}

export function renderBlobTable(r: BlobBenchResult): string {
  const [a, b, c] = r.columns;
  const fmt = (s: Stat, d: number) => (s.samples.length > 1 ? `${s.median.toFixed(d)} (${s.min.toFixed(d)}–${s.max.toFixed(d)})` : s.median.toFixed(d));
  const lines = [
    `| metric | ${a} | ${b} | ${c} | sendfile / ${c} | copy / ${c} | goal | result |`,
    '|---|---:|---:|---:|---:|---:|---|---|',
  ];
  for (const x of r.rows) {
    const result = x.pass === undefined ? '' : x.pass ? 'PASS' : '**FAIL**';
    lines.push(`| ${x.metric} | ${x.cells.map((s) => fmt(s, x.digits)).join(' | ')} | ${x.ratio.toFixed(2)}× (${x.better} is better) | ${x.copyRatio.toFixed(2)}× | ${x.goal ?? ''} | ${result} |`);
  }
  return lines.join('\n');
}
