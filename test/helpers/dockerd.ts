// A private Docker engine for end-to-end tests: its own socket, data and exec roots,
// vfs storage unless told otherwise, no iptables and no bridge (containers run with
// --network none, or host).
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon } from './daemon.js';
import { requireTool, run, type RunResult } from './exec.js';

export interface Dockerd {
  env: NodeJS.ProcessEnv;
  docker(args: string[], opts?: { check?: boolean; input?: Buffer | string }): Promise<RunResult>;
  stop(): Promise<void>;
}

export interface DockerdOptions {
  /** vfs works on any file system; overlay2, where it works, makes big images far faster. */
  storageDriver?: string;
}

export async function startDockerd(options: DockerdOptions = {}): Promise<Dockerd> {
  await requireTool('dockerd');
  await requireTool('docker');
  // Short path: the socket path must fit in sun_path.
  const dir = mkdtempSync('/tmp/nxd-');
  const sock = join(dir, 'docker.sock');
  const env = { ...process.env, DOCKER_HOST: `unix://${sock}` };
  const docker = (args: string[], opts: { check?: boolean; input?: Buffer | string } = {}) => run('docker', args, { env, ...opts });
  const daemon = await startDaemon('dockerd', 'dockerd', [
    '--iptables=false', '--ip6tables=false', '--bridge=none', `--storage-driver=${options.storageDriver ?? 'vfs'}`,
    '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'docker.pid'),
    '-H', `unix://${sock}`,
  ], dir, async () => (await docker(['version', '--format', '{{.Server.Version}}'], { check: false })).code === 0);
  return {
    env,
    docker,
    stop: () => daemon.stop(),
  };
}
