// A background daemon for end-to-end tests (dockerd, containerd): started in its own
// temp dir, ready when its probe succeeds, stopped with SIGTERM (SIGKILL after 20 s),
// and its dir removed. Its output is kept for the error when it fails to come up.
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { waitFor } from './exec.js';

export interface Daemon {
  stop(): Promise<void>;
}

export async function startDaemon(name: string, cmd: string, args: string[], dir: string, ready: () => Promise<boolean>): Promise<Daemon> {
  const child: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (c: Buffer) => { log += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { log += c.toString(); });
  try {
    await waitFor(name, async () => {
      if (child.exitCode !== null) throw new Error(`${name} exited ${child.exitCode}:\n${log.slice(-4000)}`);
      return (await ready()) ? true : undefined;
    }, 60_000);
  } catch (e) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
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
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
