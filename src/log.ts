// The process's logger: pino, JSON lines on stdout, level from NIXREG_LOG_LEVEL.
//
// Why not pino's default destination: when whoever reads our stdout dies, every write
// fails with EPIPE, and its synchronous flush (run at exit) retries such a write forever,
// so `nixreg serve` would never stop on SIGTERM again. Here a broken stdout ends logging
// instead, and a full pipe is waited for briefly, then the line is dropped and counted:
// a slow log reader must not stall every request. A stdout redirected to a file on a
// full disk drops lines only while the disk is full: logging resumes with the space.
//
// Composition root: may import every room; no room imports it.
import { writeSync } from 'node:fs';
import { pino } from 'pino';

const pause = new Int32Array(new SharedArrayBuffer(4));

export const stdoutSink = {
  /** Always 1 here; a test points a copy of the sink at another file. */
  fd: 1,
  broken: false,
  dropped: 0,
  write(line: string): void {
    if (this.broken) { this.dropped++; return; }
    let buf = Buffer.from(line);
    for (let tries = 0; buf.length > 0;) {
      try {
        buf = buf.subarray(writeSync(this.fd, buf));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code === 'EAGAIN' || code === 'EBUSY') && ++tries <= 50) { Atomics.wait(pause, 0, 0, 2); continue; }
        if (code !== 'EAGAIN' && code !== 'EBUSY' && code !== 'ENOSPC' && code !== 'EDQUOT') this.broken = true;
        this.dropped++;
        return;
      }
    }
  },
};

export const log = pino({ level: process.env.NIXREG_LOG_LEVEL ?? 'info', base: undefined }, stdoutSink);
export type { Logger } from 'pino';
