// Runs the real `nixreg` command (or `npm start`) with exact argv, env and cwd, and
// reads its "nixreg listening" log line: the resolved configuration as the user sees it.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { CLI } from '../helpers/registry.js';

export interface Listening { url: string; data: string; images: string }

export interface CliProcess {
  child: ChildProcess;
  output(): string;
  /** Resolves with the exit code (or the signal name). */
  exited: Promise<number | string>;
  listening: Promise<Listening>;
  /** Sends `signal` to the process (the group, when spawned as one). */
  kill(signal?: NodeJS.Signals): void;
}

/** An environment without any NIXREG_* variable, plus `extra`. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('NIXREG_')) env[k] = v;
  return { ...env, ...extra };
}

export function spawnCommand(cmd: string, args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; group?: boolean; uid?: number; gid?: number } = {}): CliProcess {
  // A process group, so that `npm start` and the node it runs are signalled together,
  // as a terminal's Ctrl-C would, and nothing outlives the test.
  const child = spawn(cmd, args, {
    env: opts.env ?? cleanEnv(), cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: opts.group ?? false, uid: opts.uid, gid: opts.gid,
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
  const exited = new Promise<number | string>((r) => child.once('exit', (code, sig) => r(code ?? sig!)));
  const listening = new Promise<Listening>((resolve, reject) => {
    const check = () => {
      for (const line of out.split('\n')) {
        if (!line.includes('"nixreg listening"')) continue;
        child.stdout!.off('data', check);
        resolve(JSON.parse(line) as Listening);
        return;
      }
    };
    child.stdout!.on('data', check);
    void exited.then((code) => reject(new Error(`exited ${code} before listening:\n${out}`)));
    // Generous: `npm start` compiles first. A hung start fails the test instead of CI.
    setTimeout(() => reject(new Error(`not listening after 150 s:\n${out}`)), 150_000).unref();
  });
  listening.catch(() => {});
  return {
    child, exited, listening,
    output: () => out,
    kill(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      if (opts.group) process.kill(-child.pid!, signal);
      else child.kill(signal);
    },
  };
}

export function spawnCli(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): CliProcess {
  return spawnCommand(process.execPath, [CLI, ...args], opts);
}

/** Stops a process for good, whatever state a failed test left it in. */
export async function reap(p: CliProcess | undefined, group = false): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  try { if (group) process.kill(-p.child.pid!, 'SIGKILL'); else p.child.kill('SIGKILL'); } catch { /* gone */ }
  await p.exited;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
