// Nothing buffers a blob: pushing and pulling a blob much larger than the allowed memory
// growth keeps the registry's resident size flat. The registry runs as its own process
// (the real CLI) so that the client's memory does not blur the measurement, and the
// kernel's high-water mark (VmHWM) catches any peak between samples.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { spawnRegistry, type RegistryProcess } from '../helpers/registry.js';

let reg: RegistryProcess;
before(async () => { reg = await spawnRegistry(); });
after(async () => { await reg?.stop(); if (reg) rmSync(reg.data, { recursive: true, force: true }); });

const MiB = 1024 * 1024;
const SIZE = 384 * MiB;
const ALLOWED_GROWTH = 128 * MiB;

/** Growth of the registry's peak RSS while `fn` runs. */
async function peakGrowth(fn: () => Promise<void>): Promise<number> {
  const hwm = () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${reg.child.pid}/status`, 'utf8'))![1]) * 1024;
  const base = hwm();
  await fn();
  return hwm() - base;
}

function source(hash: ReturnType<typeof createHash>): ReadableStream<Uint8Array> {
  const block = randomBytes(MiB);
  let sent = 0;
  return new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent >= SIZE) { c.close(); return; }
      // A fresh copy each time, varied, so nothing can be deduplicated or cached.
      const chunk = Buffer.from(block);
      chunk.writeUInt32BE(sent / MiB, 0);
      hash.update(chunk);
      sent += chunk.length;
      c.enqueue(chunk);
    },
  }, { highWaterMark: 2 });
}

test(`a ${SIZE / MiB} MiB blob goes up (streamed PATCH) and down with memory growth under ${ALLOWED_GROWTH / MiB} MiB`, async () => {
  const hash = createHash('sha256');
  let digest = '';
  const up = await peakGrowth(async () => {
    const post = await fetch(`${reg.url}/v2/big/blob/blobs/uploads/`, { method: 'POST' });
    const loc = post.headers.get('location')!;
    const patch = await fetch(reg.url + loc, { method: 'PATCH', body: source(hash), duplex: 'half' } as RequestInit);
    assert.equal(patch.status, 202);
    digest = `sha256:${hash.digest('hex')}`;
    const put = await fetch(`${reg.url}${patch.headers.get('location')}?digest=${digest}`, { method: 'PUT' });
    assert.equal(put.status, 201, await put.text());
  });
  const down = await peakGrowth(async () => {
    const r = await fetch(`${reg.url}/v2/big/blob/blobs/${digest}`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-length'), String(SIZE));
    const h = createHash('sha256');
    let n = 0;
    for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) { h.update(chunk); n += chunk.length; }
    assert.equal(n, SIZE);
    assert.equal(`sha256:${h.digest('hex')}`, digest);
  });
  process.stderr.write(`# rss growth: upload ${(up / MiB).toFixed(1)} MiB, download ${(down / MiB).toFixed(1)} MiB\n`);
  assert.ok(up < ALLOWED_GROWTH, `upload grew RSS by ${(up / MiB).toFixed(1)} MiB`);
  assert.ok(down < ALLOWED_GROWTH, `download grew RSS by ${(down / MiB).toFixed(1)} MiB`);
});
