// bench/fuzz's probe, in a worker thread so that the fuzz client's own work (building
// and parsing requests on the main thread) does not show up as server latency: GET /v2/
// back to back on one keep-alive connection, for a given time or until told to stop.
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';

export interface ProbeResult { count: number; ms: number; latencies: number[] }

const { url, durationMs } = workerData as { url: string; durationMs?: number };
let stopped = false;
parentPort!.on('message', (m) => { if (m === 'stop') stopped = true; });

const u = new URL(url);
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
const latencies: number[] = [];
const t0 = performance.now();
const done = () => stopped || (durationMs !== undefined && performance.now() - t0 > durationMs);
while (!done()) {
  const s = performance.now();
  await new Promise<void>((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path: '/v2/', agent }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`GET /v2/ answered ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end();
  });
  latencies.push(performance.now() - s);
}
agent.destroy();
parentPort!.postMessage({ count: latencies.length, ms: performance.now() - t0, latencies } satisfies ProbeResult);
