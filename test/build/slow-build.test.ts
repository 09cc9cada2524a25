// The connection watchdog (src/registry/connections.ts) cuts clients that stall, not
// pulls that wait for a build: a build longer than every connection timeout is served.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Images, OCI, get, nonce, nixStr, startNixRegistry } from './helpers.js';

let images: Images;
let reg: Awaited<ReturnType<typeof startNixRegistry>>;
before(async () => {
  images = new Images();
  images.write('slow.nix', `derivation {
  name = "slow"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" ${nixStr(`sleep 4; mkdir -p $out/share; echo ${nonce()} > $out/share/slow`)} ];
}
`);
  reg = await startNixRegistry(images.dir, {}, undefined, { limits: { headersMs: 1000, idleMs: 1000, bodyMs: 1000 } });
});
after(async () => { await reg?.stop(); images?.cleanup(); });

test('a pull that waits 4 s for its build is answered though every connection timeout is 1 s', async () => {
  const t0 = Date.now();
  const r = await get(`${reg.url}/v2/slow/manifests/latest`, OCI);
  assert.equal(r.status, 200, r.text);
  assert.ok(Date.now() - t0 >= 4000, 'the build did not run');
  assert.equal((r.json() as { mediaType: string }).mediaType, OCI);
});
