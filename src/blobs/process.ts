// Which process is which, across restarts: a pid alone may be reused by an unrelated
// process (in a container, a restarted registry is pid 1 again), so a process is named by
// its pid and its start time in clock ticks since boot (/proc/<pid>/stat). GC roots
// (src/build/roots.ts) and upload claims (uploads.ts) are owned by such names, so that
// what a process killed by kill -9 left can be told from what a live one holds.
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';

/** The start time of process `pid` in clock ticks since boot; undefined if there is no such process. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    if (!readableProc()) {
      // No /proc (not Linux): whether the pid exists is all there is to know.
      try { process.kill(pid, 0); return '0'; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM' ? '0' : undefined; }
    }
    return undefined;
  }
}

function readableProc(): boolean {
  try { readFileSync('/proc/self/stat'); return true; } catch { return false; }
}

/** This process on this host: `<host>/<pid>.<start>`. */
export function processName(): string {
  return `${hostname()}/${process.pid}.${processStart(process.pid) ?? '0'}`;
}

/**
 * Whether the process `name` (processName) is known to be gone: it ran on this host and
 * its pid is now no process, or another one. A process elsewhere is never known gone.
 */
export function processGone(name: string): boolean {
  const m = /^(.*)\/(\d{1,10})\.(\d{1,20})$/.exec(name);
  if (!m || m[1] !== hostname()) return false;
  return processStart(Number(m[2])) !== m[3];
}
