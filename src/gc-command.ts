// `nixreg gc --data DIR [--dry-run]`: garbage collection from the command line.
//
// A running server collects on its own (--gc-interval) and on `POST /nixreg/gc`; this
// command is for a stopped one, and for looking. A collection needs the locks and the
// record of writes in flight that only the server process has, so with a server using
// the directory it refuses to collect and only a dry run is allowed (which reads, and
// skips the start-up reconciliation that would mistake the server's blob in mid-commit
// for an orphan). With --database (PostgreSQL) the index is shared by design: the
// replicas' own collections take the same advisory lock, so this one runs beside them.
//
// Composition root: may import every room; no room imports it.
import { existsSync, readFileSync } from 'node:fs';
import type { GcReport } from './blobs/gc.js';
import { Layout } from './blobs/layout.js';
import { Storage, type StorageOptions } from './blobs/storage.js';
import type { DatabaseConfig } from './config.js';

/** The pid of a live `nixreg serve` using `data`, if any. */
export function serverUsing(data: string): number | undefined {
  let pid: number;
  try { pid = Number(readFileSync(new Layout(data).pidPath, 'utf8').trim()); } catch { return undefined; }
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
  try { process.kill(pid, 0); return pid; } catch (e) {
    // EPERM: alive, but another user's.
    return (e as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

export class GcRefused extends Error {}

export async function runGc(opts: { data: string; dryRun: boolean; graceMs: number; s3?: StorageOptions['s3']; database?: DatabaseConfig | undefined }): Promise<GcReport> {
  if (opts.database) {
    const storage = await Storage.open(opts.data, {
      gcIntervalMs: 0, s3: opts.s3, database: opts.database.url, databasePool: opts.database.poolSize, databaseTimeoutMs: opts.database.timeoutMs,
    });
    try {
      return await storage.gc({ dryRun: opts.dryRun, graceMs: opts.graceMs });
    } finally {
      await storage.close();
    }
  }
  if (!existsSync(new Layout(opts.data).dbPath)) throw new GcRefused(`${opts.data} holds no nixreg data (no index.db)`);
  const pid = serverUsing(opts.data);
  if (pid !== undefined && !opts.dryRun) {
    throw new GcRefused(`a nixreg server (pid ${pid}) is using ${opts.data}: it collects garbage itself every --gc-interval; to collect now, ask it: curl -X POST <its url>/nixreg/gc (or run this command with --dry-run to see what would go)`);
  }
  const storage = pid !== undefined ? await Storage.inspect(opts.data, { s3: opts.s3 }) : await Storage.open(opts.data, { gcIntervalMs: 0, s3: opts.s3 });
  try {
    return await storage.gc({ dryRun: opts.dryRun, graceMs: opts.graceMs });
  } finally {
    await storage.close();
  }
}

/** The report as a person reads it: what would go (or went), then the totals. */
export function printReport(r: GcReport, out: (s: string) => void): void {
  for (const m of r.items?.manifests ?? []) out(`manifest ${m.repo}@${m.digest}\n`);
  for (const b of r.items?.blobs ?? []) out(`blob ${b.digest} ${b.size}\n`);
  const verb = r.dryRun ? 'would remove' : 'removed';
  out(`${verb} ${r.manifests} manifests, ${r.links} links, ${r.blobs} blobs (${r.bytes} bytes) in ${r.ms} ms` +
    `${r.deferred ? `; ${r.deferred} repositories not swept (a manifest body could not be read)` : ''}\n`);
}
