// Who owns the GC roots under <data>/gcroots. A build registers its closure there (as
// Nix indirect roots) so that a concurrent `nix-store --gc` cannot delete what is being
// packed; the build removes them when its layers are stored. A process killed by
// kill -9 never does, and its roots would pin their closures in the Nix store for good.
//
// So each process keeps its roots in a directory named for itself, `<pid>.<start>`, where
// <start> is the process's start time in clock ticks since boot (blobs/process.ts): a pid
// alone may be reused by an unrelated process. At start-up every directory whose owner is
// no longer that very process is removed. Another live process on the same data (a
// `nixreg build` beside a server) keeps its roots.
//
// Room: build/nix, the Nix adapter. Of build, imports only the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { processStart } from '../../blobs/process.js';

/** This process's directory of GC roots under `gcroots`. */
export function ownRootsDir(gcroots: string): string {
  return join(gcroots, `${process.pid}.${processStart(process.pid) ?? '0'}`);
}

const OWNER = /^(\d{1,10})\.(\d{1,20})$/;

/**
 * Removes the roots of processes that are gone. Entries of the old layout (one directory
 * per build, no owner) are removed once older than `legacyAgeMs`: no running version
 * writes them any more.
 */
export async function removeDeadRoots(gcroots: string, log?: Logger, legacyAgeMs = 3_600_000): Promise<string[]> {
  let names: string[];
  try { names = await fs.readdir(gcroots); } catch { return []; }
  const removed: string[] = [];
  for (const n of names) {
    const m = OWNER.exec(n);
    try {
      if (m) {
        if (processStart(Number(m[1])) === m[2]) continue;
      } else if ((await fs.lstat(join(gcroots, n))).mtimeMs > Date.now() - legacyAgeMs) {
        continue;
      }
      await fs.rm(join(gcroots, n), { recursive: true, force: true });
      removed.push(n);
    } catch { /* gone already */ }
  }
  if (removed.length) log?.info({ removed }, 'removed the GC roots of builds whose process is gone');
  return removed;
}
