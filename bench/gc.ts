// bench/gc: online garbage collection of a store of 100,000 blobs, and what it costs the
// requests served meanwhile.
//
// The store is seeded straight into the layout and the index (the seeding is not what is
// measured, and 100,000 pushes with their fsyncs would take far longer than the bench):
// `--repos` repositories of tagged images, each manifest with `--layers` layers, live;
// and `--garbage` blobs linked into those repositories but referenced by nothing, older
// than the grace period. Then `nixreg serve` of this build opens it, and each round:
//  1. idle: wrk runs manifest GET by tag for as long as the last collection took, at
//     most 30 s (the first round: 2 s);
//  2. collecting: wrk runs the same while `POST /nixreg/gc` removes the garbage;
//  3. idle again, as long as in 1;
//  4. the garbage is seeded again and collected with no traffic at all.
// The rate while collecting is compared with the idle rate of the same round, before and
// after together, so that the machine's drift within and between rounds cancels out; the ratio reported is the median of
// the rounds'. A collection yields to traffic (src/blobs/gc.ts, pace()), so the two
// collection times differ by design.
//
// npm run bench:gc [-- --rounds 3 --repos 100 --manifests 50 --layers 16 --garbage 10000]
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { SqliteIndex as Index } from '../src/blobs/index/sqlite.js';
import { Layout } from '../src/blobs/layout.js';
import { DOCKER_ACCEPT, call } from './serve/client.js';
import { stat } from './serve/report.js';
import { freePort, spawnReady } from './serve/servers.js';
import { parseWrk, type WrkResult } from './serve/wrk.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const CLI = join(ROOT, 'dist/src/main.cjs');
const OCI = 'application/vnd.oci.image.manifest.v1+json';

const o = new Command('bench-gc')
  .option('--rounds <n>', 'rounds of idle + collecting', '3')
  .option('--repos <n>', 'repositories', '100')
  .option('--manifests <n>', 'tagged manifests per repository', '50')
  .option('--layers <n>', 'layers per manifest', '16')
  .option('--garbage <n>', 'garbage blobs seeded before each collection', '10000')
  .option('--connections <n>', 'wrk connections', '16')
  .parse().opts<{ rounds: string; repos: string; manifests: string; layers: string; garbage: string; connections: string }>();
const rounds = Number(o.rounds);
const repos = Number(o.repos);
const perRepo = Number(o.manifests);
const layers = Number(o.layers);

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * Writes blob files and their rows, as storage would have (without the fsyncs): the live
 * images, or `garbage` blobs linked round-robin into the same repositories.
 */
function seed(layout: Layout, index: Index, live: boolean): number {
  const old = Date.now() - 7 * 86400_000;
  const db = index.db;
  const ensureRepo = (name: string): number => {
    db.prepare('INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?, ?)').run(name, Date.now());
    return (db.prepare('SELECT id FROM repositories WHERE name = ?').get(name) as { id: number }).id;
  };
  const insBlob = db.prepare('INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?, ?, ?)');
  const insLink = db.prepare('INSERT OR IGNORE INTO repo_blobs (repo_id, digest, linked_at) VALUES (?, ?, ?)');
  const insManifest = db.prepare(`INSERT INTO manifests (repo_id, digest, media_type, size, created_at, by_digest) VALUES (?, ?, '${OCI}', ?, ?, 0)`);
  const insTag = db.prepare('INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?, ?, ?, ?)');
  const file = (b: Buffer) => {
    const d = sha(b);
    const p = layout.blobPath(d);
    mkdirSync(join(p, '..'), { recursive: true });
    writeFileSync(p, b);
    insBlob.run(d, b.length, old);
    return d;
  };
  let blobs = 0;
  db.transaction(() => {
    if (!live) {
      for (let i = 0; i < Number(o.garbage); i++) { insLink.run(ensureRepo(`bench/repo${i % repos}`), file(randomBytes(256)), old); blobs++; }
      return;
    }
    for (let r = 0; r < repos; r++) {
      const id = ensureRepo(`bench/repo${r}`);
      for (let m = 0; m < perRepo; m++) {
        const ls = Array.from({ length: layers }, () => randomBytes(256));
        for (const l of ls) { insLink.run(id, file(l), old); blobs++; }
        const config = randomBytes(128);
        const cd = file(config);
        insLink.run(id, cd, old);
        const body = Buffer.from(JSON.stringify({
          schemaVersion: 2, mediaType: OCI,
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cd, size: config.length },
          layers: ls.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(l), size: l.length })),
        }));
        const md = file(body);
        insManifest.run(id, md, body.length, old);
        insTag.run(id, `t${m}`, md, old);
        blobs += 2;
      }
    }
  })();
  return blobs;
}

/** The longest idle window: enough for a steady rate, short enough to stay near the collection. */
const IDLE_MAX_MS = 30_000;

/** wrk until `until` settles; the rate over exactly that window. */
async function wrkDuring(url: string, until: () => Promise<unknown>): Promise<WrkResult & { ms: number }> {
  const child = spawn('wrk', ['-t1', `-c${o.connections}`, '-d600s', '--timeout', '5s', '--latency', '-H', `Accept: ${DOCKER_ACCEPT}`, url], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  await new Promise((r) => setTimeout(r, 300));
  const t0 = performance.now();
  await until();
  const ms = performance.now() - t0;
  // wrk prints its summary on SIGINT.
  child.kill('SIGINT');
  await closed;
  return { ...parseWrk(out), ms };
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'nixreg-bench-gc-'));
  try {
    const layout = new Layout(join(dir, 'data'));
    mkdirSync(layout.root, { recursive: true });
    let index = new Index(layout.dbPath);
    const t0 = performance.now();
    const live = seed(layout, index, true);
    const garbage = seed(layout, index, false);
    void index.close();
    process.stderr.write(`seeded ${live} live and ${garbage} garbage blobs in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const srv = await spawnReady(process.execPath, [CLI, 'serve', '--listen', `127.0.0.1:${port}`, '--data', layout.root, '--gc-grace', '3600', '--gc-interval', '0'],
      join(dir, 'nixreg.log'), async () => (await call('GET', `${url}/v2/`)).status === 200);
    try {
      const target = `${url}/v2/bench/repo7/manifests/t3`;
      const ratios: number[] = [];
      const gcMs: number[] = [];
      const quietMs: number[] = [];
      const freed: number[] = [];
      const holds: number[] = [];
      let window = 2000;
      for (let r = 0; r < rounds; r++) {
        if (r > 0) {
          index = new Index(layout.dbPath);
          seed(layout, index, false);
          void index.close();
        }
        const idleFor = () => wrkDuring(target, () => new Promise((res) => setTimeout(res, Math.min(window, IDLE_MAX_MS))));
        const before = await idleFor();
        let report: { blobs: number; bytes: number; ms: number; holdMs: number; phases: unknown } | undefined;
        const busy = await wrkDuring(target, async () => {
          const g = await call('POST', `${url}/nixreg/gc`);
          if (g.status !== 200) throw new Error(`gc: ${g.status} ${g.body.toString()}`);
          report = JSON.parse(g.body.toString());
        });
        window = busy.ms;
        const after = await idleFor();
        const idle = { requests: before.requests + after.requests, ms: before.ms + after.ms, p99ms: Math.max(before.p99ms, after.p99ms) };
        index = new Index(layout.dbPath);
        seed(layout, index, false);
        void index.close();
        const t = performance.now();
        const q = await call('POST', `${url}/nixreg/gc`);
        if (q.status !== 200) throw new Error(`gc: ${q.status}`);
        quietMs.push(performance.now() - t);
        const idleRate = idle.requests / (idle.ms / 1000);
        const busyRate = busy.requests / (busy.ms / 1000);
        ratios.push(busyRate / idleRate);
        gcMs.push(report!.ms);
        freed.push(report!.blobs);
        holds.push(report!.holdMs);
        process.stderr.write(`round ${r + 1}: gc ${report!.ms} ms ${JSON.stringify(report!.phases)}, longest transaction ${report!.holdMs.toFixed(1)} ms, ${report!.blobs} blobs (no traffic: ${quietMs[quietMs.length - 1]!.toFixed(0)} ms); GET ${idleRate.toFixed(0)}/s idle (${(before.requests / (before.ms / 1000)).toFixed(0)} before, ${(after.requests / (after.ms / 1000)).toFixed(0)} after), ${busyRate.toFixed(0)}/s collecting (p99 ${idle.p99ms.toFixed(1)} / ${busy.p99ms.toFixed(1)} ms)\n`);
      }
      const f = (s: ReturnType<typeof stat>, d = 2) => `${s.median.toFixed(d)} (${s.min.toFixed(d)}–${s.max.toFixed(d)})`;
      console.log(`GC of a store of ${live + garbage} blobs (${repos} repositories × ${perRepo} tagged manifests × ${layers} layers, with configs and manifests: ${live} live; ${garbage} garbage blobs before each collection); nixreg ${rev()} (node ${process.version}); ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; load average at end ${loadavg().map((l) => l.toFixed(2)).join(' ')}; wrk -t1 -c${o.connections} manifest GET by tag; ${rounds} rounds; median (min–max).\n`);
      console.log('| metric | value |');
      console.log('|---|---:|');
      console.log(`| collection time under load (ms) | ${f(stat(gcMs), 0)} |`);
      console.log(`| collection time, no traffic (ms) | ${f(stat(quietMs), 0)} |`);
      console.log(`| blobs removed per collection | ${f(stat(freed), 0)} |`);
      console.log(`| longest write transaction of a collection under load (ms) | ${f(stat(holds), 1)} |`);
      console.log(`| manifest GET rate while collecting ÷ idle | ${f(stat(ratios))}× |`);
    } finally {
      await srv.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function rev(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT }).toString().trim();
  } catch { return 'unknown'; }
}

await main();
