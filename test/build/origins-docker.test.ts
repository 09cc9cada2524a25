// docker pull + run of each kind of image that needs no image file: a package list
// (shell added), a package list pinned to a git commit, and a flake output; through the
// real `nixreg serve --packages`.
import assert from 'node:assert/strict';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { Images, PKGS } from './helpers.js';

let dockerd: Dockerd;
let reg: RegistryProcess;
let images: Images;
let gitDir: string;
const commits: string[] = [];

before(async () => {
  await requireTool('nix-store');
  await requireTool('git');
  images = new Images();
  cpSync(PKGS, join(images.dir, 'pkgs'), { recursive: true });
  images.write('flake.nix', `{
  outputs = { self }: { packages.\${builtins.currentSystem}.flaky = (import ./pkgs { greeting = "hello from a flake output"; }).hello; };
}
`);
  // The package set in git, its greeting changed by a second commit.
  gitDir = tempDir('nixreg-pkgs-git-');
  const git = (...args: string[]) => run('git', ['-C', gitDir, '-c', 'user.name=t', '-c', 'user.email=t@example.org', ...args]);
  await git('init', '-q', '-b', 'main');
  for (const g of ['greeting of the first commit', 'greeting of the second commit']) {
    writeFileSync(join(gitDir, 'default.nix'), readFileSync(join(PKGS, 'default.nix'), 'utf8').replace('greeting ? "hello from nixreg"', `greeting ? ${JSON.stringify(g)}`));
    await git('add', '-A');
    await git('commit', '-q', '-m', g);
    commits.push((await git('rev-parse', 'HEAD')).stdout.trim());
  }
  [dockerd, reg] = await Promise.all([
    startDockerd(),
    spawnRegistry({ images: images.dir, env: NIX_TEST_ENV, args: ['--packages', `git+file://${gitDir}`] }),
  ]);
});
after(async () => {
  await Promise.allSettled([dockerd?.stop(), reg?.stop()]);
  if (reg) rmSync(reg.data, { recursive: true, force: true });
  if (gitDir) rmSync(gitDir, { recursive: true, force: true });
  images?.cleanup();
});

const runIn = async (ref: string, cmd: string[]) =>
  (await dockerd.docker(['run', '--rm', '--network', 'none', ref, ...cmd])).stdout.trim();

test('docker pulls and runs a package list; shell adds the shell packages the set has', { timeout: 300_000 }, async () => {
  const ref = `${reg.host}/shell/hello/pythonpackages.flask:latest`;
  await dockerd.docker(['pull', ref]);
  assert.equal(await runIn(ref, ['/bin/flask']), 'flask stand-in, greeting: greeting of the second commit');
  assert.equal(await runIn(ref, ['/bin/hello']), 'greeting of the second commit');
  // bashInteractive and coreutils are in this set; moreutils and nano are not.
  const bin = (await runIn(ref, ['/bin/ls', '/bin'])).split(/\s+/);
  for (const b of ['bash', 'ls', 'cat', 'hello', 'flask']) assert.ok(bin.includes(b), `${b} in /bin: ${bin.join(' ')}`);
  // Cmd is bash: a shell with no arguments reads its commands from stdin.
  const piped = await run('docker', ['run', '--rm', '-i', '--network', 'none', ref], { env: dockerd.env, input: 'echo from bash\n' });
  assert.equal(piped.stdout.trim(), 'from bash');
});

test('docker runs the packages of a pinned commit, and of HEAD for latest', { timeout: 300_000 }, async () => {
  const old = `${reg.host}/hello:${commits[0]}`;
  await dockerd.docker(['pull', old]);
  assert.equal(await runIn(old, ['/bin/hello']), 'greeting of the first commit');
  const latest = `${reg.host}/hello:latest`;
  await dockerd.docker(['pull', latest]);
  assert.equal(await runIn(latest, ['/bin/hello']), 'greeting of the second commit');
});

test('docker pulls and runs a flake output', { timeout: 300_000 }, async () => {
  const ref = `${reg.host}/flaky:latest`;
  await dockerd.docker(['pull', ref]);
  assert.equal(await runIn(ref, ['/bin/hello']), 'hello from a flake output');
});
