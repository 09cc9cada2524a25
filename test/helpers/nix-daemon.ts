// Nix as NixOS and the official installer set it up: a nix-daemon run by root (started
// by the test, on a socket of its own, so that tests in parallel do not share one), and
// nixreg run by an unprivileged user (`nixreg-test`, made by .ci/run and .ci/nix-2.26)
// that reaches the store only through the daemon (NIX_REMOTE=daemon).
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { spawnCommand, type CliProcess } from '../cli/spawn.js';
import { startDaemon, type Daemon } from './daemon.js';
import { CLI, ROOT, tempDir } from './registry.js';

export const SERVICE_USER = 'nixreg-test';

export interface User { name: string; uid: number; gid: number }

/** The unprivileged user nixreg runs as in these tests. */
export function serviceUser(): User {
  const id = (flag: string) => Number(spawnSync('id', [flag, SERVICE_USER], { encoding: 'utf8' }).stdout.trim());
  const uid = id('-u');
  if (!Number.isInteger(uid) || uid <= 0) throw new Error(`no user ${SERVICE_USER}: run .ci/run (it makes it) first`);
  return { name: SERVICE_USER, uid, gid: id('-g') };
}

/** A directory that `user` owns. */
export function userDir(user: User, prefix: string): string {
  const d = tempDir(prefix);
  chownSync(d, user.uid, user.gid);
  return d;
}

export interface NixDaemon extends Daemon {
  socket: string;
  /** What a client needs to use this daemon. */
  clientEnv: Record<string, string>;
}

/** Starts nix-daemon as root on a private socket, with `conf` as its settings. */
export async function startNixDaemon(conf = 'substituters =\nsandbox = false'): Promise<NixDaemon> {
  const dir = tempDir('nixreg-nix-daemon-');
  chmodSync(dir, 0o755);
  const socket = join(dir, 'socket');
  const prev = { socket: process.env.NIX_DAEMON_SOCKET_PATH, conf: process.env.NIX_CONFIG };
  // startDaemon spawns with this process's environment.
  process.env.NIX_DAEMON_SOCKET_PATH = socket;
  process.env.NIX_CONFIG = conf;
  let d: Daemon;
  try {
    d = await startDaemon('nix-daemon', 'nix-daemon', [], dir, async () => existsSync(socket));
  } finally {
    for (const [k, v] of [['NIX_DAEMON_SOCKET_PATH', prev.socket], ['NIX_CONFIG', prev.conf]] as const) {
      if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  }
  return { ...d, socket, clientEnv: { NIX_REMOTE: 'daemon', NIX_DAEMON_SOCKET_PATH: socket } };
}

let staged: string | undefined;

/**
 * nixreg's executable as `user` can run it: the checkout's, if the user can reach it;
 * otherwise a copy of what `nixreg serve` needs (CI's checkout may sit in root's home).
 */
export function cliFor(user: User): string {
  const reachable = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(join(ROOT, 'node_modules/better-sqlite3/package.json'))}); require('fs').accessSync(${JSON.stringify(CLI)})`],
    { uid: user.uid, gid: user.gid, stdio: 'ignore' }).status === 0;
  if (reachable) return CLI;
  if (!staged) {
    const dir = tempDir('nixreg-staged-');
    for (const p of ['package.json', 'dist/src', 'node_modules', 'build/Release', 'src/build/nix/eval.nix', 'src/build/nix/probe.nix']) {
      if (!existsSync(join(ROOT, p))) continue;
      mkdirSync(join(dir, p, '..'), { recursive: true });
      cpSync(join(ROOT, p), join(dir, p), { recursive: true, dereference: true });
    }
    chmodSync(dir, 0o755);
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    staged = dir;
  }
  return join(staged, 'dist/src/main.cjs');
}

/**
 * `nixreg serve` as `user`, on a free port, with its data in a directory of the user's
 * and `env` beside a minimal environment (no NIX_* of the test's own).
 */
export function serveAs(user: User, images: string, env: Record<string, string>, args: string[] = []): { p: CliProcess; data: string } {
  const data = userDir(user, 'nixreg-daemon-data-');
  const home = userDir(user, 'nixreg-daemon-home-');
  const p = spawnCommand(process.execPath, [cliFor(user), 'serve', '--listen', '127.0.0.1:0', '--data', data, '--images', images, ...args], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, ...env },
    uid: user.uid, gid: user.gid,
  });
  p.exited.finally(() => rmSync(home, { recursive: true, force: true })).catch(() => {});
  return { p, data };
}
