// Unfinished uploads on S3, continued by any process that reads the upload's row.
//
// OCI chunks are any size; S3's parts are 5 MiB to 5 GiB but the last, at most 10,000.
// So an upload is one multipart upload onto <prefix>uploads/<id>/data, fed in parts of
// PART_BYTES (s3.ts), plus a tail: the bytes after the last whole part, as one small object
// <prefix>uploads/<id>/tail-<end offset>. A chunk reads the tail back into the part it
// starts (from memory when this process wrote it: tails are cached), so many small
// PATCHes make whole parts, and a huge one streams part by part in bounded memory. Every
// part is exactly PART_BYTES, so the row records only how many there are (their ETags are
// listed from S3 when the upload is composed: the row stays small however large the
// blob). Every part and the new tail are recorded in the row (Staged) once stored, so
// a chunk cut short keeps what reached S3, and its end lands where the row says. A tail is
// never overwritten: each has its end offset in its name, so the row always names one
// that was written in full.
//
// Finishing: the tail is copied in as the last part (UploadPartCopy, server-side) and the
// multipart upload completed onto .../data ("composed"); the blob is a server-side copy
// of it under its digest (radosgw shares the data; a multipart copy beyond 5 GiB). An
// upload of less than a part has only its tail, copied directly. A multipart upload's
// name is fixed when it starts, before any digest is known: hence the copy, as in
// Distribution. Removing an upload aborts its multipart upload and deletes its objects.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectsCommand,
  ListMultipartUploadsCommand, ListObjectsV2Command, ListPartsCommand, PutObjectCommand, UploadPartCommand, UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { LRUCache } from 'lru-cache';
import { checkUploadId, type PendingBlob, type Staged, type UploadStaging } from './blob-store.js';
import { BlobTooLarge } from '../errors.js';
import { PART_BYTES, PartBuffer, notFound, type S3Store } from './s3.js';

interface S3Staged extends Staged {
  /** The multipart upload onto .../data, once its first part was needed. */
  multipart?: string | undefined;
  /** Whole parts uploaded, each PART_BYTES (parts 1…n; a part beyond n is ignored). */
  parts: number;
  /** Bytes in the tail object (after the parts). */
  tail: number;
  /** Completed onto .../data (by a finish): takes no more chunks. */
  composed?: boolean | undefined;
}

const fresh = (): S3Staged => ({ offset: 0, parts: 0, tail: 0 });
const clone = (s: S3Staged): S3Staged => ({ ...s });

export class S3Staging implements UploadStaging {
  /** Tails this process wrote, by upload: a chunk then need not read its tail back. */
  private readonly tails = new LRUCache<string, { offset: number; bytes: Buffer }>({
    maxSize: 64 * 1024 * 1024, sizeCalculation: (t) => t.bytes.length || 1,
  });

  constructor(private readonly s3: S3Store) {}

  private dir(id: string) { return `${this.s3.prefix}uploads/${checkUploadId(id)}/`; }
  private dataKey(id: string) { return `${this.dir(id)}data`; }
  private tailKey(id: string, end: number) { return `${this.dir(id)}tail-${end}`; }

  create(): Staged { return fresh(); }

  async resume(_id: string, recorded: Staged | undefined): Promise<Staged | undefined> {
    return recorded ?? fresh();
  }

  private async tailBytes(id: string, s: S3Staged): Promise<Buffer | undefined> {
    if (s.tail === 0) return undefined;
    const cached = this.tails.get(id);
    if (cached && cached.offset === s.offset && cached.bytes.length === s.tail) return cached.bytes;
    const { body } = await this.s3.getObject(this.tailKey(id, s.offset), `upload ${id}`);
    try { return Buffer.from(await body.transformToByteArray()); } catch (e) { throw this.s3.unavailable(e); }
  }

  async append(id: string, staged: Staged, source: Readable, record: (s: Staged) => void | Promise<void>): Promise<Staged> {
    const s = clone(staged as S3Staged);
    if (s.composed) throw new Error(`upload ${id} is being finished`);
    const { bucket: Bucket } = this.s3;
    const Key = this.dataKey(id);
    const buf = new PartBuffer(await this.tailBytes(id, s));
    const base = () => s.parts * PART_BYTES;
    const part = async (bytes: Buffer) => {
      if (!s.multipart) {
        s.multipart = (await this.s3.send<{ UploadId?: string }>(new CreateMultipartUploadCommand({ Bucket, Key }))).UploadId;
        await record(clone(s));
      }
      const n = s.parts + 1;
      // The tail is copied in as the last part at the finish: whole parts may be all but one.
      if (n > this.s3.maxParts - 1) throw new BlobTooLarge(this.s3.maxParts * PART_BYTES - 1, s.offset);
      const r = await this.s3.send<{ ETag?: string }>(new UploadPartCommand({
        Bucket, Key, UploadId: s.multipart, PartNumber: n, Body: bytes, ContentLength: bytes.length,
      }));
      if (!r.ETag) throw new Error(`S3 gave part ${n} of upload ${id} no ETag`);
      s.parts = n;
      s.tail = 0;
      s.offset = base();
      this.tails.delete(id);
      await record(clone(s));
    };
    const saveTail = async () => {
      const rest = buf.rest();
      const end = base() + rest.length;
      if (end === s.offset) return;
      await this.s3.send(new PutObjectCommand({ Bucket, Key: this.tailKey(id, end), Body: rest, ContentLength: rest.length }));
      s.tail = rest.length;
      s.offset = end;
      this.tails.set(id, { offset: end, bytes: Buffer.from(rest) });
      await record(clone(s));
    };
    try {
      await buf.fill(source, part);
    } catch (err) {
      // Keep what arrived, if S3 takes it.
      await saveTail().catch(() => {});
      throw err;
    }
    await saveTail();
    return clone(s);
  }

  /** Completes the multipart upload onto .../data, the tail copied in as its last part. */
  private async compose(id: string, s: S3Staged, record: (s: Staged) => void | Promise<void>): Promise<void> {
    if (s.composed) return;
    const { bucket: Bucket } = this.s3;
    const Key = this.dataKey(id);
    const Parts = await this.listParts(id, s);
    if (s.tail > 0) {
      const PartNumber = Parts.length + 1;
      const r = await this.s3.send<{ CopyPartResult?: { ETag?: string } }>(new UploadPartCopyCommand({
        Bucket, Key, UploadId: s.multipart, PartNumber, CopySource: this.s3.copySource(this.tailKey(id, s.offset)),
      }));
      Parts.push({ ETag: r.CopyPartResult!.ETag!, PartNumber });
    }
    // radosgw 16 answers an empty ETag here: nothing relies on it.
    await this.s3.send(new CompleteMultipartUploadCommand({ Bucket, Key, UploadId: s.multipart, MultipartUpload: { Parts } }));
    s.composed = true;
    await record(clone(s));
  }

  /** The ETags of parts 1…s.parts, from S3 (a page of 1,000 at a time). */
  private async listParts(id: string, s: S3Staged): Promise<{ ETag: string; PartNumber: number }[]> {
    const { bucket: Bucket } = this.s3;
    const Parts: { ETag: string; PartNumber: number }[] = [];
    for (let marker: string | undefined; Parts.length < s.parts;) {
      const r = await this.s3.send<{ Parts?: { PartNumber?: number; ETag?: string }[]; IsTruncated?: boolean; NextPartNumberMarker?: string }>(
        new ListPartsCommand({ Bucket, Key: this.dataKey(id), UploadId: s.multipart, ...(marker ? { PartNumberMarker: marker } : {}) }));
      for (const p of r.Parts ?? []) if (p.PartNumber! <= s.parts) Parts.push({ ETag: p.ETag!, PartNumber: p.PartNumber! });
      if (!r.IsTruncated) break;
      marker = r.NextPartNumberMarker;
    }
    if (Parts.length !== s.parts || Parts.some((p, i) => p.PartNumber !== i + 1)) {
      throw new Error(`upload ${id}: S3 lists ${Parts.length} of its ${s.parts} parts`);
    }
    return Parts;
  }

  async read(id: string, staged: Staged, record: (s: Staged) => void | Promise<void>): Promise<Readable> {
    const s = staged as S3Staged;
    if (s.offset === 0) return Readable.from([]);
    if (s.parts === 0) return (await this.s3.getObject(this.tailKey(id, s.offset), `upload ${id}`)).body;
    await this.compose(id, s, record);
    return (await this.s3.getObject(this.dataKey(id), `upload ${id}`)).body;
  }

  async seal(id: string, staged: Staged, digest: string, record: (s: Staged) => void | Promise<void>): Promise<PendingBlob> {
    const s = staged as S3Staged;
    const to = this.s3.blobKey(digest);
    const size = s.offset;
    let publish: () => Promise<void>;
    if (size === 0) {
      publish = async () => { await this.s3.send(new PutObjectCommand({ Bucket: this.s3.bucket, Key: to, Body: Buffer.alloc(0), ContentLength: 0 })); };
    } else if (s.parts === 0) {
      publish = () => this.s3.copy(this.tailKey(id, s.offset), to, size);
    } else {
      await this.compose(id, s, record);
      publish = () => this.s3.copy(this.dataKey(id), to, size);
    }
    return { size, publish, discard: async () => {} };
  }

  async remove(id: string, staged: Staged | undefined): Promise<void> {
    const { bucket: Bucket } = this.s3;
    const s = staged as S3Staged | undefined;
    this.tails.delete(id);
    const abort = (Key: string, UploadId: string) =>
      this.s3.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId })).catch((e) => { if (!notFound(e)) throw e; });
    if (s?.multipart && !s.composed) await abort(this.dataKey(id), s.multipart);
    if (!s) {
      // An orphan: whatever multipart uploads it began.
      const r = await this.s3.send<{ Uploads?: { Key?: string; UploadId?: string }[] }>(
        new ListMultipartUploadsCommand({ Bucket, Prefix: this.dir(id) }));
      for (const u of r.Uploads ?? []) await abort(u.Key!, u.UploadId!);
    }
    const listed = await this.s3.send<{ Contents?: { Key?: string }[] }>(new ListObjectsV2Command({ Bucket, Prefix: this.dir(id), MaxKeys: 1000 }));
    const Objects = (listed.Contents ?? []).map((o) => ({ Key: o.Key! }));
    if (Objects.length) await this.s3.send(new DeleteObjectsCommand({ Bucket, Delete: { Objects, Quiet: true } }));
  }

  /**
   * Upload ids with objects or multipart uploads, after `after`. Two listings, each
   * sorted: what either returns is complete up to the last id of a full page.
   */
  async list(after: string, limit: number): Promise<string[]> {
    const { bucket: Bucket } = this.s3;
    const Prefix = `${this.s3.prefix}uploads/`;
    // '~' sorts after every character of the names under an upload's directory.
    const marker = after ? `${Prefix}${after}/~` : undefined;
    const objects = await this.s3.send<{ CommonPrefixes?: { Prefix?: string }[] }>(new ListObjectsV2Command({
      Bucket, Prefix, Delimiter: '/', MaxKeys: limit, ...(marker ? { StartAfter: marker } : {}),
    }));
    const uploads = await this.s3.send<{ Uploads?: { Key?: string }[] }>(new ListMultipartUploadsCommand({
      Bucket, Prefix, MaxUploads: limit, ...(marker ? { KeyMarker: marker } : {}),
    }));
    const idOf = (key: string) => key.slice(Prefix.length).split('/')[0]!;
    const a = (objects.CommonPrefixes ?? []).map((p) => idOf(p.Prefix!));
    const b = (uploads.Uploads ?? []).map((u) => idOf(u.Key!));
    let upTo = '\uffff';
    if (a.length >= limit) upTo = a[a.length - 1]!;
    if (b.length >= limit && b[b.length - 1]! < upTo) upTo = b[b.length - 1]!;
    return [...new Set([...a, ...b])].filter((id) => id > after && id <= upTo).sort();
  }
}
