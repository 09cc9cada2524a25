// Builds as jobs with the real `nixreg` process and real clients: docker shows the 429's
// message while a build runs and pulls once it is done; `nixreg build --remote` follows
// a build to its end (plain lines on a pipe, a bar on a terminal) and exits as it
// ended; a server killed by kill -9 mid-build leaves GC roots that the next start removes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run, waitFor } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { CLI, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { Images, sleeper } from './helpers.js';

let dockerd: Dockerd;
let reg: RegistryProcess;
let images: Images;

before(async () => {
  await requireTool('nix-store');
  await requireTool('script');
  images = new Images();
  [dockerd, reg] = await Promise.all([
    startDockerd(),
    spawnRegistry({ images: images.dir, env: NIX_TEST_ENV, args: ['--pull-wait', '3'] }),
  ]);
});
after(async () => {
  await Promise.allSettled([dockerd?.stop(), reg?.stop()]);
  if (reg) rmSync(reg.data, { recursive: true, force: true });
  images?.cleanup();
});

test('docker prints what a running build is doing, and pulls the image once it is built', { timeout: 180_000 }, async () => {
  images.write('wait.nix', sleeper('wait', 12));
  const ref = `${reg.host}/wait:latest`;
  const t0 = Date.now();
  const early = await dockerd.docker(['pull', ref], { check: false });
  assert.notEqual(early.code, 0, early.stdout);
  assert.match(early.stderr, new RegExp(`toomanyrequests: building wait:latest: building derivation 1 of 1, \\d+ s so far; log: ${reg.url}/nixreg/builds/[^/ ]+/log`), early.stderr);
  assert.ok(Date.now() - t0 < 12_000, 'docker was answered before the build ended');
  await waitFor('the build', async () => ((await dockerd.docker(['pull', ref], { check: false })).code === 0 ? true : undefined), 120_000);
  const stats = await (await fetch(`${reg.url}/nixreg/stats`)).json() as { buildsStarted: number };
  assert.equal(stats.buildsStarted, 1, 'every pull joined the one build');
});

test('nixreg build --remote follows the build to its end and exits with its status', { timeout: 180_000 }, async () => {
  images.write('remote.nix', sleeper('remote', 3));
  images.write('fails.nix', sleeper('fails', 1, true));
  const ok = await run(process.execPath, [CLI, 'build', '--remote', reg.url, 'remote:latest'], { env: NIX_TEST_ENV, check: false });
  assert.equal(ok.code, 0, ok.stderr);
  const m = /^([0-9a-z]{32}) (sha256:[0-9a-f]{64})\n$/.exec(ok.stdout);
  assert.ok(m, `stdout: ${ok.stdout}`);
  // A pipe gets plain lines: one per stage at least, and the end.
  assert.match(ok.stderr, /^remote:latest: building derivation 1 of 1 \(\d+ s\)$/m);
  assert.match(ok.stderr, /^remote:latest: done in \d+ s$/m);
  assert.doesNotMatch(ok.stderr, /\r|\x1b/, 'no terminal control on a pipe');
  const served = await fetch(`${reg.url}/v2/remote/manifests/${m[1]}`, { method: 'HEAD' });
  assert.equal(served.headers.get('docker-content-digest'), m[2]);

  const bad = await run(process.execPath, [CLI, 'build', '--remote', reg.url, 'fails'], { env: NIX_TEST_ENV, check: false });
  assert.equal(bad.code, 1, bad.stderr);
  assert.equal(bad.stdout, '');
  assert.match(bad.stderr, /nixreg: building fails:latest failed: building fails failed: .*-fails\.drv/);
  assert.match(bad.stderr, new RegExp(`log: ${reg.url}/nixreg/builds/[^/ ]+/log`));

  const unknown = await run(process.execPath, [CLI, 'build', '--remote', reg.url, 'nosuch'], { env: NIX_TEST_ENV, check: false });
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /404 nosuch is not built from an expression here/);
});

test('on a terminal nixreg build draws one line in place', { timeout: 120_000 }, async () => {
  images.write('tty.nix', sleeper('tty', 2));
  // script(1) gives the command a terminal, and copies what it drew to stdout.
  const cmd = [process.execPath, CLI, 'build', '--remote', reg.url, 'tty'].map((a) => `'${a}'`).join(' ');
  const r = await run('script', ['-qefc', cmd, '/dev/null'], { env: { ...NIX_TEST_ENV, COLUMNS: '120' } });
  assert.match(r.stdout, /\r\x1b\[Ktty:latest building derivation 1 of 1 · \d+ s/);
  assert.match(r.stdout, /tty:latest: done in \d+ s/);
  assert.match(r.stdout, /[0-9a-z]{32} sha256:[0-9a-f]{64}/);
});

test('GC roots of a server killed by kill -9 mid-build are removed at the next start; a live process keeps its own', { timeout: 180_000 }, async () => {
  const data = tempDir();
  const imgs = new Images();
  imgs.write('long.nix', sleeper('long', 60));
  // Another live process's roots (a `nixreg build` beside the server, say): kept.
  const other = spawn('sleep', ['300'], { stdio: 'ignore' });
  try {
    const stat = readFileSync(`/proc/${other.pid}/stat`, 'utf8');
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    const live = join(data, 'gcroots', `${other.pid}.${start}`, 'x');
    mkdirSync(live, { recursive: true });

    const first = await spawnRegistry({ data, images: imgs.dir, env: NIX_TEST_ENV, args: ['--pull-wait', '1'] });
    let rootDir: string;
    try {
      const mine = `${first.child.pid}.`;
      const res = await fetch(`${first.url}/v2/long/manifests/latest`);
      assert.equal(res.status, 429);
      // The build's directory of roots, made before Nix starts: Nix 2.8 adds the root itself
      // only once the realisation is done, and this build is killed long before.
      rootDir = await waitFor('the build\'s GC root directory', async () => {
        const owner = readdirSync(join(data, 'gcroots')).find((n) => n.startsWith(mine));
        if (!owner) return undefined;
        return readdirSync(join(data, 'gcroots', owner)).length > 0 ? join(data, 'gcroots', owner) : undefined;
      });
    } finally {
      await first.stop('SIGKILL');
    }
    assert.ok(existsSync(rootDir), 'kill -9 leaves the roots behind');

    const second = await spawnRegistry({ data, images: imgs.dir, env: NIX_TEST_ENV });
    try {
      await waitFor('the dead server\'s roots to go', async () => (existsSync(rootDir) ? undefined : true), 30_000);
      assert.ok(existsSync(live), 'a live process keeps its roots');
    } finally {
      await second.stop();
    }
  } finally {
    other.kill('SIGKILL');
    rmSync(data, { recursive: true, force: true });
    imgs.cleanup();
  }
});
