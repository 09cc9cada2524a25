// The one place that knows where things live on disk. Every path is built from values
// that the grammar (src/oci/reference.ts, src/oci/digest.ts) or this module has already validated, so
// nothing from a URL is ever joined into a path unchecked.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { join } from 'node:path';

const HEX = /^[a-f0-9]+$/;
const UPLOAD_ID = /^[0-9a-f-]{36}$/;

export class Layout {
  constructor(readonly root: string) {}

  get dbPath() { return join(this.root, 'index.db'); }
  get blobsDir() { return join(this.root, 'blobs'); }
  /** Temporary files of blob writes; on the same filesystem as blobs/ so rename is atomic. */
  get tmpDir() { return join(this.root, 'tmp'); }
  get uploadsDir() { return join(this.root, 'uploads'); }
  /** GC roots that keep Nix closures alive while a build reads them. */
  get gcrootsDir() { return join(this.root, 'gcroots'); }
  get logsDir() { return join(this.root, 'logs'); }
  /** The pid of the `nixreg serve` using this directory, so that `nixreg gc` can tell. */
  get pidPath() { return join(this.root, 'nixreg.pid'); }
  /** The key that signs bearer tokens (mode 0600; src/registry/auth/tokens.ts). */
  get tokenKeyPath() { return join(this.root, 'token-key.pem'); }

  /** `<data>/blobs/<alg>/<first 2 hex>/<hex>` */
  blobPath(digest: string): string {
    const i = digest.indexOf(':');
    const alg = digest.slice(0, i);
    const hex = digest.slice(i + 1);
    if ((alg !== 'sha256' && alg !== 'sha512') || !HEX.test(hex) || hex.length < 64) {
      throw new Error(`refusing to build a path from digest ${JSON.stringify(digest)}`);
    }
    return join(this.blobsDir, alg, hex.slice(0, 2), hex);
  }

  uploadPath(id: string): string {
    if (!UPLOAD_ID.test(id)) throw new Error(`refusing to build a path from upload id ${JSON.stringify(id)}`);
    return join(this.uploadsDir, id);
  }

  logPath(id: string): string {
    if (!/^[a-z0-9-]{1,80}$/.test(id)) throw new Error(`refusing to build a path from log id ${JSON.stringify(id)}`);
    return join(this.logsDir, `${id}.log`);
  }
}
