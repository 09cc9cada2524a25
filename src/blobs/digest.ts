import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';

export type Algorithm = 'sha256' | 'sha512';

export function algorithmOf(digest: string): Algorithm {
  return digest.startsWith('sha512:') ? 'sha512' : 'sha256';
}

export function digestOf(data: Buffer | string, alg: Algorithm = 'sha256'): string {
  return `${alg}:${createHash(alg).update(data).digest('hex')}`;
}

export async function digestFile(path: string, alg: Algorithm = 'sha256'): Promise<string> {
  const h = createHash(alg);
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return `${alg}:${h.digest('hex')}`;
}

/** A pass-through that hashes and counts what flows through it. */
export class Digester extends Transform {
  bytes = 0;
  constructor(readonly hash: Hash = createHash('sha256'), private readonly alg: Algorithm = 'sha256') { super(); }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
  digest(): string { return `${this.alg}:${this.hash.digest('hex')}`; }
}
