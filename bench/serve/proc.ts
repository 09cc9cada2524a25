// Memory and CPU time of a server process, from /proc/<pid> (Linux only).
import { readFileSync } from 'node:fs';

export interface Memory { rssKiB: number; hwmKiB: number }

export function memoryOf(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
    if (!m) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(m[1]);
  };
  return { rssKiB: field('VmRSS'), hwmKiB: field('VmHWM') };
}

/** Samples VmRSS every `everyMs` until stopped; returns the largest sample seen. */
export function sampleRss(pid: number, everyMs = 20): { stop(): number } {
  let peak = memoryOf(pid).rssKiB;
  const t = setInterval(() => {
    try { peak = Math.max(peak, memoryOf(pid).rssKiB); } catch { /* process gone: keep what we have */ }
  }, everyMs);
  return {
    stop() {
      clearInterval(t);
      try { peak = Math.max(peak, memoryOf(pid).rssKiB); } catch { /* idem */ }
      return peak;
    },
  };
}

const TICK_MS = 10; // USER_HZ is 100 on Linux

/** CPU time (user + system, all threads, ms) a process has used so far. */
export function cpuMsOf(pid: number): number {
  // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_MS;
}
