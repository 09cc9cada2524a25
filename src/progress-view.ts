// How `nixreg build` shows a build as it goes: on a terminal one line redrawn in place
// (stage, layers done of total, bytes packed with throughput and ETA); on a pipe or a
// file plain lines, one per stage and at most one every few seconds between, so that a
// CI log stays readable.
//
// Composition root: may import every room; no room imports it.
import { stageWords, type JobView } from './build/jobs/jobs.js';

const PIPE_EVERY_MS = 5000;
const BAR = 20;

export function formatBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function formatSeconds(s: number): string {
  s = Math.round(s);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

export class ProgressView {
  private lastLine = '';
  private lastStage = '';
  private lastPrinted = 0;
  private drawn = false;
  /** Bytes and time of an earlier snapshot, for the throughput. */
  private sample: { bytes: number; t: number } | undefined;
  private rate = 0;

  constructor(private readonly out: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }, private readonly name: string) {}

  private get tty(): boolean { return !!this.out.isTTY; }

  /** What the build is doing, in words. */
  private doing(v: JobView): string {
    const p = v.progress;
    switch (v.status) {
      case 'assembling': {
        const parts = [stageWords(p)];
        if (p.bytes.total) {
          parts.push(`${formatBytes(p.bytes.done)} of ${formatBytes(p.bytes.total)}`);
          if (this.rate > 0) {
            parts.push(`${formatBytes(this.rate)}/s`);
            parts.push(`ETA ${formatSeconds((p.bytes.total - p.bytes.done) / this.rate)}`);
          }
        }
        return parts.join(' · ');
      }
      case 'done': return `done: ${v.hash} ${v.digest}`;
      case 'failed': return 'failed';
      default: return stageWords(p);
    }
  }

  update(v: JobView): void {
    const now = Date.now();
    const b = v.progress.bytes;
    if (v.status === 'assembling') {
      if (this.sample && now > this.sample.t && b.done >= this.sample.bytes) {
        const r = (b.done - this.sample.bytes) / ((now - this.sample.t) / 1000);
        // Smoothed: layers finish in bursts.
        this.rate = this.rate ? 0.7 * this.rate + 0.3 * r : r;
      }
      this.sample = { bytes: b.done, t: now };
    }
    const doing = this.doing(v);
    if (this.tty) {
      const pct = v.status === 'assembling' && b.total ? b.done / b.total : undefined;
      const bar = pct === undefined ? '' : `[${'#'.repeat(Math.round(pct * BAR)).padEnd(BAR, '-')}] ${Math.floor(pct * 100)}% `;
      let line = `${this.name} ${bar}${doing} · ${formatSeconds(v.seconds)}`;
      // A terminal of unknown size (a pty nobody sized) reports 0 columns.
      const width = (this.out.columns || Number(process.env.COLUMNS) || 100) - 1;
      if (line.length > width) line = line.slice(0, Math.max(10, width));
      if (line !== this.lastLine) { this.out.write(`\r\x1b[K${line}`); this.lastLine = line; this.drawn = true; }
      return;
    }
    const stageChanged = v.status !== this.lastStage;
    if (stageChanged || now - this.lastPrinted >= PIPE_EVERY_MS) {
      const line = `${this.name}: ${doing} (${formatSeconds(v.seconds)})`;
      if (line !== this.lastLine) { this.out.write(`${line}\n`); this.lastLine = line; this.lastPrinted = now; }
      this.lastStage = v.status;
    }
  }

  /** The last word: the final state on its own line. */
  end(v: JobView): void {
    if (this.tty && this.drawn) this.out.write('\r\x1b[K');
    const line = v.status === 'failed'
      ? `${this.name}: failed after ${formatSeconds(v.seconds)}`
      : `${this.name}: done in ${formatSeconds(v.seconds)}`;
    this.out.write(`${line}\n`);
  }
}
