// bench/serve: nixreg against CNCF Distribution 2.8 as a plain registry, side by side on
// this machine, with the same content pushed by the same client.
//
//   npm run bench:serve [-- --seconds 5 --rounds 3 ...]
//
// Prints a markdown table of absolute numbers, ratios nixreg / Distribution, and
// pass/fail against the goals. With --peer-nixreg, the baseline is another nixreg build
// instead (e.g. the previous commit's, to show a change costs nothing), without goals.
// Then blob downloads (serve/blobs.ts): CPU per GiB and rate, one at a time and 32 at once,
// with nixreg's sendfile turned off as a third column (--blobs-only runs just that one).
// Then a table from serve/auth.ts: manifest GET with --auth (Bearer token, Basic
// credentials) against the same build without it (--auth-only runs just that one).
// With --s3 (serve/s3.ts), instead: nixreg and Distribution both storing on one throwaway
// radosgw, with nixreg's CPU per request against its local-disk default (--database URL
// is passed to the S3 nixreg, for a run with the PostgreSQL index).
// Everything runs on 127.0.0.1 with bounded loops; both servers and all temporary files
// are removed at the end, also on Ctrl-C.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runAuthBench, type AuthBenchResult } from './serve/auth.js';
import { renderBlobTable, runBlobBench, type BlobBenchResult } from './serve/blobs.js';
import { checkManifest, closeClient, DOCKER_ACCEPT, pushBlob, pushImage, timeDownload } from './serve/client.js';
import { syntheticBlob, syntheticImage, type BlobSpec } from './serve/content.js';
import { cpuMsOf, memoryOf, sampleRss } from './serve/proc.js';
import { alternate, renderTable, row, stat, type Measured, type Row } from './serve/report.js';
import { startDistribution, startNixreg, type Server } from './serve/servers.js';
import { runHeadLoad } from './serve/headload.js';
import { runWrk, type WrkResult } from './serve/wrk.js';
import { renderS3, runS3Bench } from './serve/s3.js';
import type { Rgw } from '../test/helpers/rgw.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const MB = 1e6;
const MiB = 1024 * 1024;

const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    threads: { type: 'string', default: '1' },
    connections: { type: 'string', default: '32' },
    'blob-mib': { type: 'string', default: '256' },
    'rss-mib': { type: 'string', default: '1024' },
    downloads: { type: 'string', default: '7' },
    pushes: { type: 'string', default: '3' },
    distribution: { type: 'string', default: '/usr/bin/docker-registry' },
    'peer-nixreg': { type: 'string' },
    'auth-only': { type: 'boolean' },
    'blobs-only': { type: 'boolean' },
    'blob-concurrency': { type: 'string', default: '32' },
    'blob-rounds': { type: 'string', default: '3' },
    'cpu-prof': { type: 'string' },
    s3: { type: 'boolean' },
    database: { type: 'string' },
    'dist-cache': { type: 'string', default: 'inmemory' },
    json: { type: 'string' },
    help: { type: 'boolean' },
  },
});
if (opt.help) {
  process.stdout.write(`usage: node dist/bench/serve.js [options]   (defaults in brackets)
  --seconds N       length of each wrk / HEAD load run [5]
  --rounds N        alternating rounds per manifest case [3]
  --threads N       wrk threads [1]
  --connections N   wrk and HEAD load connections [32]
  --blob-mib N      size of the blob downloaded and pushed [256]
  --downloads N     blob downloads per server [7]
  --pushes N        blob pushes per server [3]
  --rss-mib N       size of the push watched for memory [1024]
  --distribution P  Distribution binary [/usr/bin/docker-registry]
  --peer-nixreg P   compare with another nixreg build (its dist/src/main.cjs) instead
                    of Distribution; no goals are judged
  --auth-only       only the authenticated manifest GET section (no Distribution, no blobs)
  --blobs-only      only the blob download section (CPU per GiB, 1 and N at once)
  --blob-concurrency N  downloads at once in that section [32]
  --blob-rounds N   alternating rounds of that section [3]
  --cpu-prof DIR    write node --cpu-prof profiles of the auth section's two servers to DIR
                    (with --s3: of the nixreg on S3)
  --s3              only the S3 section: nixreg --storage s3:// and Distribution's s3
                    driver on one throwaway radosgw, and nixreg on local disk for CPU
  --database URL    with --s3: the nixreg on S3 also gets --database URL
  --dist-cache C    with --s3: Distribution's blob descriptor cache, inmemory or none [inmemory]
  --json FILE       also write the results as JSON
`);
  process.exit(0);
}
const int = (k: keyof typeof opt) => {
  const n = Number(opt[k]);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${k} must be a positive integer`);
  return n;
};
const cfg = {
  seconds: int('seconds'), rounds: int('rounds'), threads: int('threads'), connections: int('connections'),
  blobBytes: int('blob-mib') * MiB, rssBytes: int('rss-mib') * MiB, downloads: int('downloads'), pushes: int('pushes'),
  blobConcurrency: int('blob-concurrency'), blobRounds: int('blob-rounds'),
};

function log(msg: string) { process.stderr.write(`[bench/serve] ${msg}\n`); }

function requireBinary(cmd: string, pkg = cmd.startsWith('/') ? 'docker-registry' : cmd) {
  try { execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { stdio: 'ignore' }); } catch {
    throw new Error(`${cmd} is not installed (apt-get install ${pkg})`);
  }
}

async function main() {
  const authOnly = !!opt['auth-only'];
  requireBinary('wrk');
  requireBinary('htpasswd', 'apache2-utils');
  if (!authOnly) requireBinary('curl');
  const peerCli = opt['peer-nixreg'] && resolve(opt['peer-nixreg']);
  if (peerCli && !existsSync(peerCli)) throw new Error(`--peer-nixreg: ${peerCli} does not exist`);
  if (!peerCli && !authOnly) requireBinary(opt.distribution!);
  const cpuProfDir = opt['cpu-prof'] && resolve(opt['cpu-prof']);
  if (cpuProfDir) mkdirSync(cpuProfDir, { recursive: true });
  const cli = join(ROOT, 'dist/src/main.cjs');
  if (!existsSync(cli)) throw new Error(`${cli} missing: run "npx tsc -p ." first`);

  const tmp = mkdtempSync(join(tmpdir(), 'nixreg-bench-serve-'));
  const servers: Server[] = [];
  const rgws: Rgw[] = [];
  const cleanup = async () => {
    await Promise.allSettled(servers.map((s) => s.stop()));
    await Promise.allSettled(rgws.map((r) => r.stop()));
    closeClient();
    rmSync(tmp, { recursive: true, force: true });
  };
  const onSignal = () => { void cleanup().finally(() => process.exit(130)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (opt.s3) {
      mkdirSync(join(tmp, 's3'));
      const r = await runS3Bench({
        cli, distribution: opt.distribution!, dir: join(tmp, 's3'), database: opt.database, distCache: distCache(), seconds: cfg.seconds, rounds: cfg.rounds,
        threads: cfg.threads, connections: cfg.connections, blobBytes: cfg.blobBytes, downloads: cfg.downloads, cpuProfDir,
        track: (s) => servers.push(s), trackRgw: (x) => rgws.push(x), log,
      });
      const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; load average at end ${loadavg().map((l) => l.toFixed(2)).join(' ')}`;
      process.stdout.write([`nixreg ${gitRev()} (node ${process.version}); ${r.setup}; ${machine};`
        + ` wrk -t${cfg.threads} -c${cfg.connections} -d${cfg.seconds}s × ${cfg.rounds} rounds, rotating; ${cfg.downloads} downloads; median (min–max).`,
      '', renderS3(r), ''].join('\n'));
      if (opt.json) writeFileSync(opt.json, JSON.stringify({ cfg, s3: r }, null, 2));
      const failed = r.rows.filter((x) => x.pass === false);
      if (failed.length) log(`goals missed: ${failed.map((x) => x.metric).join('; ')}`);
      return;
    }
    const versus = authOnly ? undefined : await againstPeer(cli, peerCli, tmp, servers);
    // After the other sections, whose servers sit idle from here on.
    mkdirSync(join(tmp, 'auth'));
    const auth = opt['blobs-only'] ? undefined : await runAuthBench({
      cli, dir: join(tmp, 'auth'), seconds: cfg.seconds, rounds: cfg.rounds, threads: cfg.threads, connections: cfg.connections,
      cpuProfDir, track: (s) => servers.push(s), log,
    });
    report(versus, auth);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

interface Versus { distVersion: string; peerLabel: string; rows: Row[]; blobs: BlobBenchResult }

/** nixreg against Distribution (or --peer-nixreg): every section but the auth one. */
async function againstPeer(cli: string, peerCli: string | undefined, tmp: string, servers: Server[]): Promise<Versus> {
  for (const d of ['nixreg', 'distribution']) mkdirSync(join(tmp, d));
  servers.push(await startNixreg(cli, join(tmp, 'nixreg')));
  servers.push(peerCli
    ? { ...await startNixreg(peerCli, join(tmp, 'distribution')), name: 'peer nixreg' }
    : await startDistribution(opt.distribution!, join(tmp, 'distribution')));
  const [nix, dist] = servers as [Server, Server];
  const peerRev = peerCli && gitRev(resolve(peerCli, '../../..'));
  const distVersion = peerCli ? `nixreg ${peerRev} at ${peerCli}` : execFileSync(opt.distribution!, ['--version']).toString().trim();
  const peerLabel = peerCli ? `peer nixreg ${peerRev}` : 'Distribution 2.8';
  // The goals are set against Distribution; against another nixreg there is none.
  const goal = (minRatio: number) => (peerCli ? undefined : minRatio);
  log(`nixreg at ${nix.url} (pid ${nix.pid}), ${distVersion} at ${dist.url} (pid ${dist.pid})`);

  // ------------------------------------------------------------ the same content in both
  const img = syntheticImage('bench/app', 'v1');
  const repo = img.repo;
  let manifestDigest = '';
  for (const s of servers) manifestDigest = await pushImage(s.url, img);
  for (const s of servers) await checkManifest(s.url, img, manifestDigest, {}, s.name);
  log(`pushed ${repo}:v1 (${manifestDigest}) to both`);

  const big = syntheticBlob(cfg.blobBytes);
  const bigRepo = 'bench/big';
  for (const s of servers) await pushBlob(s.url, bigRepo, big);
  log(`pushed a ${cfg.blobBytes / MiB} MiB blob ${big.digest} to both`);
  const blobSection = () => runBlobBench({
    cli, dir: join(tmp, 'nixreg-copy'), nixreg: nix, baseline: dist, baselineLabel: peerLabel, blob: big, repo: bigRepo,
    rounds: cfg.blobRounds, concurrency: cfg.blobConcurrency, goals: !peerCli, track: (s) => servers.push(s), log,
  });
  if (opt['blobs-only']) return { distVersion, peerLabel, rows: [], blobs: await blobSection() };

  // ------------------------------------------------------------ memory during a big push
  const huge = syntheticBlob(cfg.rssBytes);
  const memory = new Map<Server, { before: number; peak: number; hwm: number; mbps: number }>();
  for (const s of servers) {
    const before = memoryOf(s.pid).rssKiB;
    const sampler = sampleRss(s.pid);
    const ms = await pushBlob(s.url, 'bench/huge', huge);
    const peak = sampler.stop();
    memory.set(s, { before, peak, hwm: memoryOf(s.pid).hwmKiB, mbps: cfg.rssBytes / MB / (ms / 1000) });
    log(`${s.name}: ${cfg.rssBytes / MiB} MiB push, RSS ${before} → peak ${peak} KiB, VmHWM ${memoryOf(s.pid).hwmKiB} KiB`);
  }

  // ------------------------------------------------------------ manifest requests (wrk)
  const wrkCase = (path: string, method: 'GET' | 'HEAD', seconds = cfg.seconds) => (s: Server) => (method === 'HEAD'
    ? runHeadLoad({ url: `${s.url}${path}`, headers: { Accept: DOCKER_ACCEPT }, seconds, connections: cfg.connections })
    : runWrk({ url: `${s.url}${path}`, headers: { Accept: DOCKER_ACCEPT }, seconds, threads: cfg.threads, connections: cfg.connections }));
  const cases: { name: string; path: string; method: 'GET' | 'HEAD' }[] = [
    { name: 'manifest GET by tag', path: `/v2/${repo}/manifests/v1`, method: 'GET' },
    { name: 'manifest GET by digest', path: `/v2/${repo}/manifests/${manifestDigest}`, method: 'GET' },
    { name: 'manifest HEAD by tag', path: `/v2/${repo}/manifests/v1`, method: 'HEAD' },
  ];
  const wrkResults = new Map<string, Map<Server, Measured<WrkResult>[]>>();
  for (const c of cases) {
    // Warm-up: JIT, caches, connection setup; not recorded.
    for (const s of servers) await wrkCase(c.path, c.method, 2)(s);
    const r = await alternate(servers, cfg.rounds, wrkCase(c.path, c.method));
    wrkResults.set(c.name, r);
    for (const s of servers) log(`${c.name} ${s.name}: ${r.get(s)!.map((x) => x.v.rps.toFixed(0)).join(', ')} req/s`);
  }

  // ------------------------------------------------------------ blob download
  const blobPath = `/v2/${bigRepo}/blobs/${big.digest}`;
  for (const s of servers) await timeDownload(`${s.url}${blobPath}`);
  const downloads = await alternate(servers, cfg.downloads, async (s) => {
    const [n, ms] = await timeDownload(`${s.url}${blobPath}`);
    if (n !== big.size) throw new Error(`${s.name} sent ${n} of ${big.size} bytes`);
    return n / MB / (ms / 1000);
  });
  for (const s of servers) log(`blob GET ${s.name}: ${downloads.get(s)!.map((x) => x.v.toFixed(0)).join(', ')} MB/s`);
  const blobs = await blobSection();

  // ------------------------------------------------------------ monolithic push
  // A new blob per repetition, so that neither server can skip work for known content.
  const pushes = new Map<Server, Measured<number>[]>(servers.map((s) => [s, []]));
  for (let r = 0; r < cfg.pushes; r++) {
    const blob: BlobSpec = syntheticBlob(cfg.blobBytes);
    for (const s of r % 2 ? [...servers].reverse() : servers) {
      const c0 = cpuMsOf(s.pid);
      const ms = await pushBlob(s.url, `bench/push${r}`, blob);
      pushes.get(s)!.push({ v: cfg.blobBytes / MB / (ms / 1000), cpuMs: cpuMsOf(s.pid) - c0 });
    }
  }
  for (const s of servers) log(`push ${s.name}: ${pushes.get(s)!.map((x) => x.v.toFixed(0)).join(', ')} MB/s`);

  // ------------------------------------------------------------ report
  const rows: Row[] = [];
  for (const c of cases) {
    const r = wrkResults.get(c.name)!;
    const of = (s: Server, f: (x: Measured<WrkResult>) => number) => stat(r.get(s)!.map(f));
    rows.push(row(`${c.name} (req/s)`, of(nix, (x) => x.v.rps), of(dist, (x) => x.v.rps), 'higher', goal(1.5), 0));
    rows.push(row(`${c.name} p99 (ms)`, of(nix, (x) => x.v.p99ms), of(dist, (x) => x.v.p99ms), 'lower', undefined, 2));
    const cpuUs = (x: Measured<WrkResult>) => (x.cpuMs * 1000) / x.v.requests;
    rows.push(row(`${c.name}: server CPU per request (µs)`, of(nix, cpuUs), of(dist, cpuUs), 'lower', undefined, 0));
  }
  const blobMiB = cfg.blobBytes / MiB;
  const v = (m: Map<Server, Measured<number>[]>, s: Server) => stat(m.get(s)!.map((x) => x.v));
  const cpu = (m: Map<Server, Measured<number>[]>, s: Server) => stat(m.get(s)!.map((x) => x.cpuMs));
  rows.push(row(`blob GET ${blobMiB} MiB (MB/s)`, v(downloads, nix), v(downloads, dist), 'higher', goal(1.0), 0));
  rows.push(row(`blob GET ${blobMiB} MiB: server CPU (ms)`, cpu(downloads, nix), cpu(downloads, dist), 'lower', undefined, 0));
  rows.push(row(`blob push POST+PUT ${blobMiB} MiB (MB/s)`, v(pushes, nix), v(pushes, dist), 'higher', goal(1.0), 0));
  rows.push(row(`blob push ${blobMiB} MiB: server CPU (ms)`, cpu(pushes, nix), cpu(pushes, dist), 'lower', undefined, 0));
  const mn = memory.get(nix)!;
  const md = memory.get(dist)!;
  const one = (v: number) => stat([v]);
  rows.push(row(`blob push ${cfg.rssBytes / MiB} MiB (MB/s, single run)`, one(mn.mbps), one(md.mbps), 'higher', undefined, 0));
  const rssRow = row(`peak RSS during ${cfg.rssBytes / MiB} MiB push (MB)`, one(mn.peak * 1024 / MB), one(md.peak * 1024 / MB), 'lower', undefined, 1);
  rssRow.goal = '< 150 MB';
  rssRow.pass = mn.peak * 1024 / MB < 150;
  rows.push(rssRow);
  const hwmRow = row('VmHWM after that push (MB)', one(mn.hwm * 1024 / MB), one(md.hwm * 1024 / MB), 'lower', undefined, 1);
  hwmRow.goal = '< 150 MB';
  hwmRow.pass = mn.hwm * 1024 / MB < 150;
  rows.push(hwmRow);

  return { distVersion, peerLabel, rows, blobs };
}

function report(versus: Versus | undefined, auth: AuthBenchResult | undefined) {
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; load average at end ${loadavg().map((l) => l.toFixed(2)).join(' ')}`;
  const wrk = `wrk -t${cfg.threads} -c${cfg.connections} -d${cfg.seconds}s × ${cfg.rounds} rounds`;
  const out: string[] = [];
  if (versus) {
    const head = [
      `nixreg ${gitRev()} (node ${process.version}) vs ${versus.distVersion}; ${machine};`,
      `${wrk} alternating; ${cfg.downloads} downloads, ${cfg.pushes} pushes;`,
      'median (min–max); MB = 10^6 bytes.',
    ].join(' ');
    if (versus.rows.length) out.push(head, '', renderTable(versus.rows, 'nixreg', versus.peerLabel), '');
    const blobHead = [
      `Blob GET: nixreg ${gitRev()} (node ${process.version}) with sendfile and with NIXREG_SENDFILE=0, vs ${versus.distVersion}; ${machine};`,
      `${cfg.blobBytes / MiB} MiB blob, curl (one process, --parallel for N at once); ${cfg.blobRounds} rounds alternating;`,
      'CPU = server user+system time from /proc per GiB sent; median (min–max); MiB = 2^20 bytes.',
    ].join(' ');
    out.push(blobHead, '', renderBlobTable(versus.blobs), '');
  }
  if (auth) {
    const authHead = `Authenticated manifest GET: nixreg ${gitRev()} (node ${process.version}); ${auth.setup}; ${machine}; ${wrk}, rotating; median (min–max).`;
    out.push(authHead, '', renderTable(auth.rows, 'nixreg --auth', 'nixreg'), '');
  }
  process.stdout.write(out.join('\n'));
  if (opt.json) writeFileSync(opt.json, JSON.stringify({ cfg, versus, auth }, null, 2));
  const failed = [...versus?.rows ?? [], ...versus?.blobs.rows ?? [], ...auth?.rows ?? []].filter((r) => r.pass === false);
  if (failed.length) log(`goals missed: ${failed.map((r) => r.metric).join('; ')}`);
}

function distCache(): 'inmemory' | 'none' {
  const c = opt['dist-cache'];
  if (c !== 'inmemory' && c !== 'none') throw new Error('--dist-cache must be inmemory or none');
  return c;
}

function gitRev(root = ROOT): string {
  try { return execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch { return '(unknown revision)'; }
}

main().catch((err: unknown) => {
  process.stderr.write(`[bench/serve] failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
