// Images without writing a file, against real Nix and git: package lists of --packages
// (a path, or a git repository whose tags pin revisions) and flake outputs. The docker
// pull + run of each kind is in origins-docker.test.ts.
import assert from 'node:assert/strict';
import { cpSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { nixProcessCount } from '../../src/build/nix/nix.js';
import { PackageSource, closest, packageList } from '../../src/build/origins/origins.js';
import { buildConfig } from '../../src/config.js';
import { pushImage } from '../api/util.js';
import { run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { tempDir } from '../helpers/registry.js';
import { Images, OCI, PKGS, errorOf, get, startNixRegistry } from './helpers.js';

/** A git repository holding the test package set, with `greeting` defaulting to each of `greetings` in turn (a commit each). */
async function packageRepo(greetings: string[]): Promise<{ dir: string; commits: string[] }> {
  const dir = tempDir('nixreg-pkgs-git-');
  const git = (...args: string[]) => run('git', ['-C', dir, '-c', 'user.name=test', '-c', 'user.email=test@example.org', ...args]);
  await git('init', '-q', '-b', 'main');
  const commits: string[] = [];
  for (const g of greetings) {
    cpSync(join(PKGS, 'default.nix'), join(dir, 'default.nix'));
    const text = readFileSync(join(dir, 'default.nix'), 'utf8').replace('greeting ? "hello from nixreg"', `greeting ? ${JSON.stringify(g)}`);
    assert.notEqual(text, readFileSync(join(PKGS, 'default.nix'), 'utf8'), 'the fixture names its default greeting');
    writeFileSync(join(dir, 'default.nix'), text);
    await git('add', '-A');
    await git('commit', '-q', '-m', g);
    commits.push((await git('rev-parse', 'HEAD')).stdout.trim());
  }
  return { dir, commits };
}

test('a package list is its names sorted and deduplicated; shell leads', () => {
  assert.deepEqual(packageList('htop/git/htop'), { names: ['git', 'htop'], shell: false });
  assert.deepEqual(packageList('shell/htop'), { names: ['htop'], shell: true });
  assert.deepEqual(closest('helo', ['hello', 'help', 'date', 'hellos']), ['hello', 'help'], 'within a third of the length');
  assert.deepEqual(closest('pythn3packages', ['python3Packages', 'python2Packages', 'perlPackages']), ['python3Packages', 'python2Packages']);
  assert.deepEqual(closest('zzz', ['hello']), []);
});

test('--packages names a path, an entry of NIX_PATH or a git repository; anything else is a start-up error', () => {
  assert.deepEqual([PackageSource.parse('<nixpkgs>').kind, PackageSource.parse('<nixpkgs>').location], ['nixpath', 'nixpkgs']);
  assert.deepEqual([PackageSource.parse('git+file:///srv/p').kind, PackageSource.parse('git+file:///srv/p').location], ['git', 'file:///srv/p']);
  assert.equal(PackageSource.parse('./pkgs').kind, 'path');
  assert.throws(() => buildConfig({ packages: 'git+ftp://x/y' }, {}), /a git source is git\+file/);
  assert.equal(buildConfig({}, { NIXREG_PACKAGES: '<nixpkgs>' }).packages, '<nixpkgs>');
});

describe('package lists from a path', () => {
  let images: Images;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    images.image('fromfile.nix');
    r = await startNixRegistry(images.dir, { packages: PKGS });
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  test('/v2/a/b.c builds, and /v2/b.c/a is the same image', { timeout: 120_000 }, async () => {
    const one = await get(`${r.url}/v2/hello/pythonpackages.flask/manifests/latest`, OCI);
    assert.equal(one.status, 200, one.text);
    const two = await get(`${r.url}/v2/pythonpackages.flask/hello/manifests/latest`, OCI);
    assert.equal(two.status, 200, two.text);
    assert.equal(two.headers.get('docker-content-digest'), one.headers.get('docker-content-digest'));
    const tags = (await get(`${r.url}/v2/hello/pythonpackages.flask/tags/list`)).json().tags as string[];
    assert.ok(tags.includes('latest') && tags.some((t) => /^[0-9a-z]{32}$/.test(t)), JSON.stringify(tags));
  });

  test('an unknown package is a 404 that names it, and the closest names', async () => {
    const res = await get(`${r.url}/v2/hello/helo/pythonpackages.flsk/manifests/latest`, OCI);
    assert.equal(res.status, 404, res.text);
    const e = errorOf(res);
    assert.equal(e.code, 'NAME_UNKNOWN');
    assert.match(e.message, /the package set has no helo \(did you mean hello\?\); no pythonpackages\.flsk \(did you mean flask\?\)/);
    assert.doesNotMatch(e.message, /while evaluating|at \/|\.nix:\d/, 'no Nix trace');
    const unknownTag = await get(`${r.url}/v2/hello/manifests/v1`, OCI);
    assert.equal(unknownTag.status, 404);
    assert.match(errorOf(unknownTag).message, /its tags are latest and the hashes/);
  });

  test('an image file wins over a package list; a pushed repository stays plain storage', async () => {
    const file = await get(`${r.url}/v2/fromfile/manifests/latest`, OCI);
    assert.equal(file.status, 200, file.text);
    const pushed = await pushImage(r.url, 'myteam/app', 'v1');
    const back = await get(`${r.url}/v2/myteam/app/manifests/v1`, OCI);
    assert.equal(back.status, 200, back.text);
    assert.equal(back.headers.get('docker-content-digest'), pushed.digest);
  });
});

test('<nixpkgs> is the package set NIX_PATH names', { timeout: 60_000 }, async () => {
  const images = new Images();
  const r = await startNixRegistry(images.dir, { packages: '<nixpkgs>', nixEnv: { ...NIX_TEST_ENV, NIX_PATH: `nixpkgs=${PKGS}` } });
  try {
    const res = await get(`${r.url}/v2/date/manifests/latest`, OCI);
    assert.equal(res.status, 200, res.text);
  } finally {
    await r.stop();
    images.cleanup();
  }
});

describe('a pinned package set (git)', () => {
  let images: Images;
  let repo: Awaited<ReturnType<typeof packageRepo>>;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    repo = await packageRepo(['greeting one', 'greeting two']);
    await run('git', ['-C', repo.dir, 'branch', 'old', repo.commits[0]!]);
    r = await startNixRegistry(images.dir, { packages: `git+file://${repo.dir}`, evalTtlMs: 600_000 });
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  test(':<commit> is that commit\'s packages, :latest HEAD\'s; a built commit is served without Nix', { timeout: 120_000 }, async () => {
    const latest = await get(`${r.url}/v2/pythonpackages.flask/manifests/latest`, OCI);
    assert.equal(latest.status, 200, latest.text);
    const first = await get(`${r.url}/v2/pythonpackages.flask/manifests/${repo.commits[0]}`, OCI);
    assert.equal(first.status, 200, first.text);
    const head = await get(`${r.url}/v2/pythonpackages.flask/manifests/${repo.commits[1]}`, OCI);
    assert.equal(head.headers.get('docker-content-digest'), latest.headers.get('docker-content-digest'), 'latest is HEAD');
    assert.notEqual(first.headers.get('docker-content-digest'), latest.headers.get('docker-content-digest'));
    const branch = await get(`${r.url}/v2/pythonpackages.flask/manifests/old`, OCI);
    assert.equal(branch.headers.get('docker-content-digest'), first.headers.get('docker-content-digest'), 'a branch is its commit');

    const procs = nixProcessCount();
    const again = await get(`${r.url}/v2/pythonpackages.flask/manifests/${repo.commits[0]}`, OCI);
    assert.equal(again.headers.get('docker-content-digest'), first.headers.get('docker-content-digest'));
    assert.equal(nixProcessCount(), procs, 'a commit once built is immutable');
    const tags = (await get(`${r.url}/v2/pythonpackages.flask/tags/list`)).json().tags as string[];
    assert.ok(tags.includes(repo.commits[0]!), JSON.stringify(tags));

    const none = await get(`${r.url}/v2/pythonpackages.flask/manifests/nosuchbranch`, OCI);
    assert.equal(none.status, 404, none.text);
    assert.match(errorOf(none).message, /has no branch, tag or commit nosuchbranch/);

    // Made-up tags are answered from the one listing of the repository's refs: with the
    // repository gone, git could not have been asked.
    renameSync(repo.dir, `${repo.dir}.away`);
    try {
      const made = await Promise.all(Array.from({ length: 20 }, (_, i) => get(`${r.url}/v2/pythonpackages.flask/manifests/madeup${i}`, OCI)));
      for (const m of made) assert.match(errorOf(m).message, /has no branch, tag or commit madeup\d+/, m.text);
    } finally {
      renameSync(`${repo.dir}.away`, repo.dir);
    }
  });
});

describe('flakes', () => {
  let images: Images;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    cpSync(PKGS, join(images.dir, 'pkgs'), { recursive: true });
    images.write('flake.nix', `{
  description = "nixreg test flake, no inputs";
  outputs = { self }: let pkgs = import ./pkgs { greeting = "hello from a flake"; }; in {
    packages.\${builtins.currentSystem}.flakehello = { contents = [ pkgs.hello ]; config.Cmd = [ "/bin/hello" ]; };
    legacyPackages.\${builtins.currentSystem}.flakedate = pkgs.date;
  };
}
`);
    cpSync(PKGS, join(images.dir, 'team/app/pkgs'), { recursive: true });
    images.write('team/app/flake.nix', `{
  outputs = { self }: { packages.\${builtins.currentSystem}.default = (import ./pkgs { greeting = "from team/app"; }).hello; };
}
`);
    r = await startNixRegistry(images.dir, { packages: PKGS });
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  test('a flake\'s outputs are images; a name it lacks is a package list, and may be pushed to', { timeout: 120_000 }, async () => {
    for (const name of ['flakehello', 'flakedate', 'team/app']) {
      const res = await get(`${r.url}/v2/${name}/manifests/latest`, OCI);
      assert.equal(res.status, 200, `${name}: ${res.text}`);
    }
    // Not an output of the flake: the package `busybox`.
    const pkg = await get(`${r.url}/v2/busybox/manifests/latest`, OCI);
    assert.equal(pkg.status, 200, pkg.text);
    const denied = await fetch(`${r.url}/v2/flakehello/blobs/uploads/`, { method: 'POST' });
    assert.equal(denied.status, 403, 'a flake output is read-only');
  });
});
