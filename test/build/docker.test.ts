// Build on pull end to end: the real `nixreg` process, real Nix, a real Docker engine.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startContainerd } from '../helpers/containerd.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { CLI, ROOT, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { Images, OCI, PKGS, get, nonce } from './helpers.js';

let dockerd: Dockerd;
let reg: RegistryProcess;
let images: Images;

before(async () => {
  await requireTool('nix-store');
  images = new Images();
  [dockerd, reg] = await Promise.all([
    startDockerd(),
    spawnRegistry({ images: images.dir, env: NIX_TEST_ENV }),
  ]);
});
after(async () => {
  await Promise.allSettled([dockerd?.stop(), reg?.stop()]);
  if (reg) rmSync(reg.data, { recursive: true, force: true });
  images?.cleanup();
});

test('docker pull builds the image; docker run prints what its Cmd prints (store path references intact)', async () => {
  const greeting = `greetings ${nonce()}`;
  images.image('greeter.nix', { nonce: nonce(), greeting });
  const ref = `${reg.host}/greeter:latest`;
  await dockerd.docker(['pull', ref]);
  const out = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
  // /bin/hello is a script whose interpreter and data are other store paths of the closure.
  assert.equal(out.stdout.trim(), greeting);
  // The hash tag is pullable too, and is the same image.
  const tags = (await get(`${reg.url}/v2/greeter/tags/list`)).json().tags as string[];
  const hash = tags.find((t) => t !== 'latest')!;
  await dockerd.docker(['pull', `${reg.host}/greeter:${hash}`]);
  const ids = await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', ref, `${reg.host}/greeter:${hash}`]);
  const [a, b] = ids.stdout.trim().split('\n');
  assert.equal(a, b);
});

test('containerd pulls a built image (HEAD by tag, then GET by digest)', async () => {
  const containerd = await startContainerd();
  try {
    images.image('forctr.nix', { nonce: nonce() });
    const ref = `${reg.host}/forctr:latest`;
    await containerd.ctr(['image', 'pull', '--plain-http', ref]);
    const head = await get(`${reg.url}/v2/forctr/manifests/latest`, OCI, 'HEAD');
    const list = await containerd.ctr(['image', 'ls']);
    assert.match(list.stdout, new RegExp(`forctr:latest\\s+\\S+\\s+${head.headers.get('docker-content-digest')}`));
  } finally {
    await containerd.stop();
  }
});

test('store paths named only in config join the closure', async () => {
  const greeting = `from config ${nonce()}`;
  images.write('cfgref.nix', `let pkgs = import ${PKGS} { nonce = "${nonce()}"; greeting = "${greeting}"; }; in {
  contents = [ pkgs.busybox ];
  config.Entrypoint = [ "\${pkgs.hello}/bin/hello" ];
}
`);
  const ref = `${reg.host}/cfgref:latest`;
  await dockerd.docker(['pull', ref]);
  const out = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
  assert.equal(out.stdout.trim(), greeting);
});

test('docker shows evaluation and build errors; docker push to an expression repository is denied', async () => {
  images.write('typo.nix', '{ contents = [ undefinedThing ]; }\n');
  const typo = await dockerd.docker(['pull', `${reg.host}/typo:latest`], { check: false });
  assert.notEqual(typo.code, 0);
  assert.match(typo.stderr, /undefined variable 'undefinedThing'/);

  images.image('fails.nix', { pkg: 'broken', nonce: nonce() });
  const fails = await dockerd.docker(['pull', `${reg.host}/fails:latest`], { check: false });
  assert.notEqual(fails.code, 0);
  assert.match(fails.stderr, /-broken\.drv/);
  const url = /build log: (\S+)/.exec(fails.stderr)?.[1];
  assert.ok(url, fails.stderr);
  assert.match((await get(url)).text, /broken on purpose/);

  const nope = await dockerd.docker(['pull', `${reg.host}/nosuchimage:latest`], { check: false });
  assert.match(nope.stderr, /name unknown/);

  // Tag a local image as the expression repository and try to push it.
  images.image('readonly.nix', { nonce: '' });
  await dockerd.docker(['pull', `${reg.host}/greeter:latest`]);
  await dockerd.docker(['tag', `${reg.host}/greeter:latest`, `${reg.host}/readonly:mine`]);
  const push = await dockerd.docker(['push', `${reg.host}/readonly:mine`], { check: false });
  assert.notEqual(push.code, 0);
  assert.match(push.stderr + push.stdout, /denied|read-only/i);
});

test('the README quick start: examples/hello.nix pulls and runs', async () => {
  const ex = await spawnRegistry({ images: join(ROOT, 'examples'), env: NIX_TEST_ENV });
  try {
    const ref = `${ex.host}/hello:latest`;
    await dockerd.docker(['pull', ref]);
    const out = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
    assert.equal(out.stdout.trim(), 'Hello from an image Nix built on pull!');
  } finally {
    await ex.stop();
    rmSync(ex.data, { recursive: true, force: true });
  }
});

test('nixreg build builds ahead of time; serve then answers the hash without running Nix', async () => {
  const data = tempDir();
  images.image('ahead.nix', { nonce: nonce() });
  const built = await run(process.execPath, [CLI, 'build', '--data', data, '--images', images.dir, 'ahead'], { env: NIX_TEST_ENV });
  const m = /^([0-9a-z]{32}) (sha256:[0-9a-f]{64})\n$/.exec(built.stdout);
  assert.ok(m, `stdout: ${built.stdout}\nstderr: ${built.stderr}`);
  const again = await run(process.execPath, [CLI, 'build', '--data', data, '--images', images.dir, `ahead:${m[1]}`], { env: NIX_TEST_ENV });
  assert.equal(again.stdout, built.stdout);
  const bad = await run(process.execPath, [CLI, 'build', '--data', data, '--images', images.dir, 'nosuch'], { env: NIX_TEST_ENV, check: false });
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /no image expression for nosuch/);

  const srv = await spawnRegistry({ data, images: images.dir, env: NIX_TEST_ENV });
  try {
    const res = await get(`${srv.url}/v2/ahead/manifests/${m[1]}`);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.headers.get('content-type'), OCI);
    assert.equal(res.headers.get('docker-content-digest'), m[2]);
    const stats = (await get(`${srv.url}/nixreg/stats`)).json();
    assert.equal(stats.nixProcesses, 0);
    await dockerd.docker(['pull', `${srv.host}/ahead:${m[1]}`]);
    const out = await dockerd.docker(['run', '--rm', '--network', 'none', `${srv.host}/ahead:${m[1]}`]);
    assert.equal(out.stdout.trim(), 'hello from nixreg');
    assert.equal((await get(`${srv.url}/nixreg/stats`)).json().nixProcesses, 0);
  } finally {
    await srv.stop();
    rmSync(data, { recursive: true, force: true });
  }
});
