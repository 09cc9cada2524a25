// bench/fuzz: the HTTP fuzzer of test/fuzz for a long run (200,000 requests by default)
// against the real `nixreg serve`, with a probe (GET /v2/ in a closed loop on its own
// connection, in a worker: fuzz-probe.ts) measured first with no load, then during the
// fuzz, then after it.
//
//   npm run bench:fuzz [-- --seed S --requests N --concurrency C --probe-seconds P]
//
// Prints the fuzz's throughput and outcome, the probe's rate and latency during and
// after the fuzz as ratios against the no-load baseline of the same run, and the
// server's RSS. Exits 0 whatever it finds (like the other benches: not a CI gate), but
// lists every 5xx and unanswered request with the seed and case that replay it.
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import type { ProbeResult } from './fuzz-probe.js';
import { report, runFuzz } from '../test/fuzz/runner.js';
import { rssKiB, sampleRss, startFuzzServer, type FuzzServer } from '../test/fuzz/server.js';

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    seed: { type: 'string' },
    requests: { type: 'string', default: '200000' },
    concurrency: { type: 'string', default: '16' },
    'probe-seconds': { type: 'string', default: '10' },
    help: { type: 'boolean' },
  },
});
if (opt.help) {
  process.stdout.write(`usage: node dist/bench/fuzz.js [seed] [options]   (defaults in brackets)
  --seed S            PRNG seed (or the first argument) [bench-1]
  --requests N        fuzzed requests [200000]
  --concurrency N     fuzz requests in flight [16]
  --probe-seconds N   length of the no-load probe runs before and after the fuzz [10]
`);
  process.exit(0);
}
const int = (k: 'requests' | 'concurrency' | 'probe-seconds') => {
  const n = Number(opt[k]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${k} must be a positive integer`);
  return n;
};
const seed = opt.seed ?? positionals[0] ?? 'bench-1';
const cfg = { requests: int('requests'), concurrency: int('concurrency'), probeMs: int('probe-seconds') * 1000 };

function log(msg: string) { process.stderr.write(`[bench/fuzz] ${msg}\n`); }

type Probe = ProbeResult;

/** Runs the probe in a worker for `durationMs`, or until the returned stop() is called. */
function probe(url: string, durationMs?: number): { result: Promise<Probe>; stop(): void } {
  const w = new Worker(new URL('./fuzz-probe.js', import.meta.url), { workerData: { url, durationMs } });
  const result = new Promise<Probe>((resolve, reject) => {
    w.once('message', (m: Probe) => { resolve(m); void w.terminate(); });
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`the probe exited (${code}) without a result`)));
  });
  return { result, stop: () => w.postMessage('stop') };
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
}

const rate = (p: Probe) => p.count / (p.ms / 1000);
const mib = (kib: number) => (kib / 1024).toFixed(0);

async function main() {
  let srv: FuzzServer | undefined;
  const onSignal = () => { void (srv?.stop() ?? Promise.resolve()).finally(() => process.exit(130)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    srv = await startFuzzServer();
    const s = srv;
    log(`nixreg at ${s.url} (pid ${s.pid}); seed ${JSON.stringify(seed)}, ${cfg.requests} requests, ${cfg.concurrency} in flight`);
    const rssStart = rssKiB(s.pid);

    // A cold server is slower than a warm one: warm up first, or the fuzz would look like a speed-up.
    await probe(s.url, 3000).result;
    log(`baseline: probe alone for ${cfg.probeMs / 1000} s`);
    const before = await probe(s.url, cfg.probeMs).result;
    const rssBefore = rssKiB(s.pid);

    log('fuzz, with the probe running beside it');
    let answered = 0;
    const rss = sampleRss(s.pid, 200);
    const during = probe(s.url);
    const progress = setInterval(() => log(`${answered} requests answered, RSS ${mib(rssKiB(s.pid))} MiB`), 10_000);
    const result = await runFuzz({ url: s.url, seed, requests: cfg.requests, concurrency: cfg.concurrency, onAnswer: () => { answered++; } })
      .finally(() => { during.stop(); clearInterval(progress); });
    const load = await during.result;
    const { peakKiB } = rss.stop();
    const rssAfterFuzz = rssKiB(s.pid);

    log(`after: probe alone for ${cfg.probeMs / 1000} s`);
    const afterwards = await probe(s.url, cfg.probeMs).result;
    const rssEnd = rssKiB(s.pid);
    const alive = s.alive();

    const row = (name: string, f: (p: Probe) => number, unit: string, better: string) =>
      `| ${name} (${unit}) | ${f(before).toFixed(2)} | ${f(load).toFixed(2)} | ${(f(load) / f(before)).toFixed(2)}× | ${f(afterwards).toFixed(2)} | ${(f(afterwards) / f(before)).toFixed(2)}× | ${better} |`;
    const fivexx = Object.entries(result.statuses).filter(([k]) => /^5/.test(k)).reduce((n, [, v]) => n + v, 0);
    const out = [
      `nixreg (node ${process.version}), ${cpus().length} × ${cpus()[0]?.model.trim()}; load average at end ${loadavg().map((x) => x.toFixed(2)).join(' ')}; `
        + `seed ${JSON.stringify(seed)}, ${cfg.concurrency} fuzz requests in flight; probe = GET /v2/ back to back on one keep-alive connection, from a worker thread.`,
      '',
      `Fuzz: ${result.requests} requests in ${result.cases} cases, ${(result.ms / 1000).toFixed(1)} s = ${Math.round(result.requests / (result.ms / 1000))} req/s; `
        + `${fivexx} answered 5xx, ${result.statuses['no answer'] ?? 0} unanswered, ${result.statuses['cut short'] ?? 0} cut short; server ${alive ? 'alive' : 'EXITED'} at the end.`,
      '',
      '| probe | no load (before) | during fuzz | during / before | no load (after) | after / before | |',
      '|---|---:|---:|---:|---:|---:|---|',
      row('throughput', rate, 'req/s', 'higher is better'),
      row('latency mean', (p) => p.latencies.reduce((a, b) => a + b, 0) / p.latencies.length, 'ms', 'lower is better'),
      row('latency p50', (p) => quantile(p.latencies, 0.5), 'ms', 'lower is better'),
      row('latency p99', (p) => quantile(p.latencies, 0.99), 'ms', 'lower is better'),
      row('latency max', (p) => Math.max(...p.latencies), 'ms', 'lower is better'),
      '',
      `| server VmRSS | MiB |\n|---|---:|\n| at start | ${mib(rssStart)} |\n| before the fuzz (after the baseline probe) | ${mib(rssBefore)} |\n`
        + `| peak during the fuzz | ${mib(peakKiB)} |\n| right after the fuzz | ${mib(rssAfterFuzz)} |\n| after the closing probe | ${mib(rssEnd)} |`,
      '',
      `Statuses: ${JSON.stringify(result.statuses)}`,
    ];
    process.stdout.write(`${out.join('\n')}\n`);
    if (result.failures.length) process.stdout.write(`\n${report(seed, result, 1)}\n\nserver internal errors:\n${s.problems().join('\n')}\n`);
  } finally {
    await srv?.stop();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench/fuzz failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
