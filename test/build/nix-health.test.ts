// Whether Nix can build here, and what a user is told when it cannot: the start-up
// probe against real Nix set up wrong in the ways a fresh machine is (no build users,
// no daemon, no Nix at all), and `nixreg serve` answering a pull with the diagnosis
// while plain push and pull go on, then recovering once the machine is fixed.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { NixUnavailable } from '../../src/build/errors.js';
import { NixHealth, diagnose } from '../../src/build/nix/nix-health.js';
import { NixError } from '../../src/build/nix/nix.js';
import { pushImage } from '../api/util.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { ROOT, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { run } from '../helpers/exec.js';
import { OCI, errorOf, get, nonce } from './helpers.js';

const NO_GROUP = 'nixreg-test-no-such-group';
const dirs: string[] = [];
const regs: RegistryProcess[] = [];
after(async () => {
  for (const r of regs) await r.stop('SIGKILL');
  for (const d of [...dirs, ...regs.map((r) => r.data)]) rmSync(d, { recursive: true, force: true });
});

/** A Nix configuration directory (NIX_CONF_DIR) whose nix.conf the test can rewrite. */
function confDir(conf: string): { dir: string; write(conf: string): void } {
  const dir = tempDir('nixreg-nixconf-');
  dirs.push(dir);
  mkdirSync(dir, { recursive: true });
  const write = (c: string) => writeFileSync(join(dir, 'nix.conf'), c);
  write(conf);
  return { dir, write };
}

async function verdict(env: NodeJS.ProcessEnv): Promise<NixUnavailable | 'ok'> {
  try {
    await new NixHealth({ env }).ready();
    return 'ok';
  } catch (e) {
    assert.ok(e instanceof NixUnavailable, `a NixUnavailable, got ${String(e)}`);
    return e;
  }
}

test('the probe: Nix set up for the tests builds; each broken set-up is named with its fix', { timeout: 120_000 }, async () => {
  assert.equal(await verdict(NIX_TEST_ENV), 'ok');

  const group = await verdict({ ...NIX_TEST_ENV, NIX_CONFIG: `${NIX_TEST_ENV.NIX_CONFIG}\nbuild-users-group = ${NO_GROUP}` });
  assert.notEqual(group, 'ok');
  if (group === 'ok') return;
  assert.match(group.problem, new RegExp(`group '${NO_GROUP}' \\(build-users-group\\), and that group does not exist`));
  assert.match(group.fix, /apt-get install nix-setup-systemd/);
  assert.match(group.fix, /groupadd --system nixbld/);

  const daemon = await verdict({ ...NIX_TEST_ENV, NIX_REMOTE: 'daemon', NIX_DAEMON_SOCKET_PATH: '/nonexistent/nixreg-test/socket' });
  assert.ok(daemon !== 'ok' && /no daemon listens/.test(daemon.problem), String(daemon));

  const missing = await verdict({ ...NIX_TEST_ENV, PATH: '/nonexistent' });
  assert.ok(missing !== 'ok' && /Nix is not installed/.test(missing.problem), String(missing));
  assert.match(missing.fix, /apt-get install nix-bin/);
});

test('diagnoses of failures the probe cannot stage here; a failing build of the image itself is none', () => {
  const nix = (stderr: string) => new NixError(stderr.split('\n').at(-1)!, stderr, 1);
  assert.match(diagnose(nix('error: cloning builder process: Operation not permitted'))!.fix, /sandbox = false/);
  assert.match(diagnose(nix("error: could not set permissions on '/nix/var/nix/profiles/per-user' to 755: Operation not permitted"))!.problem,
    /cannot write the Nix store/);
  assert.match(diagnose(nix("error: the build users group 'nixbld' has no members"))!.fix, /useradd/);
  // max-jobs = 0 and no builders, as Nix 2.8 and 2.26 say it; with builders that cannot take one image, none.
  for (const text of ["error: unable to start any build; either increase '--max-jobs' or enable remote builds.\nhttps://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html",
    "error:\n       Unable to start any build;\n       either increase '--max-jobs' or enable remote builds.\n       For more information run 'man nix.conf' and search for '/machines'."]) {
    assert.match(diagnose(nix(text))!.problem, /max-jobs = 0.*no remote builders/, text);
  }
  assert.equal(diagnose(nix("error: unable to start any build; remote machines may not have all required system features.")), undefined);
  assert.equal(diagnose(nix("error: opening file '/home/u/x.nix': Permission denied")), undefined, 'a file some expression reads');
  assert.equal(diagnose(nix("error: builder for '/nix/store/abc-x.drv' failed with exit code 1")), undefined);
  assert.equal(diagnose(new Error('not from Nix')), undefined);
});

test('serve on a machine without build users: one warning, pulls name the problem and the fix, push and pull work; fixed without a restart', { timeout: 180_000 }, async () => {
  const conf = confDir(`build-users-group = ${NO_GROUP}\n`);
  const reg = await spawnRegistry({ images: join(ROOT, 'examples'), env: { ...NIX_TEST_ENV, NIX_CONF_DIR: conf.dir } });
  regs.push(reg);
  const warnings = () => reg.logs().split('\n').filter((l) => l.includes('Nix cannot build images'));
  // The check runs after start-up, without holding it up.
  const deadline = Date.now() + 60_000;
  while (warnings().length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.equal(warnings().length, 1, reg.logs());
  assert.ok(reg.logs().indexOf('nixreg listening') < reg.logs().indexOf('Nix cannot build images'), 'listening first');
  assert.match(warnings()[0]!, new RegExp(`${NO_GROUP}.*does not exist.*nix-setup-systemd`));
  const stats = (await get(`${reg.url}/nixreg/stats`)).json();
  assert.equal(stats.nix.state, 'failed');
  assert.match(stats.nix.problem, new RegExp(NO_GROUP));
  assert.equal(stats.nixProcesses, 0, 'the probe\'s processes are counted apart');
  assert.ok(stats.nixProbeProcesses >= 2);

  for (const method of ['GET', 'HEAD']) {
    const r = await get(`${reg.url}/v2/hello/manifests/latest`, OCI, method);
    assert.equal(r.status, 404, `${method}: ${r.text}`);
  }
  const pull = await get(`${reg.url}/v2/hello/manifests/latest`);
  const e = errorOf(pull);
  assert.equal(e.code, 'MANIFEST_UNKNOWN');
  assert.match(e.message, new RegExp(`cannot build images: .*'${NO_GROUP}' \\(build-users-group\\), and that group does not exist`));
  assert.match(e.message, /To fix it: .*apt-get install nix-setup-systemd.*groupadd --system nixbld/);
  assert.doesNotMatch(e.message, /^error:|\/nix\/store\//m, 'a diagnosis, not a Nix trace');

  // Plain push and pull need no Nix.
  const pushed = await pushImage(reg.url, 'plain/app', 'v1');
  const back = await get(`${reg.url}/v2/plain/app/manifests/v1`);
  assert.equal(back.status, 200);
  assert.equal(back.text, pushed.manifest.toString());

  // Fixed: the next pull after the re-check interval builds, and nothing had to restart.
  conf.write('');
  await new Promise((r) => setTimeout(r, 5200));
  const fixed = await get(`${reg.url}/v2/hello/manifests/latest`);
  assert.equal(fixed.status, 200, fixed.text);
  assert.match(reg.logs(), /Nix can build images again/);
  assert.equal((await get(`${reg.url}/nixreg/stats`)).json().nix.state, 'ok');
  assert.equal(warnings().length, 1, 'one warning for one problem, however many pulls met it');
});

test('serve where Nix is not installed says so on a pull', { timeout: 60_000 }, async () => {
  const reg = await spawnRegistry({ images: join(ROOT, 'examples'), env: { ...NIX_TEST_ENV, PATH: '/nonexistent' } });
  regs.push(reg);
  const e = errorOf(await get(`${reg.url}/v2/hello/manifests/latest`));
  assert.equal(e.code, 'MANIFEST_UNKNOWN');
  assert.match(e.message, /Nix is not installed.*To fix it: install Nix: on Debian, `apt-get install nix-bin`/);
});

test('a builder that runs /bin/sh under Nix\'s sandbox: a hint to turn the sandbox off, unless this Nix maps /bin/sh into it', { timeout: 60_000 }, async () => {
  const images = tempDir('nixreg-images-');
  dirs.push(images);
  // New to the store (nonce), so Nix must build it, in the sandbox this time.
  const sh = () => `derivation { name = "sh-${nonce()}"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }\n`;
  // Debian's Nix 2.26 (like NixOS's) is built with `sandbox-paths = /bin/sh=…` (a static
  // shell); Debian 12's 2.8 with none. Either way nothing is mapped where it is emptied.
  const config = (await run('nix', ['--extra-experimental-features', 'nix-command', 'show-config'], { env: NIX_TEST_ENV })).stdout;
  const mapped = /^sandbox-paths = .*\/bin\/sh=/m.test(config);
  for (const [paths, hidden] of [['sandbox-paths =\n', true], ['', !mapped]] as const) {
    writeFileSync(join(images, 'sh.nix'), sh());
    const reg = await spawnRegistry({ images, env: { ...NIX_TEST_ENV, NIX_CONFIG: `substituters =\nsandbox = true\n${paths}` } });
    regs.push(reg);
    const res = await get(`${reg.url}/v2/sh/manifests/latest`);
    if (!hidden) { assert.equal(res.status, 200, `this Nix maps /bin/sh into the sandbox: ${res.text}`); continue; }
    const e = errorOf(res);
    assert.equal(e.code, 'MANIFEST_UNKNOWN');
    assert.match(e.message, /building sh failed: .*its builder runs \/bin\/sh, a program outside the Nix store, which Nix's build sandbox hides: set `sandbox = false`/);
  }
});

test('an evaluation that meets an environment problem is diagnosed too, and retried once it is fixed', { timeout: 120_000 }, async () => {
  // Nix set to go through a daemon that is not there: even evaluation (which writes
  // .drv files) fails, before any build.
  const conf = confDir('store = daemon\n');
  const reg = await spawnRegistry({ images: join(ROOT, 'examples'), env: { ...NIX_TEST_ENV, NIX_CONF_DIR: conf.dir } });
  regs.push(reg);
  const e = errorOf(await get(`${reg.url}/v2/hello/manifests/latest`));
  assert.equal(e.code, 'MANIFEST_UNKNOWN');
  assert.match(e.message, /no daemon listens at .*To fix it: start the daemon/);
  conf.write('');
  await new Promise((r) => setTimeout(r, 5200));
  const fixed = await get(`${reg.url}/v2/hello/manifests/latest`);
  assert.equal(fixed.status, 200, fixed.text);
});
