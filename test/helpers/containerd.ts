// A private containerd (the Kubernetes runtime) for end-to-end pulls with `ctr`.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon } from './daemon.js';
import { requireTool, run, type RunResult } from './exec.js';

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
  const ctr = (args: string[], opts: { check?: boolean } = {}) => run('ctr', ['--address', sock, ...args], opts);
  const daemon = await startDaemon('containerd', 'containerd', ['--config', config], dir,
    async () => (await ctr(['version'], { check: false })).code === 0);
  return {
    ctr,
    stop: () => daemon.stop(),
  };
}
