// A closed-loop HEAD load generator, because wrk 4.1 cannot do HEAD: its parser waits
// for the Content-Length bytes that a HEAD response never sends (wg/wrk issue 198).
// Raw sockets and a search for the end of the headers keep the client cheap; each
// connection sends its next request as soon as the previous response is complete.
import { connect, type Socket } from 'node:net';
import type { WrkResult } from './wrk.js';

export interface HeadLoadOptions {
  url: string;
  headers: Record<string, string>;
  seconds: number;
  connections: number;
}

const END = Buffer.from('\r\n\r\n');

export async function runHeadLoad(o: HeadLoadOptions): Promise<WrkResult> {
  const u = new URL(o.url);
  const lines = [`HEAD ${u.pathname}${u.search} HTTP/1.1`, `Host: ${u.host}`];
  for (const [k, v] of Object.entries(o.headers)) lines.push(`${k}: ${v}`);
  const request = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`);
  const latencies: number[] = [];
  let errors = 0;
  let stopping = false;
  const t0 = performance.now();
  const deadline = t0 + o.seconds * 1000;

  const one = (): Promise<void> => new Promise((resolve, reject) => {
    const sock: Socket = connect(Number(u.port), u.hostname);
    sock.setNoDelay(true);
    let pending: Buffer = Buffer.alloc(0);
    let sentAt = 0;
    const send = () => {
      if (stopping || performance.now() >= deadline) { stopping = true; sock.end(); return; }
      sentAt = performance.now();
      sock.write(request);
    };
    sock.on('connect', send);
    sock.on('data', (chunk: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let end: number;
      while ((end = pending.indexOf(END)) >= 0) {
        // "HTTP/1.1 200": the status code starts at byte 9.
        if (pending.toString('latin1', 9, 12) !== '200') errors++;
        latencies.push(performance.now() - sentAt);
        pending = pending.subarray(end + END.length);
        send();
      }
    });
    sock.on('error', reject);
    sock.on('close', () => resolve());
  });

  await Promise.all(Array.from({ length: o.connections }, one));
  const elapsed = (performance.now() - t0) / 1000;
  if (errors) throw new Error(`HEAD ${o.url}: ${errors} responses were not 200`);
  if (!latencies.length) throw new Error(`HEAD ${o.url}: no responses`);
  latencies.sort((a, b) => a - b);
  const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]!;
  return { rps: latencies.length / elapsed, requests: latencies.length, p50ms: q(0.5), p99ms: q(0.99) };
}
