// Starts nixreg for a test: in-process (fast API tests) or as the real CLI process.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { startRegistry, type RunningRegistry, type StartOptions } from '../../src/server.js';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
export const CLI = join(ROOT, 'dist/src/main.cjs');

export function tempDir(prefix = 'nixreg-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export async function startTestRegistry(opts: Partial<StartOptions> = {}): Promise<RunningRegistry & { data: string }> {
  const data = opts.data ?? tempDir();
  const reg = await startRegistry({ host: '127.0.0.1', port: 0, log: pino({ level: 'silent' }), ...opts, data });
  return { ...reg, data, close: reg.close };
}

export interface RegistryProcess {
  child: ChildProcess;
  url: string;
  /** host:port, for image references. */
  host: string;
  data: string;
  logs(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Runs `nixreg serve` as a child process on a free port. */
export async function spawnRegistry(opts: { data?: string; images?: string; env?: NodeJS.ProcessEnv; args?: string[] } = {}): Promise<RegistryProcess> {
  const data = opts.data ?? tempDir();
  const args = [CLI, 'serve', '--listen', '127.0.0.1:0', '--data', data, ...(opts.images ? ['--images', opts.images] : []), ...(opts.args ?? [])];
  const child = spawn(process.execPath, args, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const url = await new Promise<string>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`nixreg did not start:\n${out}`)), 30_000);
    const check = () => {
      const m = /"url":"(https?:\/\/[^"]+)"/.exec(out);
      if (m) { clearTimeout(t); child.stdout!.off('data', check); res(m[1]!); }
    };
    child.stdout!.on('data', check);
    void exited.then((code) => { clearTimeout(t); rej(new Error(`nixreg exited ${code}:\n${out}`)); });
  });
  return {
    child, url, host: url.replace(/^https?:\/\//, ''), data,
    logs: () => out,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}
