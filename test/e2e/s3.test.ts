// `nixreg serve --storage s3://…` end to end, on a real radosgw (helpers/rgw.ts) and the
// SQLite index: the OCI conformance suite and skopeo push and pull through it, blobs and
// uploads in the bucket and none on local disk, Range served from S3, HEAD and cached
// manifests answered with S3 stopped, garbage collection removing objects, S3 stopped
// answered by a 503 with Retry-After within --s3-timeout's bound and recovered from by
// itself, --s3-redirect handing out presigned URLs, a 256 MiB blob streamed both ways in
// bounded memory, an upload whose chunks go to two processes sharing index and bucket,
// and an image built on pull whose layers go to the bucket (nothing durable left locally).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { OCI_MANIFEST, http, pushBlob, pushImage, sha256 } from '../api/util.js';
import { requireTool, run } from '../helpers/exec.js';
import { CLI, ROOT, spawnRegistry, type RegistryProcess } from '../helpers/registry.js';
import { startRgw, type Rgw } from '../helpers/rgw.js';
import { Images, nonce } from '../build/helpers.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { skopeoRoundTrip } from './fixtures.js';
import { MiB, Pattern, digestOfGet, send } from './stream.js';

const Bucket = 'nixreg';
let rgw: Rgw;
let s3: S3Client;
let reg: RegistryProcess;
const cleanup: string[] = [];

before(async () => {
  await requireTool('skopeo');
  await requireTool('umoci');
  rgw = await startRgw();
  await rgw.createBucket(Bucket);
  s3 = rgw.client();
  reg = await spawnRegistry({
    env: rgw.env,
    args: ['--storage', `s3://${Bucket}/e2e`, '--s3-timeout', '2', '--gc-grace', '0', '--gc-interval', '0'],
  });
  cleanup.push(reg.data);
});

after(async () => {
  await reg?.stop();
  s3?.destroy();
  await rgw?.stop();
  for (const d of cleanup) rmSync(d, { recursive: true, force: true });
});

async function keys(prefix: string): Promise<string[]> {
  const out: string[] = [];
  for (let token: string | undefined, more = true; more;) {
    const r = await s3.send(new ListObjectsV2Command({ Bucket, Prefix: prefix, ContinuationToken: token }));
    out.push(...(r.Contents ?? []).map((o) => o.Key!));
    token = r.NextContinuationToken;
    more = !!r.IsTruncated;
  }
  return out;
}
const blobKey = (digest: string, prefix = 'e2e/') => `${prefix}blobs/sha256/${digest.slice('sha256:'.length)}`;

test('the OCI conformance suite passes against nixreg on S3, with nothing of blobs or uploads on local disk', { timeout: 120_000 }, async () => {
  // Its own run, reporting in TAP: not as a child of this test runner.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const r = await run(process.execPath, ['--test', '--test-reporter=tap', join(ROOT, 'dist/test/api/conformance.test.js')],
    { env: { ...env, CONFORMANCE_URL: reg.url }, check: false });
  assert.equal(r.code, 0, `${r.stdout.split('\n').filter((l) => /not ok|error|expected|actual/.test(l)).slice(0, 40).join('\n')}\n${reg.logs().slice(-3000)}`);
  const passed = Number(/^# pass (\d+)$/m.exec(r.stdout)?.[1]);
  assert.ok(passed >= 70, `${passed} conformance specs passed`);
  assert.equal(existsSync(join(reg.data, 'blobs')), false);
  assert.equal(existsSync(join(reg.data, 'uploads')), false);
});

test('skopeo pushes an image and pulls it back intact', { timeout: 120_000 }, async () => {
  const trip = await skopeoRoundTrip(`${reg.host}/s3/busybox:v1`, `${reg.host}/s3/busybox:v1`);
  cleanup.push(...trip.dirs);
  assert.equal(trip.pulled, trip.pushed, 'the manifest digest survives the round trip');
  for (const l of trip.layers) {
    assert.equal(`sha256:${createHash('sha256').update(l.bytes).digest('hex')}`, l.digest);
    assert.ok((await keys(blobKey(l.digest))).length === 1, 'the layer is an object in the bucket');
  }
});

test('Range from S3; HEAD and a cached manifest answer with S3 stopped; a GET then gets 503 with Retry-After in bounded time, and service resumes', { timeout: 60_000 }, async () => {
  const body = randomBytes(9 * 1024 * 1024 + 17);
  const digest = await pushBlob(reg.url, 's3/range', body);
  const ranged = await http(reg.url, 'GET', `/v2/s3/range/blobs/${digest}`, { headers: { Range: 'bytes=8388600-8388620' } });
  assert.equal(ranged.status, 206);
  assert.deepEqual(ranged.body, body.subarray(8388600, 8388621));
  const whole = await http(reg.url, 'GET', `/v2/s3/range/blobs/${digest}`);
  assert.equal(sha256(whole.body), digest);
  const img = await pushImage(reg.url, 's3/range', 'v1');
  assert.equal((await http(reg.url, 'GET', '/v2/s3/range/manifests/v1', { headers: { Accept: OCI_MANIFEST } })).status, 200);

  rgw.pause();
  try {
    let t = Date.now();
    const head = await http(reg.url, 'HEAD', `/v2/s3/range/blobs/${digest}`);
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(body.length));
    const manifest = await http(reg.url, 'GET', '/v2/s3/range/manifests/v1', { headers: { Accept: OCI_MANIFEST } });
    assert.equal(manifest.status, 200);
    assert.equal(sha256(manifest.body), img.digest);
    assert.ok(Date.now() - t < 1000, `HEAD and a cached manifest cost no S3 call (${Date.now() - t} ms)`);

    t = Date.now();
    const get = await http(reg.url, 'GET', `/v2/s3/range/blobs/${digest}`);
    const took = Date.now() - t;
    assert.equal(get.status, 503, get.text());
    assert.equal((get.json() as { errors: { code: string }[] }).errors[0]!.code, 'UNAVAILABLE');
    assert.ok(Number(get.headers.get('retry-after')) > 0);
    assert.ok(took >= 1500 && took < 10_000, `503 after ${took} ms (--s3-timeout 2, two attempts)`);
    const push = await http(reg.url, 'POST', `/v2/s3/range/blobs/uploads/?digest=${sha256('x')}`,
      { headers: { 'Content-Type': 'application/octet-stream' }, body: Buffer.from('x') });
    assert.equal(push.status, 503, push.text());
    const ready = await http(reg.url, 'GET', '/readyz');
    assert.equal(ready.status, 503);
    assert.equal((ready.json() as { checks: { blobs: { ok: boolean } } }).checks.blobs.ok, false);
  } finally {
    rgw.resume();
  }
  assert.equal(sha256((await http(reg.url, 'GET', `/v2/s3/range/blobs/${digest}`)).body), digest);
  await pushBlob(reg.url, 's3/range', 'x');
  assert.equal((await http(reg.url, 'GET', '/readyz')).status, 200);
});

test('garbage collection removes what nothing references from the bucket', { timeout: 60_000 }, async () => {
  const kept = await pushImage(reg.url, 's3/gc', 'kept');
  const loose = await pushBlob(reg.url, 's3/gc', randomBytes(6 * 1024 * 1024));
  assert.equal((await keys(blobKey(loose))).length, 1);
  // `nixreg gc --dry-run` beside the server reads the same index and bucket.
  const dry = await run(process.execPath, [CLI, 'gc', '--data', reg.data, '--storage', `s3://${Bucket}/e2e`, '--dry-run', '--gc-grace', '0'],
    { env: { ...process.env, ...rgw.env } });
  assert.match(dry.stdout, new RegExp(`^blob ${loose} `, 'm'));
  assert.equal((await keys(blobKey(loose))).length, 1, 'a dry run removes nothing');
  const r = await http(reg.url, 'POST', '/nixreg/gc');
  assert.equal(r.status, 200, r.text());
  assert.ok((r.json() as { blobs: number }).blobs >= 1);
  assert.deepEqual(await keys(blobKey(loose)), []);
  assert.equal((await keys(blobKey(sha256(kept.layer)))).length, 1, 'a referenced layer stays');
  assert.equal((await http(reg.url, 'GET', `/v2/s3/gc/blobs/${sha256(kept.layer)}`)).status, 200);
});

test('--s3-redirect: a blob GET is a redirect to a presigned URL that serves it', { timeout: 60_000 }, async () => {
  const red = await spawnRegistry({ env: rgw.env, args: ['--storage', `s3://${Bucket}/redirect`, '--s3-redirect'] });
  cleanup.push(red.data);
  try {
    const body = randomBytes(1000);
    const digest = await pushBlob(red.url, 's3/red', body);
    const r = await fetch(`${red.url}/v2/s3/red/blobs/${digest}`, { redirect: 'manual' });
    assert.equal(r.status, 307);
    const location = r.headers.get('location')!;
    assert.match(location, new RegExp(`^${rgw.endpoint}/${Bucket}/redirect/blobs/sha256/`));
    assert.match(location, /X-Amz-Signature=/);
    const followed = await fetch(`${red.url}/v2/s3/red/blobs/${digest}`, { headers: { Range: 'bytes=10-19' } });
    assert.equal(followed.status, 206);
    assert.deepEqual(Buffer.from(await followed.arrayBuffer()), body.subarray(10, 20));
    assert.equal((await http(red.url, 'HEAD', `/v2/s3/red/blobs/${digest}`)).status, 200, 'HEAD is answered here');
  } finally {
    await red.stop();
  }
});

function hwmMB(pid: number): number {
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;
}

test('a 256 MiB blob streams to S3 (one chunked PATCH) and back with the registry under 200 MB peak RSS', { timeout: 120_000 }, async (t) => {
  const p = new Pattern(256 * MiB);
  const start = await send(`${reg.url}/v2/s3/big/blobs/uploads/`, 'POST');
  assert.equal(start.status, 202);
  const stream = p.stream();
  const hasher = createHash('sha256');
  stream.on('data', (c: Buffer) => hasher.update(c));
  const patch = await send(`${reg.url}${start.headers.location!}`, 'PATCH', stream, { 'Content-Type': 'application/octet-stream' });
  assert.equal(patch.status, 202, patch.body);
  assert.equal(patch.headers.range, `0-${p.size - 1}`);
  const digest = `sha256:${hasher.digest('hex')}`;
  const put = await send(`${reg.url}${patch.headers.location!}?digest=${digest}`, 'PUT');
  assert.equal(put.status, 201, put.body);
  const pull = await digestOfGet(`${reg.url}/v2/s3/big/blobs/${digest}`);
  assert.equal(pull.digest, digest);
  assert.equal(pull.bytes, p.size);
  const hwm = hwmMB(reg.child.pid!);
  t.diagnostic(`VmHWM ${hwm.toFixed(0)} MB`);
  assert.ok(hwm < 200, `registry peak RSS ${hwm.toFixed(0)} MB`);
  assert.deepEqual((await keys('e2e/uploads/')).filter((k) => k.includes(start.headers['docker-upload-uuid'] as string)), [], 'its staging is gone');
});

test('an upload started on one process, continued on another sharing index and bucket, finished on the first', { timeout: 60_000 }, async () => {
  const other = await spawnRegistry({ data: reg.data, env: rgw.env, args: ['--storage', `s3://${Bucket}/e2e`, '--gc-interval', '0'] });
  try {
    const body = randomBytes(13 * MiB + 5);
    const chunks = [body.subarray(0, 3 * MiB), body.subarray(3 * MiB, 12 * MiB), body.subarray(12 * MiB)];
    const start = await http(reg.url, 'POST', '/v2/s3/shared/blobs/uploads/');
    assert.equal(start.status, 202);
    let location = start.headers.get('location')!;
    let offset = 0;
    for (const [i, c] of chunks.entries()) {
      const via = i % 2 ? other.url : reg.url;
      const r = await http(via, 'PATCH', location, { headers: { 'Content-Type': 'application/octet-stream',
        'Content-Range': `${offset}-${offset + c.length - 1}`, 'Content-Length': String(c.length) }, body: c });
      assert.equal(r.status, 202, r.text());
      offset += c.length;
      assert.equal(r.headers.get('range'), `0-${offset - 1}`);
      location = r.headers.get('location')!;
    }
    const status = await http(other.url, 'GET', location);
    assert.equal(status.headers.get('range'), `0-${body.length - 1}`);
    const done = await http(reg.url, 'PUT', `${location}?digest=${sha256(body)}`);
    assert.equal(done.status, 201, done.text());
    const back = await http(other.url, 'GET', `/v2/s3/shared/blobs/${sha256(body)}`);
    assert.equal(sha256(back.body), sha256(body));
  } finally {
    await other.stop();
  }
});

test('build on pull: the built layers are objects in the bucket, served back intact; nothing of them stays on local disk', { timeout: 180_000 }, async () => {
  await requireTool('nix-store');
  const images = new Images();
  const built = await spawnRegistry({ images: images.dir, env: { ...NIX_TEST_ENV, ...rgw.env }, args: ['--storage', `s3://${Bucket}/built`] });
  cleanup.push(built.data, images.dir);
  try {
    images.image('hello.nix', { nonce: nonce() });
    const m = await http(built.url, 'GET', '/v2/hello/manifests/latest', { headers: { Accept: OCI_MANIFEST } });
    assert.equal(m.status, 200, m.text());
    const manifest = m.json() as { config: { digest: string }; layers: { digest: string }[] };
    for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
      assert.equal((await keys(blobKey(d, 'built/'))).length, 1, `${d} is in the bucket`);
      assert.equal(sha256((await http(built.url, 'GET', `/v2/hello/blobs/${d}`)).body), d);
    }
    assert.equal(existsSync(join(built.data, 'blobs')), false);
    assert.deepEqual(readdirSync(join(built.data, 'tmp')), [], 'the builder left no temporary file');
  } finally {
    await built.stop();
  }
});

test('a bucket that does not exist, or keys S3 refuses, stop the start with a clear message', { timeout: 60_000 }, async () => {
  await assert.rejects(spawnRegistry({ env: rgw.env, args: ['--storage', 's3://no-such-bucket'] }),
    /the blob store s3:\/\/no-such-bucket\/ cannot be used: the bucket does not exist/);
  await assert.rejects(spawnRegistry({ env: { ...rgw.env, AWS_SECRET_ACCESS_KEY: 'wrong' }, args: ['--storage', `s3://${Bucket}`] }),
    /the blob store s3:\/\/nixreg\/ cannot be used: access denied/);
});
