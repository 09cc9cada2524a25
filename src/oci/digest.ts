// Digests (image-spec descriptor.md#digests): their grammar, and computing and verifying
// them over buffers, files and streams.
//
// Room: oci, the model the other rooms share. Imports nothing of nixreg's; knows neither HTTP, SQLite nor Nix.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';

/** Digest algorithms we can verify, with the exact encoded form each must have. */
export const DIGEST_ALGORITHMS = {
  sha256: /^[a-f0-9]{64}$/,
  sha512: /^[a-f0-9]{128}$/,
} as const;
export type Algorithm = keyof typeof DIGEST_ALGORITHMS;
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** A digest we can verify, split; null for anything else (unknown algorithm included). */
export function parseDigest(s: string): { algorithm: Algorithm; hex: string } | null {
  if (!DIGEST_RE.test(s)) return null;
  const i = s.indexOf(':');
  const algorithm = s.slice(0, i);
  const hex = s.slice(i + 1);
  if (!(algorithm in DIGEST_ALGORITHMS)) return null;
  if (!DIGEST_ALGORITHMS[algorithm as Algorithm].test(hex)) return null;
  return { algorithm: algorithm as Algorithm, hex };
}

export function isDigest(s: string): boolean {
  return parseDigest(s) !== null;
}

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
  private done: string | undefined;
  /** The digest of everything that passed; asking again gives the same answer. */
  digest(): string { return (this.done ??= `${this.alg}:${this.hash.digest('hex')}`); }
}
