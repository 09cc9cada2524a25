// bench/cold-blob: a blob GET whose bytes are not in the page cache, and what it does to
// the rest of the server meanwhile.
//
//   npm run bench:cold-blob [-- --mib 1024 --rounds 3]      (as root: it drops the page cache)
//
// Why: src/registry/zero-copy.ts sends blob bodies with sendfile(2) on the event loop, so
// a page that must come from disk is read inside that call, on the thread that answers
// every other request (as nginx's plain `sendfile on` does); the copy fallback reads in
// libuv's thread pool, Distribution in a goroutine. A registry's blobs outgrow its memory,
// so this is the case an operator meets. Per server and round: `sync; echo 3 >
// /proc/sys/vm/drop_caches`, then one curl download while this process probes
// `GET /v2/` on the same server every --probe-ms (a request that touches no disk), and
// the probe's latency without a download as the floor. Three servers as in
// bench/serve/blobs.ts: nixreg (sendfile), nixreg NIXREG_SENDFILE=0, Distribution 2.8;
// ratios against Distribution, measured in the same run.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { renderBlobTable, downloadMany, type BlobRow } from './serve/blobs.js';
import { call, closeClient, pushBlob } from './serve/client.js';
import { syntheticBlob } from './serve/content.js';
import { stat } from './serve/report.js';
import { startDistribution, startNixreg, type Server } from './serve/servers.js';

const MiB = 1024 * 1024;
const { values: opt } = parseArgs({
  options: {
    mib: { type: 'string', default: '1024' },
    rounds: { type: 'string', default: '3' },
    'probe-ms': { type: 'string', default: '5' },
    distribution: { type: 'string', default: '/usr/bin/docker-registry' },
  },
});
const mib = Number(opt.mib);
const rounds = Number(opt.rounds);
const probeMs = Number(opt['probe-ms']);
if (process.getuid?.() !== 0) throw new Error('bench/cold-blob drops the page cache: run it as root');

const dir = mkdtempSync(join(tmpdir(), 'nixreg-cold-blob-'));
const servers: Server[] = [];
const cleanup = async () => { for (const s of servers) await s.stop(); closeClient(); rmSync(dir, { recursive: true, force: true }); };
process.on('SIGINT', () => { void cleanup().then(() => process.exit(130)); });

const dropCaches = () => { execFileSync('sync'); writeFileSync('/proc/sys/vm/drop_caches', '3\n'); };

/** Probes GET /v2/ until `until` settles; returns the latencies in ms. */
async function probe(s: Server, until: Promise<unknown>): Promise<number[]> {
  let done = false;
  void until.finally(() => { done = true; });
  const lat: number[] = [];
  while (!done) {
    const t = performance.now();
    const r = await call('GET', `${s.url}/v2/`);
    if (r.status !== 200) throw new Error(`${s.name}: GET /v2/ gave ${r.status}`);
    lat.push(performance.now() - t);
    await new Promise((r) => setTimeout(r, probeMs));
  }
  return lat;
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]!;

try {
  const cli = resolve(fileURLToPath(import.meta.url), '../../src/main.cjs');
  for (const d of ['a', 'b', 'c']) mkdirSync(join(dir, d));
  servers.push(await startNixreg(cli, join(dir, 'a'), { name: 'nixreg' }));
  servers.push(await startNixreg(cli, join(dir, 'b'), { name: 'nixreg copy', env: { ...process.env, NIXREG_SENDFILE: '0' } }));
  servers.push(await startDistribution(opt.distribution, join(dir, 'c')));
  const blob = syntheticBlob(mib * MiB);
  for (const s of servers) await pushBlob(s.url, 'bench/cold', blob);
  const results = new Map<Server, { rate: number[]; p99: number[]; max: number[]; idle: number[] }>(
    servers.map((s) => [s, { rate: [], p99: [], max: [], idle: [] }]));
  for (let r = 0; r < rounds; r++) {
    for (const s of [...servers.slice(r % 3), ...servers.slice(0, r % 3)]) {
      const x = results.get(s)!;
      const idle = await probe(s, new Promise((res) => setTimeout(res, 1000)));
      x.idle.push(pct(idle, 0.99));
      dropCaches();
      const t0 = performance.now();
      const dl = downloadMany(`${s.url}/v2/bench/cold/blobs/${blob.digest}`, 1);
      const lat = await probe(s, dl);
      const [bytes] = await dl;
      if (bytes !== blob.size) throw new Error(`${s.name} sent ${bytes} of ${blob.size} bytes`);
      x.rate.push(bytes / MiB / ((performance.now() - t0) / 1000));
      x.p99.push(pct(lat, 0.99));
      x.max.push(pct(lat, 1));
      console.error(`[cold-blob] ${s.name}: ${x.rate.at(-1)!.toFixed(0)} MiB/s; /v2/ during it p99 ${x.p99.at(-1)!.toFixed(1)} ms, max ${x.max.at(-1)!.toFixed(1)} ms (${lat.length} probes); idle p99 ${x.idle.at(-1)!.toFixed(1)} ms`);
    }
  }
  const rows: BlobRow[] = [];
  const add = (metric: string, k: 'rate' | 'p99' | 'max' | 'idle', better: 'higher' | 'lower', digits: number) => {
    const cells = servers.map((s) => stat(results.get(s)![k]));
    rows.push({ metric, cells, ratio: cells[0]!.median / cells[2]!.median, copyRatio: cells[1]!.median / cells[2]!.median, better, digits });
  };
  add(`cold blob GET ${mib} MiB (MiB/s)`, 'rate', 'higher', 0);
  add('GET /v2/ during it, p99 (ms)', 'p99', 'lower', 1);
  add('GET /v2/ during it, max (ms)', 'max', 'lower', 1);
  add('GET /v2/ with no download, p99 (ms)', 'idle', 'lower', 1);
  console.log(`Cold blob GET: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; load average at end ${loadavg().map((l) => l.toFixed(2)).join(' ')}; `
    + `page cache dropped before each download; ${rounds} rounds rotating; probe every ${probeMs} ms; median (min–max).\n`);
  console.log(renderBlobTable({ rows, columns: ['nixreg (sendfile)', 'nixreg NIXREG_SENDFILE=0', 'Distribution 2.8'] }));
} finally {
  await cleanup();
}
