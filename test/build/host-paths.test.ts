// What a client is told about a failed image names the image file relative to --images
// and nixreg's own eval.nix by a neutral name: error messages and details, build records
// and build logs show no absolute host path but store paths.
import assert from 'node:assert/strict';
import { realpathSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { ROOT } from '../helpers/registry.js';
import { Images, errorOf, get, nixStr, nonce, startNixRegistry } from './helpers.js';

const images = new Images();
let r: Awaited<ReturnType<typeof startNixRegistry>>;
before(async () => { r = await startNixRegistry(images.dir); });
after(async () => { await r.stop(); images.cleanup(); });

/** Every absolute host path a leak would show: the images dir (as given and real), the checkout. */
const hostPaths = () => [...new Set([images.dir, realpathSync(images.dir), ROOT, realpathSync(ROOT)])];

function assertNoHostPath(what: string, text: string): void {
  for (const p of hostPaths()) assert.ok(!text.includes(p), `${what} shows the host path ${p}:\n${text}`);
}

async function failure(repo: string): Promise<{ message: string; detail: unknown }> {
  const res = await get(`${r.url}/v2/${repo}/manifests/latest`);
  assert.equal(res.status, 404, res.text);
  const e = (res.json() as { errors: { code: string; message: string; detail: unknown }[] }).errors[0]!;
  assert.equal(e.code, 'MANIFEST_UNKNOWN');
  assertNoHostPath(`the error of ${repo}`, JSON.stringify(e));
  return e;
}

test('a syntax error in a subfolder names sub/broken.nix', async () => {
  images.write('sub/broken.nix', '{ contents = [ ; }\n');
  const e = await failure('sub/broken');
  assert.match(e.message, /syntax error/);
  assert.match(e.message, /at sub\/broken\.nix:1:16/);
  assert.deepEqual(e.detail, { file: 'sub/broken.nix' });
});

test('a type error names the file; one that Nix places in eval.nix names <nixreg>/eval.nix', async () => {
  images.write('typed.nix', '{ contents = [ ]; config = { Cmd = [ (1 + "a") ]; }; }\n');
  const typed = await failure('typed');
  assert.match(typed.message, /cannot add a string to an integer/);
  assert.match(typed.message, /at typed\.nix:1:43/);
  assert.deepEqual(typed.detail, { file: 'typed.nix' });

  images.write('fake.nix', '{ contents = [ { type = "derivation"; } ]; }\n');
  const fake = await failure('fake');
  assert.match(fake.message, /attribute 'drvPath' missing/);
  assert.match(fake.message, /at <nixreg>\/eval\.nix:\d+:\d+/);

  // eval.nix's own messages quote the file they were given.
  images.write('sub/number.nix', '5\n');
  const num = await failure('sub/number');
  assert.match(num.message, /sub\/number\.nix must evaluate to an image spec/);
});

test('a failed build: its error, record and log name the file relative to --images', async () => {
  const n = nonce();
  images.write('sub/failing.nix', `derivation {
  name = "failing-${n}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" ${nixStr(`echo "failing on purpose ${n}" >&2; exit 3`)} ];
}
`);
  const e = await failure('sub/failing');
  assert.match(e.message, new RegExp(`-failing-${n}\\.drv`), 'store paths are shown');
  const logUrl = /build log: (\S+)/.exec(e.message)?.[1];
  assert.ok(logUrl, e.message);
  const log = await get(logUrl);
  assert.equal(log.status, 200);
  assert.match(log.text, new RegExp(`failing on purpose ${n}`));
  assert.match(log.text, /image sub\/failing from sub\/failing\.nix: \/nix\/store\//);
  assertNoHostPath('the build log', log.text);
  const records = await get(`${r.url}/nixreg/builds`);
  assert.ok(records.text.includes(`failing-${n}`));
  assertNoHostPath('the build records', records.text);
});
