// The Nix adapter against the real CLI: evaluation results, closure queries, error text;
// plus the platform mapping and the build settings.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { platformOf } from '../../src/build/spec.js';
import { essentialError } from '../../src/build/nix/nix-errors.js';
import { closureOf, evaluateImage, hashPart, nixProcessCount, parseDumpDb, realise } from '../../src/build/nix/nix.js';
import { buildConfig } from '../../src/config.js';
import { requireTool } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { tempDir } from '../helpers/registry.js';
import { Images, nonce } from './helpers.js';

let images: Images;
before(async () => { await requireTool('nix-instantiate'); images = new Images(); });
after(() => images?.cleanup());

test('evaluation applies defaults, lists contents, and hashes the spec deterministically', async () => {
  const n = nonce();
  const f = images.image('e.nix', { nonce: n });
  const a = await evaluateImage({ file: f }, { env: NIX_TEST_ENV });
  assert.equal(a.kind, 'spec');
  assert.equal(a.maxLayers, 100);
  assert.equal(a.created, '1970-01-01T00:00:01Z');
  assert.equal(a.contents.length, 1);
  assert.match(a.contents[0]!.drv, /-hello\.drv$/);
  assert.match(a.contents[0]!.out, /-hello$/);
  const again = await evaluateImage({ file: f }, { env: NIX_TEST_ENV });
  assert.equal(again.imagePath, a.imagePath);
  // Any change to the spec, even a default made explicit with another value, moves the hash.
  const g = images.image('g.nix', { nonce: n, extra: 'maxLayers = 50;' });
  assert.notEqual((await evaluateImage({ file: g }, { env: NIX_TEST_ENV })).imagePath, a.imagePath);
  const same = images.image('s.nix', { nonce: n, extra: 'maxLayers = 100;' });
  assert.equal((await evaluateImage({ file: same }, { env: NIX_TEST_ENV })).imagePath, a.imagePath, 'defaults are part of the hash');
});

test('bare derivations and lists are contents; functions with defaults are auto-called', async () => {
  const drv = images.write('drv.nix', `{ n ? "${nonce()}" }: derivation { name = "one"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; inherit n; }\n`);
  const r = await evaluateImage({ file: drv }, { env: NIX_TEST_ENV });
  assert.equal(r.kind, 'derivation');
  assert.equal(r.contents.length, 1);
  const list = images.write('list.nix', `let m = x: derivation { name = x; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }; in [ (m "a") (m "b") ]\n`);
  const l = await evaluateImage({ file: list }, { env: NIX_TEST_ENV });
  assert.equal(l.kind, 'list');
  assert.deepEqual(l.contents.map((c) => c.name), ['a', 'b']);
});

test('closure: requisites with sizes and references, in two processes', async () => {
  const f = images.image('c.nix', { nonce: nonce() });
  const ev = await evaluateImage({ file: f }, { env: NIX_TEST_ENV });
  const roots = tempDir('nixreg-roots-');
  await realise(ev.contents.map((c) => c.drv), `${roots}/r`, { env: NIX_TEST_ENV });
  const before = nixProcessCount();
  const closure = await closureOf([ev.contents[0]!.out], { env: NIX_TEST_ENV });
  assert.equal(nixProcessCount() - before, 2);
  const names = closure.map((p) => p.path.replace(/^.*?-/, '')).sort();
  assert.deepEqual(names, ['busybox', 'greetlib', 'hello']);
  const hello = closure.find((p) => p.path.endsWith('-hello'))!;
  assert.deepEqual(hello.references.map((p) => p.replace(/^.*?-/, '')).sort(), ['busybox', 'greetlib']);
  assert.ok(closure.every((p) => p.narSize > 0));
  assert.equal(hashPart(hello.path).length, 32);
  rmSync(roots, { recursive: true, force: true });
});

test('parseDumpDb reads the registration format, including paths without references or deriver', () => {
  const text = [
    '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a', 'sha256:00', '120', '', '0',
    '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b', 'sha256:11', '456', '/nix/store/cccccccccccccccccccccccccccccccc-b.drv', '2',
    '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a', '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b', '',
  ].join('\n');
  assert.deepEqual(parseDumpDb(text), [
    { path: '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a', narSize: 120, references: [] },
    { path: '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b', narSize: 456,
      references: ['/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a', '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b'] },
  ]);
  assert.throws(() => parseDumpDb('garbage\nx\ny\nz\nw\n'));
});

test('essentialError keeps the error and its excerpt, not the trace or colours', () => {
  const stderr = [
    'warning: you did not specify --add-root',
    '\x1b[31;1merror:\x1b[0m',
    '       … while evaluating the attribute',
    'error: undefined variable \'x\'',
    '',
    '       at /images/a.nix:1:3:',
    '            1| [ x ]',
    '             |   ^',
    '',
  ].join('\n');
  const e = essentialError(stderr);
  assert.match(e, /^error: undefined variable 'x'/);
  assert.match(e, /a\.nix:1:3/);
  assert.doesNotMatch(e, /warning|while evaluating|\x1b/);
});

test('platforms and build settings', () => {
  assert.deepEqual(platformOf('x86_64-linux'), { architecture: 'amd64', os: 'linux' });
  assert.deepEqual(platformOf('aarch64-linux'), { architecture: 'arm64', os: 'linux' });
  const gzip6 = { kind: 'gzip', gzipLevel: 6 };
  assert.deepEqual(buildConfig({}, {}), { buildTimeoutMs: 600_000, maxBuilds: 2, evalTtlMs: 10_000, negativeTtlMs: 30_000, pullWaitMs: 25_000, compression: gzip6 });
  assert.deepEqual(buildConfig({ maxBuilds: '4' }, { NIXREG_BUILD_TIMEOUT: '60', NIXREG_EVAL_TTL: '0', NIXREG_PULL_WAIT: '5' }),
    { buildTimeoutMs: 60_000, maxBuilds: 4, evalTtlMs: 0, negativeTtlMs: 30_000, pullWaitMs: 5_000, compression: gzip6 });
  // A flag wins over its variable; the variable over the default.
  assert.deepEqual(buildConfig({ gzipLevel: '9' }, { NIXREG_LAYER_COMPRESSION: 'None', NIXREG_GZIP_LEVEL: '1' }).compression, { kind: 'none', gzipLevel: 9 });
  assert.deepEqual(buildConfig({ layerCompression: 'gzip' }, { NIXREG_LAYER_COMPRESSION: 'none' }).compression, gzip6);
  assert.throws(() => buildConfig({ layerCompression: 'zstd' }, {}), /--layer-compression must be one of gzip, none/);
  assert.throws(() => buildConfig({ gzipLevel: '0' }, {}), /--gzip-level must be a whole number from 1 to 9/);
  assert.throws(() => buildConfig({ pullWait: '0' }, {}), /--pull-wait must be a whole number of seconds >= 1/);
  assert.throws(() => buildConfig({ maxBuilds: '0' }, {}), /--max-builds/);
  assert.throws(() => buildConfig({ buildTimeout: '10m' }, {}), /--build-timeout/);
});
