// A private containerd (the Kubernetes runtime) for end-to-end pulls with `ctr`.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireTool, run, waitFor, type RunResult } from './exec.js';

export interface Containerd {
  ctr(args: string[], opts?: { check?: boolean }): Promise<RunResult>;
  stop(): Promise<void>;
}

export async function startContainerd(): Promise<Containerd> {
  await requireTool('containerd');
  await requireTool('ctr');
  const dir = mkdtempSync('/tmp/nxc-');
  const sock = join(dir, 'containerd.sock');
  const config = join(dir, 'config.toml');
  writeFileSync(config, [
    'version = 2',
    `root = "${join(dir, 'root')}"`,
    `state = "${join(dir, 'state')}"`,
    '[grpc]', `  address = "${sock}"`,
    '[ttrpc]', `  address = "${sock}.ttrpc"`,
    '[debug]', `  address = "${join(dir, 'debug.sock')}"`,
    '[plugins."io.containerd.grpc.v1.cri"]', '  disable_tcp_service = true',
    '',
  ].join('\n'));
  const child: ChildProcess = spawn('containerd', ['--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (c: Buffer) => { log += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { log += c.toString(); });
  const ctr = (args: string[], opts: { check?: boolean } = {}) => run('ctr', ['--address', sock, ...args], opts);
  try {
    await waitFor('containerd', async () => {
      if (child.exitCode !== null) throw new Error(`containerd exited ${child.exitCode}:\n${log.slice(-4000)}`);
      const r = await ctr(['version'], { check: false });
      return r.code === 0 ? true : undefined;
    }, 60_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return {
    ctr,
    async stop() {
      if (child.exitCode === null) {
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
