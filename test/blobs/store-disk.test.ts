// The blob store contract (store-contract.ts) on the local disk store, in a temp dir.
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after } from 'node:test';
import { Layout } from '../../src/blobs/layout.js';
import { DiskStore } from '../../src/blobs/store/disk.js';
import { Storage } from '../../src/blobs/storage.js';
import { blobStoreContract, type Backend } from './store-contract.js';

const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function files(dir: string): string[] {
  try {
    return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
  } catch { return []; }
}

const disk = (): Backend => ({
  async namespace() {
    const data = mkdtempSync(join(tmpdir(), 'nixreg-store-'));
    dirs.push(data);
    const layout = new Layout(data);
    for (const d of [layout.blobsDir, layout.tmpDir, layout.uploadsDir]) mkdirSync(d, { recursive: true });
    return {
      store: () => new DiskStore(layout),
      storage: (o = {}) => Storage.open(data, { gcIntervalMs: 0, ...o }),
      async residue() {
        return [
          ...files(layout.blobsDir).map((f) => `blob ${relative(layout.blobsDir, f).replace(/^(sha\d+)\/..\//, '$1:')}`),
          ...files(layout.uploadsDir).map((f) => `upload ${relative(layout.uploadsDir, f)}`),
          ...files(layout.tmpDir).map((f) => `tmp ${relative(layout.tmpDir, f)}`),
        ].sort();
      },
    };
  },
});

blobStoreContract('disk', disk);
