// A blob larger than S3 can hold as one object (10,000 multipart parts) is refused with a
// clear 413 BLOB_UPLOAD_INVALID, not a 500 from S3, both by upload staging (chunks) and by
// a streamed write; what reached S3 before stays recorded, and a refused write leaves no
// multipart upload behind. Against a real radosgw, with the store told to allow 2 parts
// (maxParts) so that the limit is 16 MiB instead of 78 GiB.
import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { Readable } from 'node:stream';
import { ListMultipartUploadsCommand, type S3Client } from '@aws-sdk/client-s3';
import { BlobTooLarge } from '../../src/blobs/errors.js';
import type { Staged } from '../../src/blobs/store/blob-store.js';
import { PART_BYTES, S3Store } from '../../src/blobs/store/s3.js';
import { registryErrorOf } from '../../src/registry/errors.js';
import { startRgw, type Rgw } from '../helpers/rgw.js';

const Bucket = 'too-large';
let rgw: Rgw;
let s3: S3Client;
let store: S3Store;
before(async () => {
  rgw = await startRgw();
  await rgw.createBucket(Bucket);
  s3 = rgw.client();
  const options = {
    bucket: Bucket, prefix: 'p/', timeoutMs: 10_000, maxParts: 2,
    client: { endpoint: rgw.endpoint, region: rgw.region, credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey } },
  };
  store = new S3Store(options);
});
after(async () => {
  store?.close();
  s3?.destroy();
  await rgw?.stop();
});

/** `bytes` bytes in chunks of 1 MiB, as a request body arrives. */
function body(bytes: number): Readable {
  const chunk = Buffer.alloc(1024 * 1024, 7);
  return Readable.from((function* () {
    for (let left = bytes; left > 0; left -= chunk.length) yield left >= chunk.length ? chunk : chunk.subarray(0, left);
  })());
}

function assertTooLarge(err: unknown, limit: number): true {
  assert.ok(err instanceof BlobTooLarge, `expected BlobTooLarge, got ${String((err as Error)?.stack ?? err)}`);
  assert.equal(err.limit, limit);
  const answer = registryErrorOf(err);
  assert.equal(answer?.status, 413);
  assert.equal(answer?.code, 'BLOB_UPLOAD_INVALID');
  return true;
}

test('upload staging refuses the chunk that would need more parts than S3 allows, keeping what was stored', async () => {
  const id = randomUUID();
  let staged: Staged = store.staging.create(id);
  // Within the limit: one whole part and a tail.
  staged = await store.staging.append(id, staged, body(PART_BYTES + 1000), (s) => { staged = s; });
  assert.equal(staged.offset, PART_BYTES + 1000);
  // Past it: a second whole part would leave no part for the tail.
  let recorded: Staged = staged;
  await assert.rejects(store.staging.append(id, staged, body(PART_BYTES), (s) => { recorded = s; }),
    (e) => assertTooLarge(e, 2 * PART_BYTES - 1));
  assert.ok(recorded.offset >= staged.offset, 'nothing stored before the refusal is lost');
  // Still refused when the client tries again from where the upload stands.
  await assert.rejects(store.staging.append(id, recorded, body(1), () => {}), (e) => assertTooLarge(e, 2 * PART_BYTES - 1));
  await store.staging.remove(id, recorded);
});

test('a streamed write past the most parts S3 allows is refused and leaves no multipart upload', async () => {
  const digest = `sha256:${createHash('sha256').update('not checked by the store').digest('hex')}`;
  await assert.rejects(store.write(digest, body(2 * PART_BYTES + 1)), (e) => assertTooLarge(e, 2 * PART_BYTES));
  const u = await s3.send(new ListMultipartUploadsCommand({ Bucket, Prefix: 'p/' }));
  assert.deepEqual(u.Uploads ?? [], []);
  // Exactly the limit is a blob S3 takes.
  const pending = await store.write(digest, body(2 * PART_BYTES));
  await pending.discard();
});
