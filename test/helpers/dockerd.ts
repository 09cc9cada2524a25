// A private Docker engine for end-to-end tests: its own socket, data and exec roots,
// vfs storage, no iptables and no bridge (containers run with --network none).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { requireTool, run, waitFor, type RunResult } from './exec.js';

export interface Dockerd {
  env: NodeJS.ProcessEnv;
  docker(args: string[], opts?: { check?: boolean; input?: Buffer | string }): Promise<RunResult>;
  stop(): Promise<void>;
}

export async function startDockerd(): Promise<Dockerd> {
  await requireTool('dockerd');
  await requireTool('docker');
  // Short path: the socket path must fit in sun_path.
  const dir = mkdtempSync('/tmp/nxd-');
  const sock = join(dir, 'docker.sock');
  const child: ChildProcess = spawn('dockerd', [
    '--iptables=false', '--ip6tables=false', '--bridge=none', '--storage-driver=vfs',
    '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'docker.pid'),
    '-H', `unix://${sock}`,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (c: Buffer) => { log += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { log += c.toString(); });
  const env = { ...process.env, DOCKER_HOST: `unix://${sock}` };
  const docker = (args: string[], opts: { check?: boolean; input?: Buffer | string } = {}) => run('docker', args, { env, ...opts });
  try {
    await waitFor('dockerd', async () => {
      if (child.exitCode !== null) throw new Error(`dockerd exited ${child.exitCode}:\n${log.slice(-4000)}`);
      const r = await docker(['version', '--format', '{{.Server.Version}}'], { check: false });
      return r.code === 0 ? true : undefined;
    }, 60_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return {
    env,
    docker,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
        await exited;
        clearTimeout(t);
      }
      // vfs leaves read-only trees behind only as ordinary files; a plain rm suffices.
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
