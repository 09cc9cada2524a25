// Crash safety of the real CLI process: kill -9 with uploads in every state and during
// the commit of large blobs, restart on the same data directory, and check what is on
// disk (every blob file is named by its digest, every index row has its file) and what
// is served (every acknowledged blob intact; interrupted uploads resumable or unknown).
import assert from 'node:assert/strict';
import { existsSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { filesIn, inspectStore } from '../helpers/store-check.js';
import { MiB, Pattern, digestOfGet, openRequest, send } from './stream.js';

const REPO = 'crash/test';
let data: string;
let reg: RegistryProcess | undefined;
/** Blobs the registry acknowledged with 201: they must survive every crash. */
const committed = new Map<string, number>();

before(() => { data = tempDir('nixreg-crash-'); });
after(async () => {
  if (reg) { reg.child.kill('SIGKILL'); await reg.stop(); }
  rmSync(data, { recursive: true, force: true });
});

async function start(args: string[] = []): Promise<RegistryProcess> {
  // A test that failed half-way leaves its process running: never leak it into the next.
  if (reg) { reg.child.kill('SIGKILL'); await reg.stop(); }
  reg = await spawnRegistry({ data, args });
  return reg;
}

async function crash(): Promise<void> {
  assert.ok(reg);
  reg.child.kill('SIGKILL');
  await reg.stop();
  reg = undefined;
}

const url = (path: string) => `${reg!.url}${path}`;

function waitUntil(what: string, cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = () => {
      let ok = false;
      try { ok = cond(); } catch { /* not there yet */ }
      if (ok) resolve();
      else if (Date.now() > end) reject(new Error(`timed out waiting for ${what}`));
      else setImmediate(poll);
    };
    poll();
  });
}

/**
 * Every acknowledged blob is served at its size; its content is read back and hashed
 * when `full` (inspectStore already hashed every file, so per cycle a HEAD suffices).
 */
async function checkServed(full = true): Promise<void> {
  for (const [digest, size] of committed) {
    if (!full) {
      const h = await send(url(`/v2/${REPO}/blobs/${digest}`), 'HEAD');
      assert.equal(h.status, 200, `${digest} lost`);
      assert.equal(Number(h.headers['content-length']), size);
      continue;
    }
    const r = await digestOfGet(url(`/v2/${REPO}/blobs/${digest}`));
    assert.equal(r.status, 200, `${digest} lost`);
    assert.equal(r.bytes, size);
    assert.equal(r.digest, digest, `${digest} corrupted`);
  }
}

async function startUpload(): Promise<string> {
  const r = await send(url(`/v2/${REPO}/blobs/uploads/`), 'POST');
  assert.equal(r.status, 202);
  return r.headers.location!;
}

async function pushMonolithic(p: Pattern): Promise<string> {
  const digest = p.digest();
  const r = await send(url(`/v2/${REPO}/blobs/uploads/?digest=${digest}`), 'POST', p.stream(),
    { 'Content-Type': 'application/octet-stream', 'Content-Length': String(p.size) });
  assert.equal(r.status, 201, r.body);
  committed.set(digest, p.size);
  return digest;
}

async function patch(location: string, p: Pattern, start: number, end: number): Promise<string> {
  const r = await send(url(location), 'PATCH', p.stream(start, end), {
    'Content-Type': 'application/octet-stream', 'Content-Range': `${start}-${end - 1}`, 'Content-Length': String(end - start),
  });
  assert.equal(r.status, 202, r.body);
  assert.equal(r.headers.range, `0-${end - 1}`);
  return r.headers.location!;
}

async function pushChunked(p: Pattern, chunk: number): Promise<string> {
  let loc = await startUpload();
  for (let s = 0; s < p.size; s += chunk) loc = await patch(loc, p, s, Math.min(p.size, s + chunk));
  const digest = p.digest();
  const r = await send(url(`${loc}${loc.includes('?') ? '&' : '?'}digest=${digest}`), 'PUT');
  assert.equal(r.status, 201, r.body);
  committed.set(digest, p.size);
  return digest;
}

const uploadFile = (location: string) => join(data, 'uploads', location.slice(location.lastIndexOf('/') + 1).split('?')[0]!);

test('kill -9 with a finished, a chunked half-way and a monolithic mid-stream upload, then restart', { timeout: 240_000 }, async () => {
  await start();
  // Finished: monolithic, chunked, and a tagged manifest over them.
  const layer = await pushMonolithic(new Pattern(MiB + 17));
  const config = await pushChunked(new Pattern(3 * MiB - 5), MiB);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: committed.get(config) },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer, size: committed.get(layer) }],
  }));
  const put = await send(url(`/v2/${REPO}/manifests/v1`), 'PUT', manifest, { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' });
  assert.equal(put.status, 201, put.body);
  const manifestDigest = put.headers['docker-content-digest'] as string;

  // Chunked, half-way: two whole chunks acknowledged, the third still streaming.
  const resumable = new Pattern(4 * MiB);
  let loc = await startUpload();
  loc = await patch(loc, resumable, 0, MiB);
  loc = await patch(loc, resumable, MiB, 2 * MiB);
  const third = await openRequest(url(loc), 'PATCH', resumable.slice(2 * MiB, 2 * MiB + MiB / 2),
    { 'Content-Type': 'application/octet-stream', 'Content-Range': `${2 * MiB}-${3 * MiB - 1}`, 'Content-Length': String(MiB) });
  await waitUntil('the third chunk to reach the disk', () => statSync(uploadFile(loc)).size > 2 * MiB);

  // Monolithic, mid-stream: 3 of 8 MiB sent.
  const mono = new Pattern(8 * MiB);
  const monoDigest = mono.digest();
  const half = await openRequest(url(`/v2/${REPO}/blobs/uploads/?digest=${monoDigest}`), 'POST', mono.slice(0, 3 * MiB),
    { 'Content-Type': 'application/octet-stream', 'Content-Length': String(mono.size) });
  await waitUntil('the monolithic upload to reach the disk', () => filesIn(join(data, 'tmp')).some((f) => statSync(f).size > 0));

  // A manifest mid-stream: half of its body sent under a new tag.
  const halfManifest = await openRequest(url(`/v2/${REPO}/manifests/v2`), 'PUT', manifest.subarray(0, manifest.length >> 1),
    { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', 'Content-Length': String(manifest.length) });
  await new Promise((r) => setTimeout(r, 100));

  await crash();
  for (const req of [third, half, halfManifest]) req.destroy();
  await inspectStore(data, 'after kill -9');

  await start();
  await inspectStore(data, 'after restart');
  await checkServed();
  assert.deepEqual(filesIn(join(data, 'tmp')), [], 'startup clears half-written temporary files');
  const m = await send(url(`/v2/${REPO}/manifests/v1`), 'GET', undefined, { Accept: 'application/vnd.oci.image.manifest.v1+json' });
  assert.equal(m.status, 200);
  assert.equal(m.headers['docker-content-digest'], manifestDigest);
  assert.equal(m.body, manifest.toString());

  const noTag = await send(url(`/v2/${REPO}/manifests/v2`), 'GET');
  assert.equal(noTag.status, 404, 'the half-sent manifest did not create its tag');
  assert.equal((JSON.parse(noTag.body) as { errors: { code: string }[] }).errors[0]!.code, 'MANIFEST_UNKNOWN');
  const tags = await send(url(`/v2/${REPO}/tags/list`), 'GET');
  assert.deepEqual((JSON.parse(tags.body) as { tags: string[] }).tags, ['v1']);

  const lost = await send(url(`/v2/${REPO}/blobs/${monoDigest}`), 'HEAD');
  assert.equal(lost.status, 404, 'the interrupted monolithic upload is not a blob');

  // The chunked upload resumes where the disk says it is, and completes.
  const status = await send(url(loc), 'GET');
  assert.equal(status.status, 204);
  const m2 = /^0-(\d+)$/.exec(status.headers.range ?? '');
  assert.ok(m2, `Range header: ${status.headers.range}`);
  const offset = Number(m2[1]) + 1;
  assert.ok(offset >= 2 * MiB && offset <= 3 * MiB, `resume offset ${offset}`);
  assert.equal(offset, statSync(uploadFile(loc)).size);
  loc = await patch(status.headers.location!, resumable, offset, resumable.size);
  const fin = await send(url(`${loc}${loc.includes('?') ? '&' : '?'}digest=${resumable.digest()}`), 'PUT');
  assert.equal(fin.status, 201, fin.body);
  committed.set(resumable.digest(), resumable.size);
  await checkServed();

  // A bad resume (wrong offset) is refused with the OCI error and loses nothing.
  const loc2 = await startUpload();
  await patch(loc2, resumable, 0, MiB);
  const bad = await send(url(loc2), 'PATCH', resumable.slice(2 * MiB, 3 * MiB), { 'Content-Range': `${2 * MiB}-${3 * MiB - 1}`, 'Content-Length': String(MiB) });
  assert.equal(bad.status, 416);
  assert.equal((JSON.parse(bad.body) as { errors: { code: string }[] }).errors[0]!.code, 'RANGE_INVALID');
  assert.equal(statSync(uploadFile(loc2)).size, MiB);
  await crash();
});

/**
 * Sends a blob and resolves when its commit starts: for a monolithic upload,
 * once the temporary file is whole (hashing is done; fsync, rename and index row are
 * under way); for a chunked one, once the final PUT is sent. `done` settles with the
 * response, or never when the server is killed first.
 */
async function beginCommit(how: 'monolithic' | 'chunked', p: Pattern): Promise<{ loc?: string; done: Promise<number> }> {
  const digest = p.digest();
  const finish = (path: string, method: string, first: Buffer, rest: Buffer | undefined, headers: Record<string, string>) =>
    openRequest(url(path), method, first, headers).then((req) => {
      const done = new Promise<number>((resolve) => req.on('response', (res) => resolve(res.statusCode!)));
      req.end(rest);
      // Wrapped: awaiting the bare promise would wait for the response.
      return { done };
    });
  if (how === 'monolithic') {
    const { done } = await finish(`/v2/${REPO}/blobs/uploads/?digest=${digest}`, 'POST', p.slice(0, p.size - MiB), p.slice(p.size - MiB, p.size),
      { 'Content-Type': 'application/octet-stream', 'Content-Length': String(p.size) });
    await waitUntil('the whole blob in tmp/', () => filesIn(join(data, 'tmp')).some((f) => statSync(f).size === p.size)
      || existsSync(join(data, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))));
    return { done };
  }
  let loc = await startUpload();
  loc = await patch(loc, p, 0, p.size);
  const { done } = await finish(`${loc}${loc.includes('?') ? '&' : '?'}digest=${digest}`, 'PUT', Buffer.alloc(0), undefined, {});
  return { loc, done };
}

test('kill -9 during the commit of a large blob, at several moments', { timeout: 240_000 }, async (t: TestContext) => {
  const outcomes: string[] = [];
  for (const how of ['monolithic', 'chunked'] as const) {
    // Calibrate: how long does a commit take here? Kill at fractions of that.
    await start();
    const calib = new Pattern(16 * MiB);
    const t0 = performance.now();
    const { done } = await beginCommit(how, calib);
    const tStart = performance.now();
    assert.equal(await done, 201);
    committed.set(calib.digest(), calib.size);
    const commitMs = Math.max(1, performance.now() - tStart);
    outcomes.push(`${how} commit takes ${commitMs.toFixed(0)} ms (upload ${(tStart - t0).toFixed(0)} ms)`);
    await crash();

    for (const fraction of [0, 0.3, 0.7, 1.2]) {
      const delay = Math.round(fraction * commitMs);
      await start();
      const p = new Pattern(16 * MiB);
      const digest = p.digest();
      const { loc, done } = await beginCommit(how, p);
      let acknowledged = false;
      void done.then((status) => { acknowledged = status === 201; });
      if (delay) await new Promise((r) => setTimeout(r, delay));
      await crash();
      await inspectStore(data, `${how}, killed ${delay} ms into the commit`);

      await start();
      await inspectStore(data, `${how}, restarted after a kill ${delay} ms into the commit`);
      await checkServed(false);
      const head = await send(url(`/v2/${REPO}/blobs/${digest}`), 'HEAD');
      let outcome: string;
      if (head.status === 200) {
        outcome = 'committed';
        committed.set(digest, p.size);
      } else {
        assert.equal(head.status, 404);
        assert.ok(!acknowledged, 'a blob acknowledged with 201 before the kill was lost');
        outcome = 'absent';
        if (loc) {
          // Not committed: the session either still holds every byte (and finishes now)
          // or is cleanly unknown, never in between.
          const st = await send(url(loc), 'GET');
          if (st.status === 204) {
            assert.equal(st.headers.range, `0-${p.size - 1}`);
            const fin = await send(url(`${loc}${loc.includes('?') ? '&' : '?'}digest=${digest}`), 'PUT');
            assert.equal(fin.status, 201, fin.body);
            committed.set(digest, p.size);
            outcome = 'resumed';
          } else {
            assert.equal(st.status, 404);
            assert.equal((JSON.parse(st.body) as { errors: { code: string }[] }).errors[0]!.code, 'BLOB_UPLOAD_UNKNOWN');
            outcome = 'upload unknown';
          }
        }
      }
      outcomes.push(`${how} killed at ${delay} ms: ${outcome}`);
      if (committed.has(digest)) assert.equal((await digestOfGet(url(`/v2/${REPO}/blobs/${digest}`))).digest, digest);
      await crash();
    }
  }
  t.diagnostic(outcomes.join('; '));
  await start();
  await inspectStore(data, 'final');
  await checkServed();
  await crash();
});

test('stale uploads are purged after --upload-max-age: at startup after a crash, and while running', { timeout: 240_000 }, async () => {
  await start(['--upload-max-age', '1']);
  const p = new Pattern(MiB);
  const crashed = await patch(await startUpload(), p, 0, MiB);
  assert.ok(existsSync(uploadFile(crashed)));
  await crash();
  await new Promise((r) => setTimeout(r, 1500));

  await start(['--upload-max-age', '1']);
  const gone = await send(url(crashed), 'GET');
  assert.equal(gone.status, 404);
  assert.equal((JSON.parse(gone.body) as { errors: { code: string }[] }).errors[0]!.code, 'BLOB_UPLOAD_UNKNOWN');
  assert.ok(!existsSync(uploadFile(crashed)), 'its file is removed too');

  const idle = await patch(await startUpload(), p, 0, MiB);
  const t0 = Date.now();
  await waitUntil('the idle upload to be purged', () => !existsSync(uploadFile(idle)), 15_000);
  assert.ok(Date.now() - t0 >= 500, 'not purged before it was stale');
  assert.equal((await send(url(idle), 'GET')).status, 404);
  await checkServed(false);
  await inspectStore(data, 'after purges');
  await crash();
});
