// HTTP fuzzing of the real `nixreg serve` process: ≥ 20,000 generated requests against
// every endpoint of src/registry/routes.ts and around them (malformed paths, methods,
// headers, framing; invented names; stateful upload and push sequences), 16 in flight.
// No answer may be a 5xx, every answerable request must be answered, and the server may
// log no internal error; afterwards the process is alive, under its memory bound, and
// serves a normal push and pull.
//
// NIXREG_FUZZ_SEED (default "ci-1") and NIXREG_FUZZ_REQUESTS (default 20000) change the
// run; NIXREG_FUZZ_CASES=12,345 replays only those cases, one after another.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, test } from 'node:test';
import { performance } from 'node:perf_hooks';
import { BLOBS, CONFIG, OCI_MANIFEST, imageManifest, sha256 } from './content.js';
import type { Req } from './client.js';
import { describe, report, runFuzz, type FuzzResult } from './runner.js';
import { rssKiB, sampleRss, startFuzzServer, type FuzzServer } from './server.js';

const SEED = process.env.NIXREG_FUZZ_SEED ?? 'ci-1';
const REQUESTS = Number(process.env.NIXREG_FUZZ_REQUESTS ?? 20_000);
const ONLY = process.env.NIXREG_FUZZ_CASES?.split(',').map(Number);
/**
 * The idle server is ~70–100 MiB (BENCHMARKS.md). What a request can add is bounded by
 * design: manifest bodies of at most 4 MiB, 16 in flight, each held twice while read
 * (chunks, then the concatenation): 128 MiB; the manifest body cache, 64 MiB; upload
 * and blob bodies stream through 1 MiB buffers. ~300 MiB in the worst case, so 400 MiB
 * leaves room for garbage not yet collected while still catching anything unbounded.
 */
const RSS_LIMIT_MIB = 400;

let srv: FuzzServer;
let result: FuzzResult;
let peakKiB = 0;
let idleKiB = 0;
let jumps: string[] = [];
const size = (r: Req) => (r.raw ?? r.body)?.length ?? 0;

before(async () => {
  srv = await startFuzzServer();
  idleKiB = rssKiB(srv.pid);
  // The biggest requests in flight are the likely cause of a jump in memory.
  const inFlight = new Set<Req>();
  const suspects = () => [...inFlight].sort((a, b) => size(b) - size(a)).slice(0, 3).map(describe);
  const rss = sampleRss(srv.pid, 100, suspects);
  try {
    result = await runFuzz({ url: srv.url, seed: SEED, requests: REQUESTS, concurrency: 16, only: ONLY, inFlight });
  } finally {
    ({ peakKiB, jumps } = rss.stop());
  }
});
after(async () => { await srv?.stop(); });

test(`${ONLY ? `cases ${ONLY.join(",")}` : `${REQUESTS} fuzzed requests`} (seed ${SEED}): no 5xx, every answerable request answered`, (t) => {
  t.diagnostic(`${result.requests} requests in ${result.cases} cases, ${(result.ms / 1000).toFixed(1)} s `
    + `(${Math.round(result.requests / (result.ms / 1000))} req/s); statuses ${JSON.stringify(result.statuses)}`);
  t.diagnostic(`cases by kind ${JSON.stringify(result.byLabel)}`);
  if (!ONLY) assert.ok(result.requests >= REQUESTS, `only ${result.requests} requests were sent`);
  // Rare kinds (the expression-backed pulls) need a run of CI's length to come up.
  if (!ONLY && REQUESTS >= 20_000) {
    for (const label of ['base', 'catalog', 'upload-start', 'upload-session', 'blob', 'manifest-read', 'manifest-put', 'manifest-delete',
      'tags', 'referrers', 'nixreg', 'malformed-path', 'wire', 'seq-push-pull', 'seq-cancel-during-finish', 'seq-builds']) {
      assert.ok((result.byLabel[label] ?? 0) > 0, `no case of kind ${label} ran`);
    }
  }
  assert.equal(result.failures.length, 0, `${report(SEED, result)}\n\nthe server's internal errors:\n${srv.problems().join('\n')}`);
});

test('the server logged no internal error (a 5xx also counts when the client had gone and never saw it)', () => {
  assert.deepEqual(srv.problems(), []);
});

test('the server process is still running, its RSS within bounds', (t) => {
  t.diagnostic(`VmRSS idle ${(idleKiB / 1024).toFixed(0)} MiB, peak during the fuzz ${(peakKiB / 1024).toFixed(0)} MiB`);
  assert.ok(srv.alive(), `the server exited (${srv.proc.child.exitCode ?? srv.proc.child.signalCode}):\n${srv.proc.output().slice(-4000)}`);
  assert.ok(peakKiB / 1024 < RSS_LIMIT_MIB, `peak RSS ${(peakKiB / 1024).toFixed(0)} MiB ≥ ${RSS_LIMIT_MIB} MiB; the largest jumps:\n${jumps.join('\n')}`);
});

/**
 * One request on a fresh connection, from another loopback address than the fuzz's:
 * another client, whom what the fuzz holds (its upload sessions, up to its per-client
 * limit) must not lock out.
 */
function call(method: string, path: string, headers: Record<string, string> = {}, body?: Buffer): Promise<{ status: number; body: Buffer; ms: number }> {
  const u = new URL(srv.url);
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method, path, headers, agent: false, timeout: 5000, localAddress: '127.0.0.2' }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks), ms: performance.now() - t0 }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in 5 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

test('afterwards: GET /v2/ answers within 1 s, and a push and a pull of a new image succeed', async () => {
  const base = await call('GET', '/v2/');
  assert.equal(base.status, 200);
  assert.ok(base.ms < 1000, `GET /v2/ took ${base.ms.toFixed(0)} ms`);
  const repo = 'after-fuzz/image';
  const layer = Buffer.from(`a layer pushed after seed ${SEED}`);
  for (const b of [CONFIG.data, layer]) {
    const r = await call('POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, { 'Content-Type': 'application/octet-stream' }, b);
    assert.equal(r.status, 201, r.body.toString());
  }
  const manifest = imageManifest({ layers: [{ data: layer, digest: sha256(layer) }] });
  const put = await call('PUT', `/v2/${repo}/manifests/v1`, { 'Content-Type': OCI_MANIFEST }, manifest);
  assert.equal(put.status, 201, put.body.toString());
  const got = await call('GET', `/v2/${repo}/manifests/v1`, { Accept: OCI_MANIFEST });
  assert.equal(got.status, 200, got.body.toString());
  assert.deepEqual(got.body, manifest);
  const blob = await call('GET', `/v2/${repo}/blobs/${sha256(layer)}`);
  assert.equal(blob.status, 200);
  assert.deepEqual(blob.body, layer);
  // A blob the fuzz pushed to other repositories is mountable here, as any other.
  const mount = await call('POST', `/v2/${repo}/blobs/uploads/?mount=${BLOBS[2]!.digest}&from=nowhere`);
  assert.equal(mount.status, 202);
});
