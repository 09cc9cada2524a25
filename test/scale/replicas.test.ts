// Replicas (issue 23): two `nixreg serve` processes on one PostgreSQL index and one
// radosgw bucket, behind nginx's round-robin (helpers/replicas.ts), all real. The OCI
// conformance suite through the balancer, real clients pushing through one replica and
// pulling through the other, an upload whose chunks go to both, kill -9 of a replica in
// the middle of an upload and of a collection, and collections on one replica racing
// pushes on the other: no acknowledged manifest may ever lose a blob.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { OCI_MANIFEST, http, pushBlob, pushImage, putManifest, sha256 } from '../api/util.js';
import { startContainerd, type Containerd } from '../helpers/containerd.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run } from '../helpers/exec.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { CLI, ROOT, tempDir } from '../helpers/registry.js';
import { startReplicas, type Replicas } from '../helpers/replicas.js';
import { startRgw, type Rgw } from '../helpers/rgw.js';
import { multiLayerContext, skopeoRoundTrip } from '../e2e/fixtures.js';

const Bucket = 'replicas';
let pg: Postgres;
let rgw: Rgw;
let set: Replicas;
let database: string;
let dockerd: Dockerd;
let containerd: Containerd;
const cleanup: string[] = [];

before(async () => {
  await requireTool('skopeo');
  await requireTool('umoci');
  const [p, r, d, c] = await Promise.all([startPostgres(), startRgw(), startDockerd(), startContainerd()]);
  [pg, rgw, dockerd, containerd] = [p, r, d, c];
  await rgw.createBucket(Bucket);
  database = await pg.createDatabase();
  set = await startReplicas({
    database, storage: `s3://${Bucket}/r`, env: rgw.env,
    args: ['--gc-grace', '0', '--gc-interval', '0', '--s3-timeout', '5'],
  });
});

after(async () => {
  await set?.stop();
  await Promise.allSettled([dockerd?.stop(), containerd?.stop()]);
  await rgw?.stop();
  await pg?.stop();
  for (const d of cleanup) rmSync(d, { recursive: true, force: true });
});

const [A, B] = [() => set.replicas[0]!, () => set.replicas[1]!];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every blob an acknowledged manifest references can be read, through any replica. */
async function assertWhole(base: string, repo: string, digest: string): Promise<void> {
  const m = await http(base, 'GET', `/v2/${repo}/manifests/${digest}`, { headers: { Accept: OCI_MANIFEST } });
  assert.equal(m.status, 200, `${repo}@${digest}: ${m.text()}`);
  const body = m.json() as { config: { digest: string }; layers: { digest: string }[] };
  for (const d of [body.config.digest, ...body.layers.map((l) => l.digest)]) {
    const b = await http(base, 'GET', `/v2/${repo}/blobs/${d}`);
    assert.equal(b.status, 200, `${repo}@${digest} lost ${d}: ${b.text()}`);
    assert.equal(sha256(b.body), d);
  }
}

test('the OCI conformance suite passes through the round-robin', { timeout: 180_000 }, async () => {
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const r = await run(process.execPath, ['--test', '--test-reporter=tap', join(ROOT, 'dist/test/api/conformance.test.js')],
    { env: { ...env, CONFORMANCE_URL: set.url }, check: false });
  assert.equal(r.code, 0, `${r.stdout.split('\n').filter((l) => /not ok|error|expected|actual/.test(l)).slice(0, 40).join('\n')}\n${A().logs().slice(-2000)}\n${B().logs().slice(-2000)}`);
  assert.ok(Number(/^# pass (\d+)$/m.exec(r.stdout)?.[1]) >= 70);
});

test('skopeo pushes through one replica and pulls through the other', { timeout: 120_000 }, async () => {
  const trip = await skopeoRoundTrip(`${A().host}/rep/skopeo:v1`, `${B().host}/rep/skopeo:v1`);
  cleanup.push(...trip.dirs);
  assert.equal(trip.pulled, trip.pushed);
});

test('docker pushes through one replica and pulls through the other; ctr pulls through the balancer', { timeout: 240_000 }, async () => {
  const ctx = multiLayerContext('replicas');
  cleanup.push(ctx.dir);
  const refA = `${A().host}/rep/docker:v1`;
  await run('docker', ['build', '-q', '-t', refA, ctx.dir], { env: { ...dockerd.env, DOCKER_BUILDKIT: '0' }, check: true });
  const push = await dockerd.docker(['push', refA]);
  const digest = /digest: (sha256:[0-9a-f]{64})/.exec(push.stdout)?.[1];
  assert.ok(digest, push.stdout);
  const refB = `${B().host}/rep/docker@${digest}`;
  await dockerd.docker(['pull', refB]);
  const ran = await dockerd.docker(['run', '--rm', '--network', 'none', refB, '/bin/busybox', 'echo', 'pulled']);
  assert.match(ran.stdout, /pulled/);
  await containerd.ctr(['image', 'pull', '--plain-http', `${set.host}/rep/docker:v1`], { check: true });
  const check = await containerd.ctr(['image', 'check']);
  assert.match(check.stdout, /complete/);
});

test('an upload whose chunks go to different replicas, finished through the balancer', { timeout: 60_000 }, async () => {
  const body = randomBytes(12 * 1024 * 1024 + 5);
  const digest = sha256(body);
  const start = await http(A().url, 'POST', '/v2/rep/chunks/blobs/uploads/');
  assert.equal(start.status, 202, start.text());
  let loc = start.headers.get('location')!;
  const cuts = [0, 3 << 20, 7 << 20, 9 << 20, body.length];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const base = [A(), B()][i % 2]!.url;
    const chunk = body.subarray(cuts[i]!, cuts[i + 1]!);
    const r = await http(base, 'PATCH', new URL(loc, base).pathname + new URL(loc, base).search, {
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${cuts[i]}-${cuts[i + 1]! - 1}` }, body: chunk,
    });
    assert.equal(r.status, 202, `chunk ${i} through replica ${i % 2}: ${r.text()}`);
    assert.equal(r.headers.get('range'), `0-${cuts[i + 1]! - 1}`);
    loc = r.headers.get('location')!;
  }
  const u = new URL(loc, set.url);
  u.searchParams.set('digest', digest);
  const fin = await http(set.url, 'PUT', u.pathname + u.search);
  assert.equal(fin.status, 201, fin.text());
  for (const r of [A(), B()]) {
    const got = await http(r.url, 'GET', `/v2/rep/chunks/blobs/${digest}`);
    assert.equal(sha256(got.body), digest);
  }
});

test('kill -9 of a replica in the middle of an upload: the client resumes on the other', { timeout: 60_000 }, async () => {
  const body = randomBytes(8 * 1024 * 1024);
  const digest = sha256(body);
  const start = await http(A().url, 'POST', '/v2/rep/killed/blobs/uploads/');
  const path = () => new URL(start.headers.get('location')!, A().url);
  const first = await http(A().url, 'PATCH', path().pathname + path().search, {
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `0-${(5 << 20) - 1}` }, body: body.subarray(0, 5 << 20),
  });
  assert.equal(first.status, 202, first.text());
  // The second chunk is cut off mid-body by the kill.
  const cut = http(A().url, 'PATCH', path().pathname + path().search, {
    headers: { 'Content-Type': 'application/octet-stream' },
    body: new ReadableStream({ async start(c) { c.enqueue(body.subarray(5 << 20, 6 << 20)); await sleep(500); c.close(); } }),
  }).catch((e: Error) => e);
  await sleep(200);
  await set.restart(0);
  assert.ok((await cut) instanceof Error || [400, 404, 416, 500, 502].includes(((await cut) as { status: number }).status));
  // What the client then does: ask where the upload stands, on whichever replica answers.
  const status = await http(B().url, 'GET', path().pathname + path().search);
  assert.equal(status.status, 204, status.text());
  const have = Number(status.headers.get('range')!.split('-')[1]) + 1;
  assert.ok(have >= 5 << 20, `the acknowledged chunk survives (${have})`);
  const rest = await http(B().url, 'PATCH', path().pathname + path().search, {
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${have}-${body.length - 1}` }, body: body.subarray(have),
  });
  assert.equal(rest.status, 202, rest.text());
  const u = new URL(rest.headers.get('location')!, B().url);
  u.searchParams.set('digest', digest);
  const fin = await http(B().url, 'PUT', u.pathname + u.search);
  assert.equal(fin.status, 201, fin.text());
  assert.equal(sha256((await http(A().url, 'GET', `/v2/rep/killed/blobs/${digest}`)).body), digest);
});

test('collections on one replica race pushes on the other: every acknowledged manifest stays whole', { timeout: 180_000 }, async () => {
  const acked: { repo: string; digest: string }[] = [];
  let refused = 0;
  let pushing = true;
  const pusher = (async () => {
    for (let i = 0; pushing; i++) {
      const repo = `race/r${i % 4}`;
      // Tags move, so older manifests and their layers become garbage while pushes go on.
      // At --gc-grace 0 a collection may take a layer between its upload and the manifest
      // that names it: the manifest is then refused (MANIFEST_BLOB_UNKNOWN), never
      // acknowledged and broken, and a client pushes again.
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, salt: i }));
      const layer = randomBytes(1024);
      await pushBlob(B().url, repo, config);
      await pushBlob(B().url, repo, layer);
      const body = JSON.stringify({
        schemaVersion: 2, mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length }],
      });
      const r = await putManifest(B().url, repo, 'latest', body);
      if (r.status === 201) acked.push({ repo, digest: sha256(body) });
      else { assert.equal(r.json().errors[0].code, 'MANIFEST_BLOB_UNKNOWN', r.text()); refused++; }
    }
  })();
  let runs = 0;
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const r = await http(A().url, 'POST', '/nixreg/gc');
    assert.ok(r.status === 200 || r.status === 409, `${r.status} ${r.text()}`);
    if (r.status === 200) runs++;
  }
  pushing = false;
  await pusher;
  assert.ok(runs >= 3 && acked.length >= 20, `${runs} collections, ${acked.length} pushes acknowledged, ${refused} refused`);
  assert.ok(refused < acked.length, `${refused} refused of ${acked.length + refused}`);
  // Each repository's last push is tagged, so whole; earlier ones may be collected, but a
  // collected manifest must be gone, never present with a blob missing.
  const last = new Map(acked.map((a) => [a.repo, a.digest]));
  for (const [repo, digest] of last) await assertWhole(set.url, repo, digest);
  for (const { repo, digest } of acked) {
    const m = await http(set.url, 'HEAD', `/v2/${repo}/manifests/${digest}`, { headers: { Accept: OCI_MANIFEST } });
    if (m.status === 200) await assertWhole(set.url, repo, digest);
    else assert.equal(m.status, 404);
  }
});

test('kill -9 of a replica during a collection: the other collects next, nothing half-removed', { timeout: 120_000 }, async () => {
  const keep = await pushImage(set.url, 'gckill/keep', 'v1');
  for (let i = 0; i < 60; i++) await pushBlob(set.url, 'gckill/junk', randomBytes(64 * 1024));
  const gc = http(A().url, 'POST', '/nixreg/gc').catch((e: Error) => e);
  await sleep(50);
  await set.restart(0);
  await gc;
  // The dead collector's lock went with its session: the other replica may collect now.
  let r = await http(B().url, 'POST', '/nixreg/gc');
  for (let t = Date.now(); r.status === 409 && Date.now() - t < 20_000; await sleep(500)) r = await http(B().url, 'POST', '/nixreg/gc');
  assert.equal(r.status, 200, r.text());
  await assertWhole(set.url, 'gckill/keep', keep.digest);
  const digest = createHash('sha256').update(keep.layer).digest('hex');
  assert.equal((await http(A().url, 'HEAD', `/v2/gckill/keep/blobs/sha256:${digest}`)).status, 200);
});

test('nixreg gc --database beside running replicas: a dry run lists, a collection removes, the replicas go on', { timeout: 60_000 }, async () => {
  const kept = await pushImage(set.url, 'gccli/keep', 'v1');
  const loose = await pushBlob(set.url, 'gccli/loose', randomBytes(4096));
  const data = tempDir('nixreg-gc-cli-');
  cleanup.push(data);
  const gc = (...extra: string[]) => run(process.execPath, [CLI, 'gc', '--data', data, '--database', database, '--storage', `s3://${Bucket}/r`, '--gc-grace', '0', ...extra],
    { env: { ...process.env, ...rgw.env } });
  const dry = await gc('--dry-run');
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, new RegExp(`^blob ${loose} `, 'm'));
  assert.equal((await http(set.url, 'HEAD', `/v2/gccli/loose/blobs/${loose}`)).status, 200, 'a dry run removes nothing');
  const real = await gc();
  assert.equal(real.code, 0, real.stderr);
  assert.match(real.stdout, /^removed \d+ manifests, \d+ links, [1-9]\d* blobs/m);
  assert.equal((await http(set.url, 'HEAD', `/v2/gccli/loose/blobs/${loose}`)).status, 404);
  await assertWhole(set.url, 'gccli/keep', kept.digest);
});
