// A small tmpfs for the tests of a full disk (needs root, as the e2e tests do), with a
// ballast file that sets how much space is left, to the block.
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './registry.js';

export interface Tmpfs {
  dir: string;
  /** Bytes that an unprivileged write could still take. */
  free(): number;
  /** Grows the ballast until at most `leave` bytes are free (0: the disk is full). */
  fill(leave?: number): void;
  /** Removes the ballast: the space comes back. */
  release(): void;
  /** Unmounts and removes the mount point; safe to call twice. */
  unmount(): void;
}

/** `inodes` caps the files and directories it can hold (a full inode table is ENOSPC too). */
export function mountTmpfs(sizeMiB: number, prefix = 'nixreg-tmpfs-', inodes?: number): Tmpfs {
  const dir = tempDir(prefix);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0755${inodes ? `,nr_inodes=${inodes}` : ''}`, 'tmpfs', dir]);
  let mounted = true;
  const ballast = join(dir, 'ballast');
  const free = () => { const s = statfsSync(dir); return s.bavail * s.bsize; };
  return {
    dir,
    free,
    fill(leave = 0) {
      const fd = openSync(ballast, 'a');
      try {
        const zeros = Buffer.alloc(1024 * 1024);
        for (let want = free() - leave; want > 0; want = free() - leave) {
          try { writeSync(fd, zeros, 0, Math.min(zeros.length, want)); } catch { break; /* full */ }
        }
      } finally {
        closeSync(fd);
      }
    },
    release() { rmSync(ballast, { force: true }); },
    unmount() {
      if (!mounted) return;
      // Lazy: a server that failed to stop must not leave the mount behind.
      execFileSync('umount', ['-l', dir]);
      mounted = false;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
