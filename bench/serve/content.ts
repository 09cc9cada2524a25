// Deterministic blob content for pushes: the same bytes can be produced twice (once to
// hash, once to send) without holding the whole blob in memory or on disk.
import { createHash, randomBytes } from 'node:crypto';

const CHUNK = 1024 * 1024;

export interface BlobSpec {
  size: number;
  digest: string;
  /** Yields the blob's bytes in fresh 1 MiB buffers (a socket may still hold the last one). */
  chunks(): Generator<Buffer>;
}

/** A pseudo-random blob of `size` bytes: one random MiB, stamped with a counter per MiB. */
export function syntheticBlob(size: number): BlobSpec {
  const base = randomBytes(CHUNK);
  function* chunks(): Generator<Buffer> {
    for (let off = 0, i = 0; off < size; off += CHUNK, i++) {
      const n = Math.min(CHUNK, size - off);
      const b = Buffer.allocUnsafe(n);
      base.copy(b, 0, 0, n);
      if (n >= 8) b.writeBigUInt64BE(BigInt(i), 0);
      yield b;
    }
  }
  const h = createHash('sha256');
  for (const c of chunks()) h.update(c);
  return { size, digest: `sha256:${h.digest('hex')}`, chunks };
}

/** A small blob held in memory. */
export function bufferBlob(body: Buffer): BlobSpec {
  return {
    size: body.length,
    digest: `sha256:${createHash('sha256').update(body).digest('hex')}`,
    *chunks() { yield body; },
  };
}

export interface Image { repo: string; tag: string; mediaType: string; blobs: BlobSpec[]; manifest: Buffer }

/** A small image: a config and 3 layers (1 KiB, 64 KiB, 2 MiB), Docker schema 2 manifest. */
export function syntheticImage(repo: string, tag: string): Image {
  const layers = [1024, 64 * 1024, 2 * 1024 * 1024].map((n) => syntheticBlob(n));
  const config = bufferBlob(Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux',
    config: { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
  })));
  const mediaType = 'application/vnd.docker.distribution.manifest.v2+json';
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType,
    config: { mediaType: 'application/vnd.docker.container.image.v1+json', size: config.size, digest: config.digest },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', size: l.size, digest: l.digest })),
  }));
  return { repo, tag, mediaType, blobs: [config, ...layers], manifest };
}
