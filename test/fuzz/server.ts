// The registry the HTTP fuzzer (test and bench) runs against: the real `nixreg serve`
// process, on a fresh data directory, with an images directory holding one trivial
// expression, and offline Nix settings.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/registry.js';
import { cleanEnv, reap, spawnCli, type CliProcess } from '../cli/spawn.js';

export interface FuzzServer {
  url: string;
  pid: number;
  proc: CliProcess;
  /** Whether the process is still running (no exit code, no signal). */
  alive(): boolean;
  /** The server's internal errors, by kind, each with one full log line (the 5xx causes, with stacks). */
  problems(): string[];
  stop(): Promise<void>;
}

/** A trivial image: no packages, so a pull evaluates and assembles without building anything big. */
const TRIVIAL = '{ name = "trivial"; contents = [ ]; config.Cmd = [ "/bin/true" ]; }\n';

export async function startFuzzServer(): Promise<FuzzServer> {
  const dir = tempDir('nixreg-fuzz-');
  const images = join(dir, 'images');
  mkdirSync(images);
  writeFileSync(join(images, 'trivial.nix'), TRIVIAL);
  // A short grace, so that the collections the fuzz asks for find garbage to remove while
  // pushes and pulls go on.
  const proc = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', join(dir, 'data'), '--images', images, '--gc-grace', '2'],
    { env: cleanEnv({ NIX_CONFIG: 'substituters =\nsandbox = false' }), cwd: dir });
  try {
    const l = await proc.listening;
    return {
      url: l.url,
      pid: proc.child.pid!,
      proc,
      alive: () => proc.child.exitCode === null && proc.child.signalCode === null,
      problems: () => problemsOf(proc.output()),
      async stop() {
        await reap(proc);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await reap(proc);
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** VmRSS of a process in KiB, from /proc (Linux). */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/**
 * Samples VmRSS every `everyMs` until stopped: the largest sample, and what `suspects()`
 * returned whenever RSS grew by more than `jumpKiB` within one second.
 */
export function sampleRss(pid: number, everyMs = 100, suspects: () => string[] = () => [], jumpKiB = 100 * 1024):
  { stop(): { peakKiB: number; jumps: string[] } } {
  let window = [rssKiB(pid)];
  let peak = window[0]!;
  const jumps: string[] = [];
  const sample = () => {
    let now: number;
    try { now = rssKiB(pid); } catch { return; /* exited: the liveness check reports it */ }
    const low = Math.min(...window);
    if (now - low > jumpKiB) {
      if (jumps.length < 5) jumps.push(`RSS ${(low / 1024).toFixed(0)} → ${(now / 1024).toFixed(0)} MiB within 1 s, with in flight:\n      ${suspects().join('\n      ')}`);
      window = [];
    }
    window = [...window, now].slice(-Math.ceil(1000 / everyMs));
    peak = Math.max(peak, now);
  };
  const t = setInterval(sample, everyMs);
  return { stop() { clearInterval(t); sample(); return { peakKiB: peak, jumps }; } };
}

/** Internal errors in a server log, grouped by error and where it was thrown. */
export function problemsOf(output: string): string[] {
  const kinds = new Map<string, { n: number; example: string }>();
  for (const line of output.split('\n')) {
    if (!/"level":(50|60)/.test(line)) continue;
    let key = line.slice(0, 300);
    try {
      const e = (JSON.parse(line) as { err?: { type?: string; message?: string; stack?: string }; msg?: string }).err;
      const frames = (e?.stack ?? '').split('\n').filter((f) => f.includes('/dist/src/')).slice(0, 2).map((f) => f.trim().replace(/^at /, ''));
      const message = (e?.message ?? '').replace(/\/\S+/g, '<path>');
      key = `${e?.type}: ${message} at ${frames.join(' < ')}`;
    } catch { /* not JSON: the line itself is the key */ }
    const k = kinds.get(key) ?? { n: 0, example: line.slice(0, 3000) };
    k.n++;
    kinds.set(key, k);
  }
  return [...kinds].sort((a, b) => b[1].n - a[1].n).map(([k, v]) => `${v.n} × ${k}\n    e.g. ${v.example}`);
}
