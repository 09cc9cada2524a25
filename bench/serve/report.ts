// How bench/serve measures and reports: runs alternated between targets with each
// target's server CPU time, medians with their ranges, and the markdown table with
// ratios and goals. Shared by serve.ts (nixreg vs Distribution) and auth.ts (nixreg
// with --auth vs without).
import { cpuMsOf } from './proc.js';

export interface Stat { median: number; min: number; max: number; samples: number[] }

export function stat(samples: number[]): Stat {
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median, min: s[0]!, max: s[s.length - 1]!, samples };
}

export interface Measured<T> { v: T; cpuMs: number }

/**
 * Runs `fn` for each target, rotating who goes first per round to spread drift and
 * noise (with two targets: each goes first every other round), and records the CPU
 * time of the target's server process for each run: on a shared machine, CPU per
 * operation is far steadier than wall-clock rates.
 */
export async function alternate<K extends { pid: number }, T>(targets: K[], rounds: number, fn: (t: K) => Promise<T>): Promise<Map<K, Measured<T>[]>> {
  const out = new Map<K, Measured<T>[]>(targets.map((t) => [t, []]));
  for (let r = 0; r < rounds; r++) {
    const k = r % targets.length;
    for (const t of [...targets.slice(k), ...targets.slice(0, k)]) {
      const c0 = cpuMsOf(t.pid);
      const v = await fn(t);
      out.get(t)!.push({ v, cpuMs: cpuMsOf(t.pid) - c0 });
    }
  }
  return out;
}

/** One line of the table: `left` is the subject (nixreg), `right` the baseline. */
export interface Row { metric: string; left: Stat; right: Stat; ratio: number; better: 'higher' | 'lower'; digits: number; goal?: string; pass?: boolean }

export function row(metric: string, left: Stat, right: Stat, better: 'higher' | 'lower', minRatio: number | undefined, digits: number,
  ratio = left.median / right.median): Row {
  const r: Row = { metric, left, right, ratio, better, digits };
  // Judged on the ratio as printed (2 decimals), so that "1.00×" never reads as a failure.
  if (minRatio !== undefined) {
    r.goal = `≥ ${minRatio.toFixed(Number.isInteger(Math.round(minRatio * 100) / 10) ? 1 : 2)}×`;
    r.pass = Math.round(ratio * 100) / 100 >= minRatio;
  }
  return r;
}

/**
 * A row of samples taken in pairs (round i of `left` beside round i of `right`), whose
 * ratio is the median of the per-round ratios: on a machine whose load drifts between
 * rounds, that compares runs made a few seconds apart, not the best of one side with the
 * worst of the other.
 */
export function pairedRow(metric: string, left: number[], right: number[], better: 'higher' | 'lower', minRatio: number | undefined, digits: number): Row {
  if (left.length !== right.length) throw new Error(`${metric}: ${left.length} samples against ${right.length}`);
  return row(metric, stat(left), stat(right), better, minRatio, digits, stat(left.map((v, i) => v / right[i]!)).median);
}

function fmt(s: Stat, digits: number): string {
  const f = (v: number) => v.toFixed(digits);
  return s.samples.length > 1 ? `${f(s.median)} (${f(s.min)}–${f(s.max)})` : f(s.median);
}

/** The columns are named `left`, `right` and their ratio `left / right`. */
export function renderTable(rows: Row[], left: string, right: string): string {
  const lines = [
    `| metric | ${left} | ${right} | ${left} / ${right} | goal | result |`,
    '|---|---:|---:|---:|---|---|',
  ];
  for (const r of rows) {
    const result = r.pass === undefined ? '' : r.pass ? 'PASS' : '**FAIL**';
    lines.push(`| ${r.metric} | ${fmt(r.left, r.digits)} | ${fmt(r.right, r.digits)} | ${r.ratio.toFixed(2)}× (${r.better} is better) | ${r.goal ?? ''} | ${result} |`);
  }
  return lines.join('\n');
}
