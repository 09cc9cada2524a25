// The real servers that replicas will run on, started by the test helpers, and the facts
// about them that the replica design relies on (issue 23): what PostgreSQL 15 does with
// advisory locks and LISTEN/NOTIFY, what Ceph's radosgw 16 does with S3 requests, and how
// each behaves when it stops answering. A fact that stops holding fails here first.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectCommand,
  DeleteObjectsCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, ListPartsCommand, PutObjectCommand,
  S3Client, UploadPartCommand, UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import pg from 'pg';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { ROOT } from '../helpers/registry.js';
import { startRgw, type Rgw } from '../helpers/rgw.js';

const MiB = 1024 * 1024;
const md5 = (b: Buffer) => createHash('md5').update(b).digest();
const rssMiB = (pids: number[]) => pids.reduce((sum, p) => {
  try { return sum + Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))![1]) / 1024; } catch { return sum; }
}, 0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** For clients whose failures are the point: the SDK would print them. */
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

async function connect(url: string, config: pg.ClientConfig = {}): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url, ...config });
  c.on('error', () => { /* a server going away is what some tests do */ });
  await c.connect();
  return c;
}

/** How long `p` takes to settle, and its error if it rejected. */
async function timed(p: Promise<unknown>): Promise<{ ms: number; error?: Error }> {
  const t = Date.now();
  try { await p; return { ms: Date.now() - t }; } catch (e) { return { ms: Date.now() - t, error: e as Error }; }
}

describe('PostgreSQL 15, a throwaway cluster (helpers/postgres.ts)', () => {
  let server: Postgres;
  let startMs = 0;
  before(async () => {
    const t = Date.now();
    server = await startPostgres();
    startMs = Date.now() - t;
  });
  after(() => server?.stop());

  test('a fresh database per test, over TCP with a password; durable by default', async (t) => {
    t.diagnostic(`started in ${startMs} ms; ${server.pids().length} processes, RSS ${rssMiB(server.pids()).toFixed(0)} MiB (shared memory counted in each)`);
    const [a, b] = [await server.createDatabase(), await server.createDatabase()];
    assert.notEqual(a, b);
    assert.match(a, /^postgres:\/\/nixreg:[0-9a-f]+@127\.0\.0\.1:\d+\/t\d+_[0-9a-f]+$/);
    const c = await connect(a);
    try {
      const r = await c.query<{ db: string; v: string; fsync: string }>(
        "SELECT current_database() AS db, current_setting('server_version_num') AS v, current_setting('fsync') AS fsync");
      assert.equal(`/${r.rows[0]!.db}`, new URL(a).pathname);
      assert.ok(Number(r.rows[0]!.v) >= 150000 && Number(r.rows[0]!.v) < 160000, r.rows[0]!.v);
      assert.equal(r.rows[0]!.fsync, 'on');
      await c.query('CREATE TABLE t (x int)');
    } finally { await c.end(); }
    const wrong = new URL(b);
    wrong.password = 'wrong';
    await assert.rejects(connect(wrong.href), /password authentication failed/);
  });

  test('a session advisory lock is released as soon as its holder is killed with SIGKILL', async (t) => {
    const url = await server.createDatabase();
    // A process of its own, so that the kernel closes its socket as a dying replica's would.
    const holder = spawn(process.execPath, ['--input-type=module', '-e', `
      import pg from 'pg';
      const c = new pg.Client(process.argv[1]);
      await c.connect();
      await c.query('SELECT pg_advisory_lock(23)');
      process.stdout.write('locked\\n');
      setInterval(() => {}, 1e6);`, url], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((r) => holder.once('exit', r));
    const other = await connect(url);
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout!.on('data', (b: Buffer) => { if (b.toString().includes('locked')) resolve(); });
        void exited.then(() => reject(new Error('the lock holder exited')));
      });
      const tryLock = async () => (await other.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(23) AS ok')).rows[0]!.ok;
      assert.equal(await tryLock(), false, 'held by the other session');
      holder.kill('SIGKILL');
      await exited;
      const killed = Date.now();
      while (!(await tryLock())) {
        assert.ok(Date.now() - killed < 5000, 'the lock is still held 5 s after its holder died');
        await sleep(20);
      }
      t.diagnostic(`released ${Date.now() - killed} ms after the holder's death`);
      assert.ok(Date.now() - killed < 2000);
    } finally {
      holder.kill('SIGKILL');
      await other.end();
    }
  });

  test('LISTEN/NOTIFY: delivered at commit, only to sessions listening then; payloads under 8000 bytes', async () => {
    const url = await server.createDatabase();
    const [listener, late, sender] = [await connect(url), await connect(url), await connect(url)];
    try {
      const got: string[] = [];
      const lateGot: string[] = [];
      listener.on('notification', (n) => got.push(n.payload ?? ''));
      late.on('notification', (n) => lateGot.push(n.payload ?? ''));
      await listener.query('LISTEN tags');
      await sender.query('BEGIN');
      await sender.query("SELECT pg_notify('tags', 'moved')");
      await sleep(300);
      assert.deepEqual(got, [], 'nothing before the commit');
      await sender.query('COMMIT');
      await late.query('LISTEN tags');
      await sender.query("NOTIFY tags, 'deleted'");
      for (let i = 0; i < 100 && (got.length < 2 || lateGot.length < 1); i++) await sleep(20);
      assert.deepEqual(got, ['moved', 'deleted']);
      assert.deepEqual(lateGot, ['deleted'], 'a session that listens later never sees what was sent before');
      await sender.query("SELECT pg_notify('tags', $1)", ['x'.repeat(7999)]);
      await assert.rejects(sender.query("SELECT pg_notify('tags', $1)", ['x'.repeat(8000)]), /payload string too long/);
    } finally {
      await Promise.all([listener.end(), late.end(), sender.end()]);
    }
  });

  test('pause(): clients with timeouts fail within them; resume() recovers', async () => {
    const url = await server.createDatabase();
    const open = await connect(url, { query_timeout: 1000 });
    server.pause();
    try {
      // The kernel still accepts the connection: only the client's own timer ends the wait.
      const fresh = await timed(connect(url, { connectionTimeoutMillis: 1000 }));
      assert.match(String(fresh.error), /timeout/i);
      assert.ok(fresh.ms >= 900 && fresh.ms < 3000, `${fresh.ms} ms`);
      const query = await timed(open.query('SELECT 1'));
      assert.match(String(query.error), /Query read timeout/);
      assert.ok(query.ms >= 900 && query.ms < 3000, `${query.ms} ms`);
    } finally {
      server.resume();
      open.end().catch(() => {});
    }
    const again = await connect(url, { connectionTimeoutMillis: 5000 });
    assert.equal((await again.query('SELECT 1 AS one')).rows[0].one, 1);
    await again.end();
  });

  test('down(): connections are refused at once; up() brings back what was committed, on the same URL', async () => {
    const url = await server.createDatabase();
    const c = await connect(url);
    await c.query('CREATE TABLE kept (x int)');
    await c.query('INSERT INTO kept VALUES (42)');
    await server.down();
    await assert.rejects(c.query('SELECT 1'));
    const refused = await timed(connect(url, { connectionTimeoutMillis: 5000 }));
    assert.match(String(refused.error), /ECONNREFUSED/);
    assert.ok(refused.ms < 1000, `${refused.ms} ms`);
    await server.up();
    const back = await connect(url);
    assert.deepEqual((await back.query('SELECT x FROM kept')).rows, [{ x: 42 }]);
    await back.end();
  });
});

test('PostgreSQL with durable: false runs without fsync', async () => {
  const server = await startPostgres({ durable: false, settings: { max_connections: 20 } });
  try {
    const c = await connect(server.url);
    const r = await c.query("SELECT current_setting('fsync') AS f, current_setting('synchronous_commit') AS s, current_setting('max_connections') AS m");
    assert.deepEqual(r.rows[0], { f: 'off', s: 'off', m: '20' });
    await c.end();
  } finally {
    await server.stop();
  }
});

describe('Ceph radosgw 16, a throwaway single-node cluster on memstore (helpers/rgw.ts)', () => {
  let rgw: Rgw;
  let s3: S3Client;
  const Bucket = 'facts';
  let startMs = 0;
  before(async () => {
    const t = Date.now();
    rgw = await startRgw();
    startMs = Date.now() - t;
    s3 = rgw.client();
    await rgw.createBucket(Bucket);
  });
  after(async () => {
    s3?.destroy();
    await rgw?.stop();
  });

  test('put, head, get, ranges, batch delete', async (t) => {
    const p = rgw.pids();
    t.diagnostic(`started in ${startMs} ms; RSS mon ${rssMiB([p.mon]).toFixed(0)}, osd ${rssMiB([p.osd]).toFixed(0)}, radosgw ${rssMiB([p.rgw]).toFixed(0)} MiB`);
    const body = randomBytes(100_000);
    const put = await s3.send(new PutObjectCommand({ Bucket, Key: 'blobs/a', Body: body }));
    assert.equal(put.ETag, `"${md5(body).toString('hex')}"`);
    const head = await s3.send(new HeadObjectCommand({ Bucket, Key: 'blobs/a' }));
    assert.equal(head.ContentLength, body.length);
    assert.equal(head.ETag, put.ETag);
    const get = await s3.send(new GetObjectCommand({ Bucket, Key: 'blobs/a' }));
    assert.deepEqual(Buffer.from(await get.Body!.transformToByteArray()), body);
    const range = await s3.send(new GetObjectCommand({ Bucket, Key: 'blobs/a', Range: 'bytes=10-19' }));
    assert.equal(range.ContentRange, `bytes 10-19/${body.length}`);
    assert.deepEqual(Buffer.from(await range.Body!.transformToByteArray()), body.subarray(10, 20));
    const suffix = await s3.send(new GetObjectCommand({ Bucket, Key: 'blobs/a', Range: 'bytes=-5' }));
    assert.deepEqual(Buffer.from(await suffix.Body!.transformToByteArray()), body.subarray(-5));
    await assert.rejects(s3.send(new GetObjectCommand({ Bucket, Key: 'blobs/a', Range: `bytes=${body.length}-` })),
      (e: Error & { $metadata?: { httpStatusCode?: number } }) => e.$metadata?.httpStatusCode === 416);

    await s3.send(new PutObjectCommand({ Bucket, Key: 'blobs/b', Body: 'b' }));
    const del = await s3.send(new DeleteObjectsCommand({ Bucket, Delete: { Objects: [{ Key: 'blobs/a' }, { Key: 'blobs/b' }, { Key: 'blobs/never' }] } }));
    assert.equal(del.Deleted?.length, 3, 'a missing key counts as deleted');
    await assert.rejects(s3.send(new HeadObjectCommand({ Bucket, Key: 'blobs/a' })), { name: 'NotFound' });
    await s3.send(new DeleteObjectCommand({ Bucket, Key: 'blobs/a' }));
  });

  test("the SDK's own variables (env) are enough for a process to find it", async () => {
    // A child process: the SDK reads its environment once, when a client is made.
    const child = spawn(process.execPath, ['--input-type=module', '--no-warnings', '-e', `
      import { S3Client, ListBucketsCommand } from '@aws-sdk/client-s3';
      const s3 = new S3Client({ forcePathStyle: true });
      const r = await s3.send(new ListBucketsCommand({}));
      process.stdout.write(JSON.stringify(r.Buckets.map((b) => b.Name)));`],
    { cwd: ROOT, env: { ...process.env, ...rgw.env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    const code = await new Promise((r) => child.once('exit', r));
    assert.equal(code, 0);
    assert.deepEqual(JSON.parse(out), [Bucket]);
  });

  test('list v2 by prefix, in pages, in key order', async () => {
    const keys = ['list/3', 'list/1', 'list/2', 'list/4', 'list/5', 'other/1'];
    for (const Key of keys) await s3.send(new PutObjectCommand({ Bucket, Key, Body: Key }));
    const seen: string[] = [];
    let ContinuationToken: string | undefined;
    let pages = 0;
    do {
      const r = await s3.send(new ListObjectsV2Command({ Bucket, Prefix: 'list/', MaxKeys: 2, ContinuationToken }));
      seen.push(...(r.Contents ?? []).map((o) => o.Key!));
      ContinuationToken = r.IsTruncated ? r.NextContinuationToken : undefined;
      pages++;
    } while (ContinuationToken);
    assert.deepEqual(seen, ['list/1', 'list/2', 'list/3', 'list/4', 'list/5']);
    assert.equal(pages, 3);
  });

  test('a stream body works only with checksums off unless required (the SDK default is refused)', async () => {
    const body = randomBytes(64 * 1024);
    await s3.send(new PutObjectCommand({ Bucket, Key: 'stream/ok', Body: Readable.from([body]), ContentLength: body.length }));
    const head = await s3.send(new HeadObjectCommand({ Bucket, Key: 'stream/ok' }));
    assert.equal(head.ETag, `"${md5(body).toString('hex')}"`);
    const sdkDefault = new S3Client({ endpoint: rgw.endpoint, region: rgw.region, forcePathStyle: true, logger: quiet,
      credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey } });
    try {
      await assert.rejects(sdkDefault.send(new PutObjectCommand({ Bucket, Key: 'stream/refused', Body: Readable.from([body]), ContentLength: body.length })),
        (e: Error & { $metadata?: { httpStatusCode?: number } }) => e.$metadata?.httpStatusCode === 411);
    } finally { sdkDefault.destroy(); }
  });

  test('multipart: parts of 5 MiB but the last, listed while open, composed by copy; the completion has no ETag', async () => {
    const parts = [randomBytes(5 * MiB), randomBytes(MiB)];
    const Key = 'multi/whole';
    const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket, Key }));
    const etags: string[] = [];
    for (const [i, Body] of parts.entries()) {
      etags.push((await s3.send(new UploadPartCommand({ Bucket, Key, UploadId, PartNumber: i + 1, Body }))).ETag!);
    }
    // Another replica can learn what an open upload holds.
    const listed = await s3.send(new ListPartsCommand({ Bucket, Key, UploadId }));
    assert.deepEqual(listed.Parts?.map((p) => [p.PartNumber, p.Size, p.ETag]), [[1, 5 * MiB, etags[0]], [2, MiB, etags[1]]]);
    const done = await s3.send(new CompleteMultipartUploadCommand({ Bucket, Key, UploadId,
      MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) } }));
    assert.ok(!done.ETag || done.ETag === '""', `radosgw 16 answers an empty ETag, got ${done.ETag}`);
    const head = await s3.send(new HeadObjectCommand({ Bucket, Key }));
    assert.equal(head.ContentLength, 6 * MiB);
    assert.equal(head.ETag, `"${md5(Buffer.concat(parts.map(md5))).toString('hex')}-2"`);

    // Objects already stored become parts of a new one without passing through the client.
    const copy = await s3.send(new CreateMultipartUploadCommand({ Bucket, Key: 'multi/copy' }));
    const c1 = await s3.send(new UploadPartCopyCommand({ Bucket, Key: 'multi/copy', UploadId: copy.UploadId, PartNumber: 1,
      CopySource: `${Bucket}/${Key}`, CopySourceRange: `bytes=0-${5 * MiB - 1}` }));
    const c2 = await s3.send(new UploadPartCommand({ Bucket, Key: 'multi/copy', UploadId: copy.UploadId, PartNumber: 2, Body: 'tail' }));
    await s3.send(new CompleteMultipartUploadCommand({ Bucket, Key: 'multi/copy', UploadId: copy.UploadId,
      MultipartUpload: { Parts: [{ ETag: c1.CopyPartResult!.ETag, PartNumber: 1 }, { ETag: c2.ETag, PartNumber: 2 }] } }));
    const composed = await s3.send(new GetObjectCommand({ Bucket, Key: 'multi/copy' }));
    assert.deepEqual(Buffer.from(await composed.Body!.transformToByteArray()), Buffer.concat([parts[0]!, Buffer.from('tail')]));

    // A part under 5 MiB that is not the last is refused, at completion, not at upload.
    const small = await s3.send(new CreateMultipartUploadCommand({ Bucket, Key: 'multi/small' }));
    const s = [];
    for (const n of [1, 2]) {
      s.push((await s3.send(new UploadPartCommand({ Bucket, Key: 'multi/small', UploadId: small.UploadId, PartNumber: n, Body: randomBytes(MiB) }))).ETag!);
    }
    await assert.rejects(s3.send(new CompleteMultipartUploadCommand({ Bucket, Key: 'multi/small', UploadId: small.UploadId,
      MultipartUpload: { Parts: s.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) } })), { name: 'EntityTooSmall' });
    await s3.send(new AbortMultipartUploadCommand({ Bucket, Key: 'multi/small', UploadId: small.UploadId }));
    // AWS answers NoSuchUpload; radosgw 16 answers NoSuchKey (404 both).
    await assert.rejects(s3.send(new ListPartsCommand({ Bucket, Key: 'multi/small', UploadId: small.UploadId })),
      (e: Error & { $metadata?: { httpStatusCode?: number } }) => e.name === 'NoSuchKey' && e.$metadata?.httpStatusCode === 404);
  });

  test('pause(): only a client with a request deadline that throws fails within it; resume() recovers', async () => {
    await s3.send(new PutObjectCommand({ Bucket, Key: 'pause/x', Body: 'x' }));
    const head = (c: S3Client) => c.send(new HeadObjectCommand({ Bucket, Key: 'pause/x' }));
    const bounded = rgw.client({ maxAttempts: 1,
      requestHandler: { connectionTimeout: 1000, requestTimeout: 1000, throwOnRequestTimeout: true } });
    // The SDK sets no deadline of its own, and without throwOnRequestTimeout its
    // requestTimeout only logs a warning: both of these wait as long as radosgw is stopped.
    const unbounded = rgw.client();
    const warnOnly = rgw.client({ maxAttempts: 1, requestHandler: { requestTimeout: 1000, logger: quiet } });
    rgw.pause();
    let waiting: Promise<unknown>[] = [];
    try {
      const r = await timed(head(bounded));
      assert.equal(r.error?.name, 'TimeoutError');
      assert.ok(r.ms >= 900 && r.ms < 3000, `${r.ms} ms`);
      waiting = [head(unbounded), head(warnOnly)];
      const states = await Promise.all(waiting.map((w) =>
        Promise.race([w.then(() => 'answered', () => 'failed'), sleep(2500).then(() => 'waiting')])));
      assert.deepEqual(states, ['waiting', 'waiting']);
    } finally {
      rgw.resume();
    }
    for (const w of waiting) assert.equal(((await w) as { ContentLength?: number }).ContentLength, 1, 'answered once radosgw runs again');
    assert.equal((await head(bounded)).ContentLength, 1);
    for (const c of [bounded, unbounded, warnOnly]) c.destroy();
  });
});

test('Ceph radosgw on bluestore (a sparse file) stores and serves', async (t) => {
  const started = Date.now();
  const rgw = await startRgw({ objectstore: 'bluestore', capacityBytes: 2 * 1024 ** 3 });
  try {
    const p = rgw.pids();
    t.diagnostic(`started in ${Date.now() - started} ms; RSS mon ${rssMiB([p.mon]).toFixed(0)}, osd ${rssMiB([p.osd]).toFixed(0)}, radosgw ${rssMiB([p.rgw]).toFixed(0)} MiB`);
    await rgw.createBucket('blue');
    const s3 = rgw.client();
    const body = randomBytes(3 * MiB);
    await s3.send(new PutObjectCommand({ Bucket: 'blue', Key: 'x', Body: body }));
    const get = await s3.send(new GetObjectCommand({ Bucket: 'blue', Key: 'x' }));
    assert.deepEqual(Buffer.from(await get.Body!.transformToByteArray()), body);
    s3.destroy();
  } finally {
    await rgw.stop();
  }
});
