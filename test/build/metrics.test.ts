// Issue 11: what build on pull shows in /metrics and /readyz, against the real Nix CLI.
// A pull that builds counts a succeeded build with its duration and an evaluation; a
// build that fails counts a failed one; a pull served from storage counts none; the
// streamed build log is counted in response bytes; a build waiting for a slot is in the
// queue length; readiness reports Nix as working.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { requireTool } from '../helpers/exec.js';
import { scrape, scrapeUntil } from '../helpers/prometheus.js';
import { Images, errorOf, get, nixStr, nonce, startNixRegistry } from './helpers.js';

let images: Images;
let r: Awaited<ReturnType<typeof startNixRegistry>>;

before(async () => {
  await requireTool('nix-instantiate');
  await requireTool('nix-store');
  images = new Images();
  r = await startNixRegistry(images.dir);
});
after(async () => {
  await r?.stop();
  images?.cleanup();
});

test('a build on pull counts in nixreg_builds_total, its duration and evaluations; a stored image counts nothing', { timeout: 300_000 }, async () => {
  const start = await scrape(r.url);
  assert.equal(start.value('nixreg_builds_total', { result: 'succeeded' }), 0);
  assert.equal(start.value('nixreg_evaluations_total'), 0);

  images.image('hello.nix', { nonce: nonce(), greeting: 'metrics test' });
  const pulled = await get(`${r.url}/v2/hello/manifests/latest`);
  assert.equal(pulled.status, 200, pulled.text);
  const built = await scrape(r.url);
  assert.equal(built.value('nixreg_builds_total', { result: 'succeeded' }), 1);
  assert.equal(built.value('nixreg_builds_total', { result: 'failed' }), 0);
  assert.equal(built.value('nixreg_build_duration_seconds_count'), 1);
  assert.ok(built.value('nixreg_build_duration_seconds_sum')! > 0);
  assert.equal(built.value('nixreg_evaluations_total'), 1);
  assert.equal(built.value('nixreg_build_queue_length'), 0);
  // Layers, config and manifests of the image are in the index now.
  assert.ok(built.value('nixreg_storage_blobs')! >= 4, String(built.value('nixreg_storage_blobs')));
  assert.ok(built.value('nixreg_storage_bytes')! > 0);
  assert.equal(built.value('nixreg_http_requests_total', { method: 'GET', route: 'end-3', status: '200' }), 1);

  // The hash tag is served from storage: no build, no evaluation.
  const hash = ((await get(`${r.url}/v2/hello/tags/list`)).json().tags as string[]).find((t) => t !== 'latest')!;
  assert.equal((await get(`${r.url}/v2/hello/manifests/${hash}`)).status, 200);
  const again = await scrape(r.url);
  assert.equal(again.value('nixreg_builds_total', { result: 'succeeded' }), 1);
  assert.equal(again.value('nixreg_evaluations_total'), 1);

  const ready = await get(`${r.url}/readyz`);
  assert.equal(ready.status, 200, ready.text);
  assert.deepEqual(ready.json().checks.nix, { ok: true, state: 'ok' });
});

test('a failed build counts as failed; its streamed log counts in response bytes', { timeout: 300_000 }, async () => {
  images.image('broken.nix', { pkg: 'broken', nonce: nonce() });
  const res = await get(`${r.url}/v2/broken/manifests/latest`);
  assert.equal(res.status, 404, res.text);
  const logUrl = /build log: (\S+)/.exec(errorOf(res).message)?.[1];
  assert.ok(logUrl, errorOf(res).message);
  const before = (await scrape(r.url)).value('nixreg_http_response_bytes_total', { route: 'nixreg-build-log' }) ?? 0;
  const log = await get(logUrl);
  assert.equal(log.status, 200);
  // Sent without a Content-Length, so counted as written.
  assert.equal(log.headers.get('content-length'), null);
  // The log's last chunk can reach the client before its response ends on the server.
  const m = await scrapeUntil(r.url, (x) => (x.value('nixreg_http_response_bytes_total', { route: 'nixreg-build-log' }) ?? 0) !== before);
  assert.equal(m.value('nixreg_builds_total', { result: 'failed' }), 1);
  assert.equal(m.value('nixreg_builds_total', { result: 'succeeded' }), 1);
  assert.equal(m.value('nixreg_build_duration_seconds_count'), 2);
  assert.equal(m.value('nixreg_http_response_bytes_total', { route: 'nixreg-build-log' })! - before, Buffer.byteLength(log.text));
});

test('a build waiting for its slot (--max-builds 1) is in nixreg_build_queue_length', { timeout: 300_000 }, async () => {
  const one = await startNixRegistry(images.dir, { maxBuilds: 1 });
  try {
    for (const name of ['slow-a', 'slow-b']) {
      images.write(`${name}.nix`, `derivation {
  name = "${name}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" ${nixStr(`sleep 2; mkdir -p $out/share; echo ${nonce()} > $out/share/x`)} ];
}
`);
    }
    const pulls = ['slow-a', 'slow-b'].map((n) => get(`${one.url}/v2/${n}/manifests/latest`));
    let seen = 0;
    for (let i = 0; i < 100 && seen === 0; i++) {
      seen = (await scrape(one.url)).value('nixreg_build_queue_length')!;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(seen, 1, 'one build ran and the other waited');
    for (const p of await Promise.all(pulls)) assert.equal(p.status, 200, p.text);
    const m = await scrape(one.url);
    assert.equal(m.value('nixreg_build_queue_length'), 0);
    assert.equal(m.value('nixreg_builds_total', { result: 'succeeded' }), 2);
  } finally {
    await one.stop();
  }
});
