// bench/serve --s3: nixreg and CNCF Distribution 2.8 both storing on the same throwaway
// radosgw (test/helpers/rgw.ts), side by side, plus nixreg on its local-disk default as
// the reference for what S3 costs one replica in CPU per request (issue 23, item 8).
//
//   node dist/bench/serve.js --s3 [--database postgres://…] [--seconds 5 --rounds 3 …]
//
// What is compared, and why these settings:
// - Distribution uses its s3 driver on the same radosgw with `regionendpoint` (which makes
//   2.8 address path-style), any region, its own bucket (it does not create one), and
//   `redirect: disable`: by default it answers a blob GET with a 307 to a presigned URL,
//   and nixreg streams unless --s3-redirect; both stream here, so both blob GETs carry the
//   bytes. Its environment has no AWS_CA_BUNDLE (2.8 panics at start with one set).
//   Logging off and the in-memory blob descriptor cache on, as in servers.ts: its fastest
//   (--dist-cache none: without it, as a Distribution with no cache configured runs).
// - nixreg runs `serve --storage s3://BUCKET` with the SDK's own AWS_* variables, and
//   whatever --database URL is passed through (none: the embedded SQLite index).
// - Requests: manifest GET by tag and by digest (wrk), blob HEAD (headload.ts: wrk cannot
//   HEAD), blob GET of a small layer (wrk, 64 KiB) and of a large blob (curl, one at a time).
// Every case alternates the three servers by round; CPU is each server's own utime+stime
// from /proc over the run, per request.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startRgw, type Rgw } from '../../test/helpers/rgw.js';
import { checkManifest, DOCKER_ACCEPT, pushBlob, pushImage, timeDownload } from './client.js';
import { syntheticBlob, syntheticImage } from './content.js';
import { runHeadLoad } from './headload.js';
import { alternate, renderTable, row, stat, type Measured, type Row } from './report.js';
import { freePort, spawnReady, startNixreg, type Server } from './servers.js';
import { call } from './client.js';
import { runWrk, type WrkResult } from './wrk.js';

const MB = 1e6;
const MiB = 1024 * 1024;

export interface S3BenchOptions {
  cli: string;
  distribution: string;
  /** An empty directory for the servers' data and configuration. */
  dir: string;
  /** Distribution's blob descriptor cache: inmemory (its fastest, the default) or none. */
  distCache: 'inmemory' | 'none';
  /** Passed to the S3 nixreg as --database (e.g. postgres://…); none: SQLite under --data. */
  database?: string | undefined;
  seconds: number;
  rounds: number;
  threads: number;
  connections: number;
  blobBytes: number;
  downloads: number;
  /** Directory for a `node --cpu-prof` profile of the S3 nixreg (written when it stops). */
  cpuProfDir?: string | undefined;
  track(s: Server): void;
  /** The radosgw, stopped by the caller's cleanup. */
  trackRgw(r: Rgw): void;
  log(msg: string): void;
}

export interface S3BenchResult {
  setup: string;
  /** nixreg on S3 against Distribution on S3, with the goals. */
  rows: Row[];
  /** nixreg on S3 against nixreg on local disk: CPU per request. */
  cost: Row[];
}

/** Distribution 2.8 on S3, streaming blobs itself (no redirect), logging off. */
async function startDistributionS3(bin: string, dir: string, rgw: Rgw, bucket: string, cache: 'inmemory' | 'none'): Promise<Server> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const config = join(dir, 'config.yml');
  writeFileSync(config, [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  s3:',
    `    regionendpoint: ${rgw.endpoint}`,
    `    region: ${rgw.region}`,
    `    bucket: ${bucket}`,
    `    accesskey: ${rgw.accessKeyId}`,
    `    secretkey: ${rgw.secretAccessKey}`,
    '    secure: false',
    '    v4auth: true',
    '  redirect:',
    '    disable: true',
    '  delete:',
    '    enabled: true',
    ...(cache === 'inmemory' ? ['  cache:', '    blobdescriptor: inmemory'] : []),
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '',
  ].join('\n'));
  const env = { ...process.env };
  delete env.AWS_CA_BUNDLE;
  const p = await spawnReady(bin, ['serve', config], join(dir, 'distribution.log'),
    async () => (await call('GET', `${url}/v2/`)).status === 200, env);
  return { name: 'Distribution on S3', url, logFile: join(dir, 'distribution.log'), ...p };
}

export async function runS3Bench(o: S3BenchOptions): Promise<S3BenchResult> {
  const rgw = await startRgw({ capacityBytes: 8 * 1024 ** 3 });
  o.trackRgw(rgw);
  o.log(`radosgw at ${rgw.endpoint}`);
  await rgw.createBucket('nixreg-bench');
  await rgw.createBucket('distribution-bench');

  for (const d of ['dist', 'nixreg-s3', 'nixreg-disk']) mkdirSync(join(o.dir, d));
  const dist = await startDistributionS3(o.distribution, join(o.dir, 'dist'), rgw, 'distribution-bench', o.distCache);
  o.track(dist);
  const prof = o.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir, '--cpu-prof-name', 'nixreg-s3.cpuprofile'] : [];
  const s3 = await startNixreg(o.cli, join(o.dir, 'nixreg-s3'), {
    name: 'nixreg on S3',
    args: ['--storage', 's3://nixreg-bench', ...(o.database ? ['--database', o.database] : [])],
    nodeArgs: prof,
    env: { ...process.env, ...rgw.env },
  });
  o.track(s3);
  const disk = await startNixreg(o.cli, join(o.dir, 'nixreg-disk'), { name: 'nixreg on disk' });
  o.track(disk);
  const servers = [s3, dist, disk];
  const distVersion = execFileSync(o.distribution, ['--version']).toString().trim();
  o.log(`${s3.name} ${s3.url} (pid ${s3.pid}), ${dist.name} ${dist.url} (pid ${dist.pid}), ${disk.name} ${disk.url} (pid ${disk.pid})`);

  // ------------------------------------------------------------ the same content in all three
  const img = syntheticImage('bench/app', 'v1');
  let digest = '';
  for (const s of servers) digest = await pushImage(s.url, img);
  for (const s of servers) await checkManifest(s.url, img, digest, {}, s.name);
  const big = syntheticBlob(o.blobBytes);
  for (const s of servers) await pushBlob(s.url, 'bench/big', big);
  const small = img.blobs[2]!; // the 64 KiB layer
  o.log(`pushed bench/app:v1 (${digest}) and a ${o.blobBytes / MiB} MiB blob to all three`);

  // ------------------------------------------------------------ request rates
  type Case = { name: string; path: string; method: 'GET' | 'HEAD' };
  const cases: Case[] = [
    { name: 'manifest GET by tag', path: `/v2/${img.repo}/manifests/${img.tag}`, method: 'GET' },
    { name: 'manifest GET by digest', path: `/v2/${img.repo}/manifests/${digest}`, method: 'GET' },
    { name: 'blob HEAD', path: `/v2/${img.repo}/blobs/${small.digest}`, method: 'HEAD' },
    { name: `blob GET ${small.size / 1024} KiB`, path: `/v2/${img.repo}/blobs/${small.digest}`, method: 'GET' },
  ];
  const load = (c: Case, seconds: number) => (s: Server) => (c.method === 'HEAD'
    ? runHeadLoad({ url: `${s.url}${c.path}`, headers: { Accept: DOCKER_ACCEPT }, seconds, connections: o.connections })
    : runWrk({ url: `${s.url}${c.path}`, headers: { Accept: DOCKER_ACCEPT }, seconds, threads: o.threads, connections: o.connections }));
  const results = new Map<string, Map<Server, Measured<WrkResult>[]>>();
  for (const c of cases) {
    for (const s of servers) await load(c, 2)(s);
    const r = await alternate(servers, o.rounds, load(c, o.seconds));
    results.set(c.name, r);
    for (const s of servers) o.log(`${c.name}, ${s.name}: ${r.get(s)!.map((x) => `${x.v.rps.toFixed(0)} req/s`).join(', ')}`);
  }

  // ------------------------------------------------------------ large blob GET
  const bigPath = `/v2/bench/big/blobs/${big.digest}`;
  for (const s of servers) await timeDownload(`${s.url}${bigPath}`);
  const downloads = await alternate(servers, o.downloads, async (s) => {
    const [n, ms] = await timeDownload(`${s.url}${bigPath}`);
    if (n !== big.size) throw new Error(`${s.name} sent ${n} of ${big.size} bytes`);
    return n / MB / (ms / 1000);
  });
  for (const s of servers) o.log(`blob GET ${o.blobBytes / MiB} MiB, ${s.name}: ${downloads.get(s)!.map((x) => x.v.toFixed(0)).join(', ')} MB/s`);

  // ------------------------------------------------------------ rows
  const goals: Record<string, number> = { 'manifest GET by tag': 10, 'manifest GET by digest': 10, 'blob HEAD': 10 };
  goals[cases[3]!.name] = 1;
  const rows: Row[] = [];
  const cost: Row[] = [];
  const cpuUs = (x: Measured<WrkResult>) => (x.cpuMs * 1000) / x.v.requests;
  for (const c of cases) {
    const r = results.get(c.name)!;
    const of = (s: Server, f: (x: Measured<WrkResult>) => number) => stat(r.get(s)!.map(f));
    rows.push(row(`${c.name} (req/s)`, of(s3, (x) => x.v.rps), of(dist, (x) => x.v.rps), 'higher', goals[c.name], 0));
    rows.push(row(`${c.name} p99 (ms)`, of(s3, (x) => x.v.p99ms), of(dist, (x) => x.v.p99ms), 'lower', undefined, 2));
    rows.push(row(`${c.name}: server CPU per request (µs)`, of(s3, cpuUs), of(dist, cpuUs), 'lower', undefined, 0));
    cost.push(row(`${c.name}: CPU per request (µs)`, of(s3, cpuUs), of(disk, cpuUs), 'lower', undefined, 0));
    cost.push(row(`${c.name} (req/s)`, of(s3, (x) => x.v.rps), of(disk, (x) => x.v.rps), 'higher', undefined, 0));
  }
  const mib = o.blobBytes / MiB;
  const v = (s: Server) => stat(downloads.get(s)!.map((x) => x.v));
  const cpuPerGB = (s: Server) => stat(downloads.get(s)!.map((x) => x.cpuMs / (o.blobBytes / 1e9)));
  rows.push(row(`blob GET ${mib} MiB (MB/s)`, v(s3), v(dist), 'higher', 1.0, 0));
  rows.push(row(`blob GET ${mib} MiB: server CPU per GB (ms)`, cpuPerGB(s3), cpuPerGB(dist), 'lower', undefined, 0));
  cost.push(row(`blob GET ${mib} MiB: CPU per GB (ms)`, cpuPerGB(s3), cpuPerGB(disk), 'lower', undefined, 0));
  cost.push(row(`blob GET ${mib} MiB (MB/s)`, v(s3), v(disk), 'higher', undefined, 0));

  const index = o.database ? `index ${o.database.replace(/\/\/[^@/]*@/, '//…@')}` : 'SQLite index';
  const setup = `nixreg --storage s3://nixreg-bench (${index}) vs ${distVersion} (s3 driver, redirect disabled, ${o.distCache === 'inmemory' ? 'inmemory blob descriptor cache' : 'no blob descriptor cache'}), `
    + `both on one radosgw 16 (memstore) on this machine; the CPU table compares the same nixreg with its local-disk default`;
  return { setup, rows, cost };
}

export function renderS3(r: S3BenchResult): string {
  return [renderTable(r.rows, 'nixreg on S3', 'Distribution on S3'), '',
    'What S3 costs one nixreg process (its own utime+stime over each run):', '',
    renderTable(r.cost, 'nixreg on S3', 'nixreg on disk')].join('\n');
}
