// Runs a command (argv, never a shell line) and collects its output.
import { spawn, type SpawnOptions } from 'node:child_process';

export interface RunResult { code: number | null; stdout: string; stderr: string }

export function run(cmd: string, args: string[], opts: SpawnOptions & { input?: Buffer | string; check?: boolean } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      const r = { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
      if (opts.check !== false && code !== 0) {
        reject(new Error(`${cmd} ${args.join(' ')} exited ${code}\n${r.stderr}\n${r.stdout}`.slice(0, 8000)));
      } else resolve(r);
    });
    child.stdin!.end(opts.input);
  });
}

/** Fails (never skips) when a tool the test needs is not installed. */
export async function requireTool(cmd: string): Promise<void> {
  const r = await run('sh', ['-c', 'command -v "$1"', 'sh', cmd], { check: false });
  if (r.code !== 0) throw new Error(`${cmd} is not installed: run .ci/run (or apt-get install it) first`);
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}
