// The blob store contract (store-contract.ts) on the S3 store, against a real radosgw
// (helpers/rgw.ts): one cluster for the file, a fresh prefix per namespace.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { S3Store } from '../../src/blobs/store/s3.js';
import { Storage } from '../../src/blobs/storage.js';
import { startRgw, type Rgw } from '../helpers/rgw.js';
import { blobStoreContract, type Backend } from './store-contract.js';

const Bucket = 'contract';
let rgw: Rgw;
let s3: S3Client;
const dirs: string[] = [];
before(async () => {
  rgw = await startRgw();
  await rgw.createBucket(Bucket);
  s3 = rgw.client();
});
after(async () => {
  s3?.destroy();
  await rgw?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function residue(prefix: string): Promise<string[]> {
  const out: string[] = [];
  for (let token: string | undefined, more = true; more;) {
    const r = await s3.send(new ListObjectsV2Command({ Bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of r.Contents ?? []) {
      const key = o.Key!.slice(prefix.length);
      const m = /^blobs\/(sha\d+)\/([a-f0-9]+)$/.exec(key);
      out.push(m ? `blob ${m[1]}:${m[2]}` : `object ${key}`);
    }
    token = r.NextContinuationToken;
    more = !!r.IsTruncated;
  }
  const u = await s3.send(new ListMultipartUploadsCommand({ Bucket, Prefix: prefix }));
  for (const up of u.Uploads ?? []) out.push(`multipart ${up.Key!.slice(prefix.length)}`);
  return out.sort();
}

const s3Backend = (): Backend => ({
  async namespace() {
    const prefix = `ns-${randomUUID().slice(0, 8)}/`;
    const data = mkdtempSync(join(tmpdir(), 'nixreg-store-s3-'));
    dirs.push(data);
    const loc = {
      bucket: Bucket, prefix, timeoutMs: 10_000,
      client: { endpoint: rgw.endpoint, region: rgw.region, credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey } },
    };
    return {
      store: () => new S3Store(loc),
      storage: (o = {}) => Storage.open(data, { gcIntervalMs: 0, s3: loc, ...o }),
      residue: () => residue(prefix),
    };
  },
});

blobStoreContract('S3 (radosgw)', s3Backend);
