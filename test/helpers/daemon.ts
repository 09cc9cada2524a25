// A background daemon for end-to-end tests (dockerd, containerd): started in its own
// temp dir, ready when its probe succeeds, stopped with SIGTERM (SIGKILL after 20 s),
// and its dir removed. Its output is kept for the error when it fails to come up.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { run, waitFor } from './exec.js';

export interface Daemon {
  stop(): Promise<void>;
}

export async function startDaemon(name: string, cmd: string, args: string[], dir: string, ready: () => Promise<boolean>): Promise<Daemon> {
  const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (c: Buffer) => { log += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { log += c.toString(); });
  try {
    // An exit is a result, not an error: waitFor would retry an error until its timeout.
    const state = await waitFor(name, async () => {
      if (child.exitCode !== null || child.signalCode !== null) return 'exited';
      return (await ready()) ? 'ready' : undefined;
    }, 60_000);
    if (state === 'exited') throw new Error(`${name} exited ${child.exitCode ?? child.signalCode}:\n${log.slice(-4000)}`);
  } catch (e) {
    child.kill('SIGKILL');
    await removeTree(dir);
    throw e;
  }
  return {
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
        await exited;
        clearTimeout(t);
      }
      await removeTree(dir);
    },
  };
}

/**
 * Removes a daemon's or tool's dir, first unmounting what was left mounted in it: dockerd
 * keeps the host network namespace bind-mounted (exec-root/netns/default) after it exits
 * once a container used --network host, and a killed daemon or mmdebstrap leaves more.
 */
export async function removeTree(dir: string): Promise<void> {
  const unescape = (p: string) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n')
    .map((l) => unescape(l.split(' ')[1] ?? ''))
    .filter((m) => m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  // Lazy: a mount still busy for a moment must not keep the rest from being removed.
  for (const m of mounts) await run('umount', ['-l', m], { check: false });
  rmSync(dir, { recursive: true, force: true });
}
