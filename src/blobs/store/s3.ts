// The blob store on S3 (--storage s3://BUCKET[/PREFIX]): blobs are objects named by
// digest, <prefix>blobs/<alg>/<hex>; unfinished uploads live under <prefix>uploads/<id>/
// (s3-staging.ts). The client, its settings and the mapping of its failures are here.
//
// Credentials, region and endpoint are the AWS SDK's own (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, the shared
// config files); with an endpoint set, addressing is path-style (no S3 but AWS's own has
// DNS-style bucket names). Checksums only where an operation requires them: the SDK's
// default sends streamed bodies as aws-chunked with a trailing checksum, which radosgw
// and others refuse. Every call has a deadline that throws (the SDK's requestTimeout only
// warns without throwOnRequestTimeout): an S3 that is down or stopped answers requests
// with StorageUnavailable (503) within the bound instead of holding them forever.
//
// A body streams as a multipart upload in parts of PART_BYTES held in memory one at a
// time, so a write costs at most a part's memory whatever its size; bodies smaller than
// a part go in one PutObject. Nothing appears under a blob's name before publish.
//
// Small blobs (configs, small layers: what every node pulling an image asks for) are kept
// in memory once read, bounded in all: an S3 GetObject costs a few ms of CPU in the SDK
// alone (signing, middleware), ten times serving the bytes, and a blob never changes
// under its digest. Nothing is served from it that the index does not know: callers ask
// the index first, so a blob deleted anywhere is unknown before the cache is read.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CopyObjectCommand, CreateMultipartUploadCommand,
  DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command,
  PutObjectCommand, S3Client, UploadPartCommand, UploadPartCopyCommand, type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { LRUCache } from 'lru-cache';
import { BlobMissing, BlobTooLarge, StorageUnavailable } from '../errors.js';
import { digestParts, type BlobStore, type ByteRange, type ListedBlob, type PendingBlob, type UploadStaging } from './blob-store.js';
import type { S3Location } from './s3-location.js';
import { S3Staging } from './s3-staging.js';

/** Parts of multipart uploads: S3 wants 5 MiB at least (but the last); 8 MiB is what the SDK's own Upload uses. */
export const PART_BYTES = 8 * 1024 * 1024;
/** CopyObject copies up to 5 GiB; beyond, a multipart copy in parts of this. */
const COPY_MAX = 5 * 1024 ** 3;
const COPY_PART = 1024 ** 3;
/** S3 allows 10,000 parts per multipart upload. */
export const MAX_PARTS = 10_000;
/** Blobs up to this size are kept in memory once read (SMALL_CACHE_BYTES in all). */
export const SMALL_BLOB_BYTES = 1024 * 1024;
const SMALL_CACHE_BYTES = 64 * 1024 * 1024;

export interface S3Options extends S3Location {
  /** A call's deadline, to its first response byte and between bytes (ms). */
  timeoutMs: number;
  /** Settings over the SDK's own (tests: an endpoint and keys). */
  client?: S3ClientConfig | undefined;
  /** Parts a multipart upload may have (default MAX_PARTS; tests set fewer to reach the limit fast). */
  maxParts?: number | undefined;
}

const TRANSIENT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);
const TRANSIENT_NAMES = new Set(['TimeoutError', 'SlowDown', 'ServiceUnavailable', 'InternalError', 'RequestTimeout', 'ThrottlingException']);

/** A GetObject body: a stream with the SDK's helpers. */
type Body = Readable & { transformToByteArray(): Promise<Uint8Array> };
type SdkError = Error & { code?: string; $metadata?: { httpStatusCode?: number } };
export const statusOf = (e: unknown) => (e as SdkError).$metadata?.httpStatusCode;
export const notFound = (e: unknown) => ['NotFound', 'NoSuchKey', 'NoSuchUpload'].includes((e as SdkError).name) || statusOf(e) === 404;

export class S3Store implements BlobStore {
  readonly remote = true;
  readonly client: S3Client;
  readonly staging: UploadStaging;
  readonly bucket: string;
  readonly prefix: string;
  /** Parts a multipart upload may have: a blob is at most maxParts × PART_BYTES. */
  readonly maxParts: number;
  private readonly small = new LRUCache<string, Buffer>({ maxSize: SMALL_CACHE_BYTES, sizeCalculation: (b) => b.length || 1 });

  constructor(opts: S3Options) {
    this.bucket = opts.bucket;
    this.prefix = opts.prefix;
    this.maxParts = opts.maxParts ?? MAX_PARTS;
    // The SDK's own switch for its one warning that Node 20 will not be supported by its
    // releases after January 2027 (we pin an earlier one): said at every start, it told an
    // operator nothing to do. Other warnings are untouched; an operator's setting wins.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const endpoint = opts.client?.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
    this.client = new S3Client({
      forcePathStyle: endpoint !== undefined,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 2,
      requestHandler: {
        connectionTimeout: opts.timeoutMs, requestTimeout: opts.timeoutMs, socketTimeout: opts.timeoutMs, throwOnRequestTimeout: true,
      },
      ...opts.client,
    });
    this.staging = new S3Staging(this);
  }

  get description() { return `s3://${this.bucket}/${this.prefix}`; }

  blobKey(digest: string): string {
    const { alg, hex } = digestParts(digest);
    return `${this.prefix}blobs/${alg}/${hex}`;
  }

  /** Sends a command; a failure that means S3 is unreachable or overwhelmed becomes StorageUnavailable. */
  async send<T = unknown>(command: object): Promise<T> {
    try {
      return await this.client.send(command as never) as T;
    } catch (e) {
      throw this.unavailable(e);
    }
  }

  unavailable(e: unknown): unknown {
    const err = e as SdkError;
    if (typeof err !== 'object' || err === null) return e;
    const status = statusOf(err) ?? 0;
    if (TRANSIENT_NAMES.has(err.name) || TRANSIENT_CODES.has(err.code ?? '') || status >= 500) {
      return new StorageUnavailable(this.description, `${err.name}: ${err.message.slice(0, 200)}`);
    }
    return e;
  }

  /** CopySource: bucket and key, each segment percent-encoded. */
  copySource(key: string): string {
    return `${this.bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
  }

  async write(digest: string, source: Readable | Buffer): Promise<PendingBlob> {
    const Key = this.blobKey(digest);
    if (Buffer.isBuffer(source)) return this.putLater(Key, source);
    return this.multipart(Key, source);
  }

  writeFile(digest: string, file: string): Promise<PendingBlob> {
    return this.write(digest, createReadStream(file));
  }

  /** One PutObject at publish: a body smaller than a part, held until then. */
  private putLater(Key: string, body: Buffer): PendingBlob {
    return {
      size: body.length,
      publish: async () => { await this.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: body, ContentLength: body.length })); },
      discard: async () => {},
    };
  }

  /** Streams `source` as a multipart upload onto `Key`, completed at publish, aborted at discard. */
  private async multipart(Key: string, source: Readable): Promise<PendingBlob> {
    const Bucket = this.bucket;
    let UploadId: string | undefined;
    const parts: { ETag: string; PartNumber: number }[] = [];
    const buf = new PartBuffer();
    let size = 0;
    const upload = async (part: Buffer) => {
      if (parts.length >= this.maxParts) throw new BlobTooLarge(this.maxParts * PART_BYTES, size);
      UploadId ??= (await this.send<{ UploadId?: string }>(new CreateMultipartUploadCommand({ Bucket, Key }))).UploadId;
      const PartNumber = parts.length + 1;
      const r = await this.send<{ ETag?: string }>(new UploadPartCommand({ Bucket, Key, UploadId, PartNumber, Body: part, ContentLength: part.length }));
      parts.push({ ETag: r.ETag!, PartNumber });
      size += part.length;
    };
    const abort = async () => {
      if (UploadId) await this.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId })).catch(() => {});
    };
    try {
      await buf.fill(source, upload);
      const rest = Buffer.from(buf.rest());
      if (!UploadId) return this.putLater(Key, rest);
      if (rest.length) await upload(rest);
    } catch (e) {
      await abort();
      throw e;
    }
    let done = false;
    return {
      size,
      publish: async () => {
        await this.send(new CompleteMultipartUploadCommand({ Bucket, Key, UploadId, MultipartUpload: { Parts: parts } }));
        done = true;
      },
      discard: async () => { if (!done) await abort(); },
    };
  }

  /** Copies object `from` (of `size` bytes) to `to`, server-side. */
  async copy(from: string, to: string, size: number): Promise<void> {
    const Bucket = this.bucket;
    if (size <= COPY_MAX) {
      await this.send(new CopyObjectCommand({ Bucket, Key: to, CopySource: this.copySource(from) }));
      return;
    }
    const { UploadId } = await this.send<{ UploadId?: string }>(new CreateMultipartUploadCommand({ Bucket, Key: to }));
    try {
      const Parts: { ETag: string; PartNumber: number }[] = [];
      for (let start = 0; start < size; start += COPY_PART) {
        const PartNumber = Parts.length + 1;
        const r = await this.send<{ CopyPartResult?: { ETag?: string } }>(new UploadPartCopyCommand({ Bucket, Key: to, UploadId, PartNumber,
          CopySource: this.copySource(from), CopySourceRange: `bytes=${start}-${Math.min(size, start + COPY_PART) - 1}` }));
        Parts.push({ ETag: r.CopyPartResult!.ETag!, PartNumber });
      }
      await this.send(new CompleteMultipartUploadCommand({ Bucket, Key: to, UploadId, MultipartUpload: { Parts } }));
    } catch (e) {
      await this.send(new AbortMultipartUploadCommand({ Bucket, Key: to, UploadId })).catch(() => {});
      throw e;
    }
  }

  async read(digest: string): Promise<Buffer> {
    const hit = this.small.get(digest);
    if (hit) return hit;
    const { body, length } = await this.getObject(this.blobKey(digest), digest);
    return this.keep(digest, body, length);
  }

  async open(digest: string, range?: ByteRange): Promise<Readable> {
    const hit = this.small.get(digest);
    if (hit) return Readable.from([range ? hit.subarray(range.start, range.end + 1) : hit]);
    const { body, length } = await this.getObject(this.blobKey(digest), digest, range);
    if (range || length === undefined || length > SMALL_BLOB_BYTES) return body;
    return Readable.from([await this.keep(digest, body, length)]);
  }

  /** The whole body in memory, kept when small. */
  private async keep(digest: string, body: Body, length: number | undefined): Promise<Buffer> {
    let bytes: Buffer;
    try { bytes = Buffer.from(await body.transformToByteArray()); } catch (e) { throw this.unavailable(e); }
    if (length !== undefined && bytes.length === length && length <= SMALL_BLOB_BYTES) this.small.set(digest, bytes);
    return bytes;
  }

  /** GetObject's body and its length; BlobMissing for a missing object. */
  async getObject(Key: string, digest: string, range?: ByteRange): Promise<{ body: Body; length: number | undefined }> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}) }));
      return { body: r.Body as unknown as Body, length: r.ContentLength };
    } catch (e) {
      if (notFound(e)) throw new BlobMissing(digest);
      throw this.unavailable(e);
    }
  }

  async stat(digest: string): Promise<number | undefined> {
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.blobKey(digest) }));
      return r.ContentLength;
    } catch (e) {
      if (notFound(e)) return undefined;
      throw this.unavailable(e);
    }
  }

  async delete(digest: string): Promise<void> {
    this.small.delete(digest);
    await this.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.blobKey(digest) }));
  }

  async list(after: string, limit: number): Promise<ListedBlob[]> {
    const Prefix = `${this.prefix}blobs/`;
    const r = await this.send<{ Contents?: { Key?: string; Size?: number; LastModified?: Date }[] }>(new ListObjectsV2Command({
      Bucket: this.bucket, Prefix, MaxKeys: limit, ...(after ? { StartAfter: this.blobKey(after) } : {}),
    }));
    const out: ListedBlob[] = [];
    for (const o of r.Contents ?? []) {
      const m = /^(sha256|sha512)\/([a-f0-9]+)$/.exec(o.Key!.slice(Prefix.length));
      if (m) out.push({ digest: `${m[1]}:${m[2]}`, size: o.Size ?? 0, modifiedMs: o.LastModified?.getTime() ?? 0 });
    }
    return out;
  }

  presign(digest: string, seconds: number): Promise<string> {
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: this.blobKey(digest) }), { expiresIn: seconds });
  }

  async ping(): Promise<void> {
    await this.send(new HeadBucketCommand({ Bucket: this.bucket }));
  }

  close(): void { this.client.destroy(); }
}

/**
 * Cuts a stream into parts of PART_BYTES: one buffer, filled, handed to `full` (awaited:
 * the stream is not read meanwhile, so memory stays one part), then reused. What is left
 * when the stream ends, or fails, is `rest()`.
 */
export class PartBuffer {
  private buf: Buffer;
  private used = 0;

  constructor(initial?: Buffer) {
    this.buf = Buffer.allocUnsafe(PART_BYTES);
    if (initial) this.used = initial.copy(this.buf, 0, 0, PART_BYTES);
  }

  async fill(source: AsyncIterable<Buffer>, full: (part: Buffer) => Promise<void>): Promise<void> {
    if (this.used === PART_BYTES) await this.flush(full);
    for await (const chunk of source) {
      let off = 0;
      while (off < chunk.length) {
        const n = chunk.copy(this.buf, this.used, off);
        this.used += n;
        off += n;
        if (this.used === PART_BYTES) await this.flush(full);
      }
    }
  }

  private async flush(full: (part: Buffer) => Promise<void>): Promise<void> {
    await full(this.buf);
    this.used = 0;
  }

  rest(): Buffer { return this.buf.subarray(0, this.used); }
}
