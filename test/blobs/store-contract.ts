// The contract of the blob seam (src/blobs/store/blob-store.ts), one suite run against
// every implementation, as Distribution's storage driver suites are: store-disk.test.ts
// runs it on a temp dir, store-s3.test.ts on a real radosgw. First the store alone (put,
// get, ranges, stat, delete, listing pages, idempotent and concurrent puts, staging of
// chunks of any size, cut chunks, removal), then storage over it (an upload finished by a
// second instance over the same index and store, a wrong digest leaving nothing behind,
// abandoned staging purged).
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { DigestMismatch, UploadOutOfOrder, UploadUnknown } from '../../src/blobs/errors.js';
import type { BlobStore, Staged } from '../../src/blobs/store/blob-store.js';
import type { Storage } from '../../src/blobs/storage.js';

/** One namespace of a backend: a fresh directory, or a fresh prefix in the bucket. */
export interface Namespace {
  /** Another store over the same bytes (another replica). */
  store(): BlobStore;
  /** Storage (index + store) over this namespace; each call is another instance. */
  storage(opts?: { uploadMaxAgeMs?: number }): Promise<Storage>;
  /** Every object or file held (blobs, staging, temporary files), for "nothing left behind". */
  residue(): Promise<string[]>;
}

export interface Backend {
  namespace(): Promise<Namespace>;
}

const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const chunks = (b: Buffer, sizes: number[]) => {
  const out: Buffer[] = [];
  let off = 0;
  for (const n of sizes) { out.push(b.subarray(off, off + n)); off += n; }
  if (off < b.length) out.push(b.subarray(off));
  return out;
};
async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}
async function put(store: BlobStore, body: Buffer, stream = false): Promise<string> {
  const d = sha256(body);
  const p = await store.write(d, stream ? Readable.from(chunks(body, [1000, 64 * 1024, 3 * MiB])) : body);
  await p.publish();
  await p.discard();
  return d;
}
/** Appends each chunk as its own call (a PATCH each), recording as a row would. */
async function stage(store: BlobStore, id: string, parts: Buffer[], from?: Staged): Promise<Staged> {
  let s = from ?? store.staging.create(id);
  for (const p of parts) s = await store.staging.append(id, s, Readable.from([p]), (r) => { s = r; });
  return s;
}

export function blobStoreContract(name: string, backend: () => Backend) {
  describe(`BlobStore contract: ${name}`, () => {
    let ns: Namespace;
    let store: BlobStore;
    before(async () => { ns = await backend().namespace(); store = ns.store(); });
    after(() => store?.close());

    test('put, read, open whole and ranged, stat, delete; a missing blob is ENOENT', async () => {
      const body = randomBytes(100_000);
      const d = await put(store, body);
      assert.equal(await store.stat(d), body.length);
      assert.deepEqual(await store.read(d), body);
      assert.deepEqual(await readAll(await store.open(d)), body);
      assert.deepEqual(await readAll(await store.open(d, { start: 10, end: 19 })), body.subarray(10, 20));
      assert.deepEqual(await readAll(await store.open(d, { start: body.length - 1, end: body.length - 1 })), body.subarray(-1));
      await store.delete(d);
      await store.delete(d);
      assert.equal(await store.stat(d), undefined);
      await assert.rejects(store.open(d), { code: 'ENOENT' });
      await assert.rejects(store.read(d), { code: 'ENOENT' });
      const empty = await put(store, Buffer.alloc(0));
      assert.equal(await store.stat(empty), 0);
      await store.delete(empty);
    });

    test('nothing is visible before publish, and a discard leaves nothing', async () => {
      const body = randomBytes(9 * MiB + 5);
      const d = sha256(body);
      const p = await store.write(d, Readable.from(chunks(body, [MiB, 5 * MiB])));
      assert.equal(p.size, body.length);
      assert.equal(await store.stat(d), undefined);
      await p.discard();
      await p.discard();
      assert.equal(await store.stat(d), undefined);
      assert.deepEqual(await ns.residue(), []);
    });

    test('a monolithic 21 MiB body streams in and reads back; puts are idempotent and may race', async () => {
      const body = randomBytes(21 * MiB + 3);
      const d = await put(store, body, true);
      assert.equal(await store.stat(d), body.length);
      assert.equal(sha256(await readAll(await store.open(d))), d);
      await put(store, body, true);
      const other = ns.store();
      const again = randomBytes(9 * MiB);
      const d2 = sha256(again);
      await Promise.all([put(store, again, true), put(other, again, true), put(store, again)]);
      assert.equal(sha256(await other.read(d2)), d2);
      other.close();
      await store.delete(d);
      await store.delete(d2);
      assert.deepEqual(await ns.residue(), []);
    });

    test('a finished local file (a built layer) is stored by writeFile; the caller may remove it after', async () => {
      const body = randomBytes(8 * MiB + 1);
      const d = sha256(body);
      const file = join(mkdtempSync(join(tmpdir(), 'nixreg-layer-')), 'layer');
      writeFileSync(file, body);
      const p = await store.writeFile(d, file, body.length);
      assert.equal(p.size, body.length);
      assert.equal(await store.stat(d), undefined);
      await p.publish();
      await p.discard();
      rmSync(dirname(file), { recursive: true, force: true });
      assert.equal(sha256(await store.read(d)), d);
      await store.delete(d);
      assert.deepEqual(await ns.residue(), []);
    });

    test('listing: in digest order, a page at a time, with sizes', async () => {
      const bodies = Array.from({ length: 7 }, (_, i) => randomBytes(10 + i));
      const digests = await Promise.all(bodies.map((b) => put(store, b)));
      const seen: { digest: string; size: number }[] = [];
      for (let after = '', page; (page = await store.list(after, 3)).length; after = page[page.length - 1]!.digest) {
        assert.ok(page.length <= 3);
        seen.push(...page.map((b) => ({ digest: b.digest, size: b.size })));
        assert.ok(page.every((b) => b.modifiedMs > Date.now() - 600_000 && b.modifiedMs <= Date.now() + 5000));
      }
      const want = bodies.map((b, i) => ({ digest: digests[i]!, size: b.length })).sort((a, b) => (a.digest < b.digest ? -1 : 1));
      assert.deepEqual(seen, want);
      for (const d of digests) await store.delete(d);
      assert.deepEqual(await store.list('', 10), []);
    });

    test('staging: many small chunks and odd sizes across the 5 MiB boundary, continued by another instance', async () => {
      const body = randomBytes(13 * MiB + 11);
      const id = randomUUID();
      // 5 MiB - 1, then small ones, then a big one crossing two part boundaries, then the rest.
      const small = Array.from({ length: 40 }, (_, i) => 1000 + i * 37);
      const parts = chunks(body, [5 * MiB - 1, 2, ...small, 7 * MiB + 3]);
      const half = Math.floor(parts.length / 2);
      let s = await stage(store, id, parts.slice(0, half));
      assert.equal(s.offset, parts.slice(0, half).reduce((n, p) => n + p.length, 0));
      const other = ns.store();
      const resumed = await other.staging.resume(id, JSON.parse(JSON.stringify(s)) as Staged);
      s = await stage(other, id, parts.slice(half), resumed);
      assert.equal(s.offset, body.length);
      assert.deepEqual(await other.staging.list('', 100), [id]);
      const back = await readAll(await store.staging.read(id, s, (r) => { s = r; }));
      assert.equal(sha256(back), sha256(body));
      const p = await store.staging.seal(id, s, sha256(body), (r) => { s = r; });
      await p.publish();
      await store.staging.remove(id, s);
      assert.deepEqual(await store.staging.list('', 100), []);
      assert.equal(sha256(await other.read(sha256(body))), sha256(body));
      other.close();
      await store.delete(sha256(body));
      assert.deepEqual(await ns.residue(), []);
    });

    test('staging: a chunk cut short keeps what arrived and says so; removal leaves nothing', async () => {
      const id = randomUUID();
      const first = randomBytes(9 * MiB + 100);
      let s = await stage(store, id, [first]);
      const arrived = randomBytes(2 * MiB);
      const cut = new Readable({ read() {} });
      cut.push(arrived);
      setTimeout(() => cut.destroy(new Error('client went away')), 50);
      let recorded: Staged | undefined;
      await assert.rejects(store.staging.append(id, s, cut, (r) => { recorded = r; }), /client went away/);
      assert.equal(recorded?.offset, first.length + arrived.length);
      s = recorded!;
      const back = await readAll(await store.staging.read(id, s, (r) => { s = r; }));
      assert.equal(sha256(back), sha256(Buffer.concat([first, arrived])));
      await store.staging.remove(id, s);
      await store.staging.remove(id, s);
      // An orphan (its state unknown) is found and removed too.
      const orphan = randomUUID();
      await stage(store, orphan, [randomBytes(8 * MiB + 1)]);
      await store.staging.remove(orphan, undefined);
      assert.deepEqual(await ns.residue(), []);
    });

    test('staging: the uploads with bytes staged are listed a page at a time, in id order', async () => {
      const staged = new Map<string, Staged>();
      // Four with a small tail; one of exactly a part (8 MiB), which has no tail at all.
      for (let i = 0; i < 4; i++) { const id = randomUUID(); staged.set(id, await stage(store, id, [randomBytes(100 + i)])); }
      const whole = randomUUID();
      staged.set(whole, await stage(store, whole, [randomBytes(8 * MiB)]));
      const seen: string[] = [];
      for (let after = '', page; (page = await store.staging.list(after, 2)).length; after = page[page.length - 1]!) {
        assert.ok(page.every((id, i) => i === 0 || page[i - 1]! < id));
        seen.push(...page);
      }
      assert.deepEqual(seen, [...staged.keys()].sort());
      for (const [id, s] of staged) await store.staging.remove(id, s);
      assert.deepEqual(await store.staging.list('', 10), []);
      assert.deepEqual(await ns.residue(), []);
    });

    test('staging: an empty upload and one under a part seal into blobs', async () => {
      for (const body of [Buffer.alloc(0), randomBytes(3 * MiB + 1)]) {
        const id = randomUUID();
        let s = await stage(store, id, body.length ? chunks(body, [MiB]) : []);
        const p = await store.staging.seal(id, s, sha256(body), (r) => { s = r; });
        await p.publish();
        await store.staging.remove(id, s);
        assert.deepEqual(await store.read(sha256(body)), body);
        await store.delete(sha256(body));
      }
      assert.deepEqual(await ns.residue(), []);
    });

    describe('storage over the store', () => {
      let a: Storage;
      let b: Storage;
      let sns: Namespace;
      before(async () => { sns = await backend().namespace(); a = await sns.storage(); b = await sns.storage(); });
      after(async () => { await a?.close(); await b?.close(); });

      test('an upload of many chunks, begun on one instance, finished on another, digest verified', async () => {
        const body = randomBytes(11 * MiB + 333);
        const id = await a.startUpload('lib/app');
        const parts = chunks(body, [MiB, 17, 4 * MiB, 3 * MiB + 5]);
        let offset = 0;
        for (const [i, p] of parts.entries()) {
          // Alternate replicas, as a round-robin would.
          offset = await (i % 2 ? b : a).appendUpload('lib/app', id, Readable.from([p]), offset, p.length);
        }
        assert.equal(offset, body.length);
        assert.equal(await b.uploadOffset('lib/app', id), body.length);
        assert.equal(await b.finishUpload('lib/app', id, sha256(body)), body.length);
        assert.equal(await a.blobSize('lib/app', sha256(body)), body.length);
        assert.equal(sha256(await readAll(await a.openBlob(sha256(body)))), sha256(body));
        assert.deepEqual(await sns.residue(), [`blob ${sha256(body)}`]);
        assert.equal(await a.deleteBlob('lib/app', sha256(body)), true);
        assert.deepEqual(await sns.residue(), []);
      });

      test('a chunk in progress on one instance holds the upload: the other gets out-of-order until it ends, then continues', async () => {
        const first = randomBytes(9 * MiB + 3);
        const second = randomBytes(100);
        const id = await a.startUpload('lib/app');
        const slow = new Readable({ read() {} });
        slow.push(first.subarray(0, MiB));
        const writing = a.appendUpload('lib/app', id, slow);
        await new Promise((r) => setTimeout(r, 100));
        await assert.rejects(b.appendUpload('lib/app', id, Readable.from([second])), UploadOutOfOrder);
        await assert.rejects(b.finishUpload('lib/app', id, sha256(first)), UploadOutOfOrder);
        slow.push(first.subarray(MiB));
        slow.push(null);
        assert.equal(await writing, first.length);
        assert.equal(await b.appendUpload('lib/app', id, Readable.from([second]), first.length), first.length + second.length);
        const whole = Buffer.concat([first, second]);
        assert.equal(await a.finishUpload('lib/app', id, sha256(whole)), whole.length);
        assert.equal(sha256(await readAll(await b.openBlob(sha256(whole)))), sha256(whole));
        await a.deleteBlob('lib/app', sha256(whole));
        assert.deepEqual(await sns.residue(), []);
      });

      test('a wrong digest, at finish or monolithic, is refused with nothing left behind', async () => {
        const body = randomBytes(9 * MiB);
        const wrong = sha256(Buffer.from('something else'));
        const id = await a.startUpload('lib/app');
        await a.appendUpload('lib/app', id, Readable.from([body]));
        await assert.rejects(b.finishUpload('lib/app', id, wrong), DigestMismatch);
        const id2 = await b.startUpload('lib/app');
        await b.appendUpload('lib/app', id2, Readable.from(chunks(body, [MiB])));
        await assert.rejects(b.finishUpload('lib/app', id2, wrong), DigestMismatch);
        await assert.rejects(a.writeBlob('lib/app', Readable.from(chunks(body, [MiB])), wrong), DigestMismatch);
        await assert.rejects(a.writeBlob('lib/app', body, wrong), DigestMismatch);
        assert.equal(await a.blobSize('lib/app', wrong), undefined);
        assert.deepEqual(await sns.residue(), []);
      });

      test('abandoned uploads are purged: stale rows and staging no row records', async () => {
        const c = await sns.storage({ uploadMaxAgeMs: 1000 });
        try {
          const id = await c.startUpload('lib/app');
          await c.appendUpload('lib/app', id, Readable.from([randomBytes(8 * MiB + 7)]));
          const orphan = randomUUID();
          await stage(c.store, orphan, [randomBytes(100)]);
          await new Promise((r) => setTimeout(r, 1100));
          // (Its own timer may purge first: the count is not the point, the effect is.)
          await c.purgeStaleUploads();
          await assert.rejects(c.uploadOffset('lib/app', id), UploadUnknown);
          assert.deepEqual(await sns.residue(), []);
        } finally {
          await c.close();
        }
      });
    });
  });
}
