// Whether this registry can do its work now, for GET /readyz: the index answers, the
// data directory takes a write and has space left, a remote blob store (S3) answers, and
// Nix can build where expressions are served. Probes come every few seconds (kubelet), so the disk checks are cached for
// a second and shared by concurrent probes; each failure says why in a few words, and
// never names the data directory (the probe is open to anyone).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Storage } from '../blobs/storage.js';
import type { ImageSource } from '../build/image-source.js';

const GiB = 1024 ** 3;
const CACHE_MS = 1000;
/** How long a write that found the storage full keeps the registry not ready. */
const FULL_MS = 10_000;

export interface Check { ok: boolean; reason?: string; state?: string }

export interface ReadinessReport {
  status: 'ready' | 'not ready';
  /** `blobs` only where the blob store is remote: the local disk's are writable and space. */
  checks: Record<'index' | 'writable' | 'space' | 'nix', Check> & { blobs?: Check };
}

export interface ReadinessOptions {
  storage: Storage;
  source?: ImageSource | undefined;
  /** Free bytes below which the data directory counts as full; default min(1 GiB, 5 % of its filesystem). */
  minFreeBytes?: number | undefined;
}

export class Readiness {
  private disk: { at: number; result: Promise<Pick<ReadinessReport['checks'], 'writable' | 'space' | 'blobs'>> } | undefined;

  constructor(private readonly o: ReadinessOptions) {}

  async check(): Promise<ReadinessReport> {
    const now = Date.now();
    if (!this.disk || now - this.disk.at >= CACHE_MS) this.disk = { at: now, result: this.checkDisk() };
    const disk = await this.disk.result;
    const checks = { index: await this.checkIndex(), ...disk, nix: this.checkNix() };
    return { status: Object.values(checks).every((c) => c.ok) ? 'ready' : 'not ready', checks };
  }

  /** The index's own deadline (a PostgreSQL index's query timeout) bounds this. */
  private async checkIndex(): Promise<Check> {
    try {
      await this.o.storage.index.ping();
      return { ok: true };
    } catch (e) {
      return { ok: false, reason: `the index does not answer: ${(e as Error).message.slice(0, 200)}` };
    }
  }

  private async checkDisk(): Promise<Pick<ReadinessReport['checks'], 'writable' | 'space'>> {
    const { layout } = this.o.storage;
    // In tmp/, where blob writes start: the place that must take a write, on the filesystem
    // of blobs/, and emptied at start-up should a probe file ever be left behind.
    const probe = join(layout.tmpDir, `readyz-${randomBytes(6).toString('hex')}`);
    let writable: Check = { ok: true };
    try {
      await fs.writeFile(probe, 'ok', { flag: 'wx' });
      await fs.rm(probe, { force: true });
    } catch (e) {
      writable = { ok: false, reason: `the data directory does not take a write (${codeOf(e)})` };
    }
    let space: Check;
    try {
      const s = await fs.statfs(layout.root);
      const free = s.bavail * s.bsize;
      const min = this.o.minFreeBytes ?? Math.min(GiB, 0.05 * s.blocks * s.bsize);
      space = free < min
        ? { ok: false, reason: `low space: ${mib(free)} free in the data directory, below the threshold of ${mib(min)}` }
        : { ok: true };
    } catch (e) {
      space = { ok: false, reason: `cannot read the free space of the data directory (${codeOf(e)})` };
    }
    // A write that just found the disk full says more than free space does (a quota, the
    // inodes, the index itself): not ready until writes have had a quiet while.
    const full = this.o.storage.lastFull();
    if (space.ok && full !== undefined && Date.now() - full < FULL_MS) {
      space = { ok: false, reason: `a write found the storage full ${Math.round((Date.now() - full) / 1000)} s ago` };
    }
    return { writable, space, ...(this.o.storage.store.remote ? { blobs: await this.checkBlobs() } : {}) };
  }

  /** The store's own deadline (--s3-timeout) bounds this. */
  private async checkBlobs(): Promise<Check> {
    const { store } = this.o.storage;
    try {
      await store.ping();
      return { ok: true };
    } catch (e) {
      return { ok: false, reason: `the blob store (${store.description}) does not answer: ${(e as Error).message.slice(0, 200)}` };
    }
  }

  private checkNix(): Check {
    const nix = this.o.source?.nixReadiness();
    if (!nix) return { ok: true, state: 'not needed' };
    // Still finding out is not a failure: pushes and pulls of stored images work meanwhile.
    if (nix.state !== 'failed') return { ok: true, state: nix.state };
    return { ok: false, state: nix.state, reason: `Nix cannot build images: ${nix.problem ?? 'unknown problem'}` };
  }
}

function codeOf(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? 'error';
}

function mib(bytes: number): string {
  return `${Math.floor(bytes / 1024 / 1024)} MiB`;
}
