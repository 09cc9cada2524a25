// bench/metrics: what the per-request metrics cost a manifest GET, the request a busy
// registry serves most. Two `nixreg serve` of this build, alike (fresh data dirs, the
// same image pushed, default log level) but for NIXREG_METRICS=off in one; wrk GETs the
// manifest by tag from each in turn, rotating who goes first, and a ratio is on ÷ off,
// the median of the per-round ratios. The metrics server is scraped once first, as
// Prometheus would, so that the process metrics' own monitors run during the measurement.
//
//   npm run bench:metrics [-- --rounds 26 --seconds 2 --cpu-prof --aa ...]
//
// On this shared machine, load drifts more between rounds than metrics cost, hence:
// many short rounds rather than a few long ones (paired rounds seconds apart see the same
// load, and the median of many pairs shrugs off the ones another process disturbed); the
// two servers started in one order for half the rounds and in the other for the rest, so
// that being started first or second (which seemed to matter in early A/A runs) cannot
// pass for a cost; --aa, both servers with metrics off, to show the noise; and
// --cpu-prof, both under `node
// --cpu-prof` (alike, so the profiler's cost cancels out), for the share of the metrics
// server's CPU spent in metrics code (metrics-profile.ts), steadier than any rate.
//
// Both servers and all temporary files are removed at the end, also on Ctrl-C.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { call, checkManifest, closeClient, DOCKER_ACCEPT, expect, pushImage } from './serve/client.js';
import { syntheticImage } from './serve/content.js';
import { alternate, pairedRow, renderTable, type Measured, type Row } from './serve/report.js';
import { startNixreg, type Server } from './serve/servers.js';
import { metricsShare } from './metrics-profile.js';
import { runWrk, type WrkResult } from './serve/wrk.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
/** The goal: metrics make a manifest GET less than 5 % slower. */
const GOAL = 0.95;

type Kind = 'on' | 'off';

const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '26' },
    threads: { type: 'string', default: '1' },
    connections: { type: 'string', default: '32' },
    'cpu-prof': { type: 'boolean' },
    aa: { type: 'boolean' },
    json: { type: 'string' },
    help: { type: 'boolean' },
  },
});
if (opt.help) {
  process.stdout.write(`usage: node dist/bench/metrics.js [options]   (defaults in brackets)
  --seconds N       length of each wrk run [2]
  --rounds N        rounds, each running both servers back to back [26]
  --threads N       wrk threads [1]
  --connections N   wrk connections [32]
  --cpu-prof        run both under node --cpu-prof and report the metrics code's share of CPU
  --aa              an A/A run: both servers with metrics off, to see what the noise is
  --json FILE       also write the results as JSON
`);
  process.exit(0);
}
const int = (k: 'seconds' | 'rounds' | 'threads' | 'connections') => {
  const n = Number(opt[k]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${k} must be a positive integer`);
  return n;
};
const cfg = { seconds: int('seconds'), rounds: int('rounds'), threads: int('threads'), connections: int('connections') };

function log(msg: string) { process.stderr.write(`[bench/metrics] ${msg}\n`); }

async function main() {
  try { execFileSync('sh', ['-c', 'command -v wrk'], { stdio: 'ignore' }); } catch { throw new Error('wrk is not installed (apt-get install wrk)'); }
  const cli = join(ROOT, 'dist/src/main.cjs');
  if (!existsSync(cli)) throw new Error(`${cli} missing: run "npx tsc -p ." first`);
  const tmp = mkdtempSync(join(tmpdir(), 'nixreg-bench-metrics-'));
  const servers: Server[] = [];
  const cleanup = async () => {
    await Promise.allSettled(servers.map((s) => s.stop()));
    closeClient();
    rmSync(tmp, { recursive: true, force: true });
  };
  const onSignal = () => { void cleanup().finally(() => process.exit(130)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const env = { ...process.env };
    delete env.NIXREG_METRICS;
    const aa = !!opt.aa;
    const profDir = join(tmp, 'profiles');
    const img = syntheticImage('bench/app', 'v1');
    const path = `/v2/${img.repo}/manifests/${img.tag}`;
    const wrk = (seconds: number) => (s: Server) => runWrk({
      url: `${s.url}${path}`, headers: { Accept: DOCKER_ACCEPT }, seconds, threads: cfg.threads, connections: cfg.connections,
    });
    const measured: Record<Kind, Measured<WrkResult>[]> = { on: [], off: [] };
    const shares: ReturnType<typeof metricsShare>[] = [];
    // Each half of the rounds starts them in the other order: which one starts first must
    // not pass for a cost of metrics.
    for (const [half, order] of ([['off', 'on'], ['on', 'off']] as const).entries()) {
      const started = {} as Record<Kind, Server>;
      for (const kind of order) {
        const dir = join(tmp, `${kind}-${half}`);
        mkdirSync(dir);
        const nodeArgs = opt['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', profDir, '--cpu-prof-name', `${kind}-${half}.cpuprofile`] : [];
        const on = kind === 'on' && !aa;
        started[kind] = await startNixreg(cli, dir, { name: `metrics ${kind}`, env: on ? env : { ...env, NIXREG_METRICS: 'off' }, nodeArgs });
        servers.push(started[kind]);
      }
      const { on, off } = started;
      log(`half ${half + 1}: ${order.map((k) => `metrics ${k} at ${started[k].url} (pid ${started[k].pid})`).join(', then ')}${aa ? ' (--aa: both off)' : ''}`);
      let digest = '';
      for (const s of [off, on]) digest = await pushImage(s.url, img);
      for (const s of [off, on]) await checkManifest(s.url, img, digest, {}, s.name);
      // The switch works, and the other server is scraped as Prometheus would.
      expect(await call('GET', `${off.url}/metrics`), 404, 'GET /metrics with NIXREG_METRICS=off');
      if (!aa) expect(await call('GET', `${on.url}/metrics`), 200, 'GET /metrics');
      for (const s of [off, on]) await wrk(2)(s);
      const rounds = half === 0 ? Math.ceil(cfg.rounds / 2) : Math.floor(cfg.rounds / 2);
      const r = await alternate([off, on], rounds, wrk(cfg.seconds));
      measured.on.push(...r.get(on)!);
      measured.off.push(...r.get(off)!);
      for (const s of [off, on]) log(`${s.name}: ${r.get(s)!.map((x) => x.v.rps.toFixed(0)).join(', ')} req/s`);
      if (!aa) {
        // Every request wrk saw answered must be in the counter (it may hold a few more:
        // those in flight when wrk stopped).
        const answered = r.get(on)!.reduce((n, x) => n + x.v.requests, 0);
        const scraped = expect(await call('GET', `${on.url}/metrics`), 200, 'GET /metrics').body.toString();
        const m = /^nixreg_http_requests_total\{method="GET",route="end-3",status="200"\} (\d+)$/m.exec(scraped);
        const counted = Number(m?.[1] ?? 0);
        if (counted < answered) throw new Error(`the metrics server counted ${counted} manifest GETs, wrk saw ${answered} answered`);
        log(`nixreg_http_requests_total{method="GET",route="end-3",status="200"} ${counted}; wrk saw ${answered} in the measured rounds`);
      }
      // Stopped now, not at the end: the next half has the machine to itself, and a
      // profile is written when its process exits.
      for (const s of [off, on]) { await s.stop(); servers.splice(servers.indexOf(s), 1); }
      if (opt['cpu-prof'] && !aa) shares.push(metricsShare(join(profDir, `on-${half}.cpuprofile`)));
    }
    const perRound = measured.on.map((x, i) => (x.v.rps / measured.off[i]!.v.rps).toFixed(2)).join(', ');
    log(`per-round rate ratios on / off: ${perRound}`);

    const of = (k: Kind, f: (x: Measured<WrkResult>) => number) => measured[k].map(f);
    const cpuUs = (x: Measured<WrkResult>) => (x.cpuMs * 1000) / x.v.requests;
    const rows: Row[] = [
      pairedRow('manifest GET by tag (req/s)', of('on', (x) => x.v.rps), of('off', (x) => x.v.rps), 'higher', aa ? undefined : GOAL, 0),
      pairedRow('manifest GET by tag p99 (ms)', of('on', (x) => x.v.p99ms), of('off', (x) => x.v.p99ms), 'lower', undefined, 2),
      pairedRow('manifest GET by tag: server CPU per request (µs)', of('on', cpuUs), of('off', cpuUs), 'lower', undefined, 1),
    ];
    const head = `nixreg ${gitRev()} (node ${process.version}): ${aa ? 'A/A run, both with NIXREG_METRICS=off' : 'metrics on (scraped once before) against NIXREG_METRICS=off'}, `
      + `both fresh with the same image pushed, started in one order for half the rounds and in the other for the rest; `
      + `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; load average at end ${loadavg().map((l) => l.toFixed(2)).join(' ')}; `
      + `wrk -t${cfg.threads} -c${cfg.connections} -d${cfg.seconds}s × ${cfg.rounds} rounds, rotating; median (min–max); ratio: median of the per-round ratios.`;
    process.stdout.write(`${head}\n\n${renderTable(rows, aa ? 'server A (off)' : 'metrics on', aa ? 'server B (off)' : 'metrics off')}\n`);
    for (const [i, share] of shares.entries()) {
      process.stdout.write(`\nmetrics code in the metrics server's profile, half ${i + 1}: ${(share.share * 100).toFixed(2)} % of its CPU in JavaScript `
        + `(idle, GC and engine time left out; ${share.metricsMs.toFixed(0)} of ${share.busyMs.toFixed(0)} ms; `
        + `${share.top.map(([f, ms]) => `${f} ${ms.toFixed(0)} ms`).join(', ')})\n`);
    }
    if (opt.json) writeFileSync(opt.json, JSON.stringify({ cfg, aa, perRound, rows, shares }, null, 2));
    const failed = rows.filter((x) => x.pass === false);
    if (failed.length) log(`goal missed: ${failed.map((x) => x.metric).join('; ')}`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function gitRev(): string {
  try { return execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch { return '(unknown revision)'; }
}

main().catch((err: unknown) => {
  process.stderr.write(`[bench/metrics] failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
