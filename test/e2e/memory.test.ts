// A 1 GiB blob streams through the real CLI process in both directions without the
// registry (or this test) ever holding it in memory: peak RSS is read from /proc.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { after, before, test, type TestContext } from 'node:test';
import { spawnRegistry, type RegistryProcess } from '../helpers/registry.js';
import { MiB, Pattern, digestOfGet, send } from './stream.js';

const LIMIT_MB = 150;
let reg: RegistryProcess;

before(async () => { reg = await spawnRegistry(); });
after(async () => {
  await reg?.stop();
  if (reg) rmSync(reg.data, { recursive: true, force: true });
});

function memoryMB(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

/** Samples the registry's RSS every 50 ms while `fn` runs; returns the peaks seen. */
async function sampled<T>(fn: () => Promise<T>): Promise<{ result: T; maxRss: number; hwm: number }> {
  const pid = reg.child.pid!;
  let maxRss = 0;
  const timer = setInterval(() => { maxRss = Math.max(maxRss, memoryMB(pid).rss); }, 50);
  try {
    const result = await fn();
    return { result, maxRss, hwm: memoryMB(pid).hwm };
  } finally {
    clearInterval(timer);
  }
}

test('a 1 GiB blob is pushed (one streaming PATCH) and pulled back with the registry under 150 MB RSS', { timeout: 240_000 }, async (t: TestContext) => {
  const p = new Pattern(1024 * MiB);
  const repo = 'mem/big';
  const before = memoryMB(reg.child.pid!);

  const push = await sampled(async () => {
    const start = await send(`${reg.url}/v2/${repo}/blobs/uploads/`, 'POST');
    assert.equal(start.status, 202);
    // No Content-Length: chunked transfer encoding, as docker sends a layer.
    const stream = p.stream();
    const hasher = createHash('sha256');
    stream.on('data', (c: Buffer) => hasher.update(c));
    const t0 = performance.now();
    const patch = await send(`${reg.url}${start.headers.location!}`, 'PATCH', stream, { 'Content-Type': 'application/octet-stream' });
    assert.equal(patch.status, 202, patch.body);
    assert.equal(patch.headers.range, `0-${p.size - 1}`);
    const digest = `sha256:${hasher.digest('hex')}`;
    const loc = patch.headers.location!;
    const put = await send(`${reg.url}${loc}${loc.includes('?') ? '&' : '?'}digest=${digest}`, 'PUT');
    assert.equal(put.status, 201, put.body);
    return { digest, seconds: (performance.now() - t0) / 1000 };
  });

  const pull = await sampled(async () => {
    const t0 = performance.now();
    const r = await digestOfGet(`${reg.url}/v2/${repo}/blobs/${push.result.digest}`);
    return { ...r, seconds: (performance.now() - t0) / 1000 };
  });
  assert.equal(pull.result.status, 200);
  assert.equal(pull.result.bytes, p.size);
  assert.equal(pull.result.digest, push.result.digest);

  t.diagnostic(`RSS before ${before.rss.toFixed(0)} MB; push ${push.result.seconds.toFixed(1)} s, max RSS ${push.maxRss.toFixed(0)} MB; ` +
    `pull ${pull.result.seconds.toFixed(1)} s, max RSS ${pull.maxRss.toFixed(0)} MB; VmHWM ${pull.hwm.toFixed(0)} MB`);
  assert.ok(push.maxRss > 0 && pull.maxRss > 0, 'sampling worked');
  assert.ok(pull.hwm < LIMIT_MB, `registry peak RSS ${pull.hwm.toFixed(0)} MB exceeds ${LIMIT_MB} MB`);
  // And this test itself streamed too: its own heap never held the blob.
  assert.ok(process.memoryUsage().rss < 400 * MiB, `test process RSS ${(process.memoryUsage().rss / MiB).toFixed(0)} MB`);
});
