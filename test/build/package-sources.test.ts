// Issue 22: where --packages lives is nobody's business but the operator's. What a client
// is told about a package list (tags refused, unknown revisions, Nix's and git's own
// errors) calls the set `the package set` and its files `<packages>/…`, never a host
// path or a git URL. And a directory that is a git work tree, given as a path, is
// pinned by tags: `latest` is the directory as it is, any other tag a commit of its
// repository. Real Nix and git, as in origins.test.ts.
import assert from 'node:assert/strict';
import { cpSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PackageSource } from '../../src/build/origins/origins.js';
import { run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { ROOT, tempDir } from '../helpers/registry.js';
import { Images, OCI, PKGS, errorOf, get, startNixRegistry, type Fetched } from './helpers.js';

const dirs: string[] = [];
const images = new Images();
after(() => { images.cleanup(); for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function dir(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

/** The test package set with `greeting` as its default greeting. */
function packageSet(greeting: string): string {
  const text = readFileSync(join(PKGS, 'default.nix'), 'utf8').replace('greeting ? "hello from nixreg"', `greeting ? ${JSON.stringify(greeting)}`);
  assert.ok(text.includes(JSON.stringify(greeting)), 'the fixture names its default greeting');
  return text;
}

/** Asserts that no form of any of `paths` (nor the checkout's) shows in `res`; returns its error message. */
function messageWithout(res: Fetched, paths: string[]): string {
  assert.equal(res.status, 404, res.text);
  for (const p of new Set([...paths, ...paths.map((x) => { try { return realpathSync(x); } catch { return x; } }), ROOT])) {
    assert.ok(!res.text.includes(p), `the answer shows the host path ${p}:\n${res.text}`);
  }
  return errorOf(res).message;
}

describe('a git work tree given as a path', () => {
  let tree: string;
  let commit: string;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    tree = dir('nixreg-worktree-');
    const git = (...args: string[]) => run('git', ['-C', tree, '-c', 'user.name=test', '-c', 'user.email=test@example.org', ...args]);
    await git('init', '-q', '-b', 'main');
    writeFileSync(join(tree, 'default.nix'), packageSet('committed greeting'));
    await git('add', '-A');
    await git('commit', '-q', '-m', 'one');
    commit = (await git('rev-parse', 'HEAD')).stdout.trim();
    // Uncommitted, and broken: what `latest` sees.
    writeFileSync(join(tree, 'default.nix'), '{ }: { hello = 1 +; }\n');
    r = await startNixRegistry(images.dir, { packages: tree, evalTtlMs: 0, negativeTtlMs: 0 });
  });
  after(async () => { await r?.stop(); });

  test(':latest is the directory as it is, named <packages> in Nix\'s errors; a commit or branch is fetched from its repository', { timeout: 120_000 }, async () => {
    const broken = messageWithout(await get(`${r.url}/v2/hello/manifests/latest`, OCI), [tree]);
    assert.match(broken, /syntax error/);
    assert.match(broken, /at <packages>\/default\.nix:1:19/);

    const pinned = await get(`${r.url}/v2/hello/manifests/${commit}`, OCI);
    assert.equal(pinned.status, 200, pinned.text);
    const branch = await get(`${r.url}/v2/hello/manifests/main`, OCI);
    assert.equal(branch.status, 200, branch.text);
    assert.equal(branch.headers.get('docker-content-digest'), pinned.headers.get('docker-content-digest'), 'a branch is its commit');
    const tags = (await get(`${r.url}/v2/hello/tags/list`)).json().tags as string[];
    assert.ok(tags.includes(commit), JSON.stringify(tags));

    writeFileSync(join(tree, 'default.nix'), packageSet('edited, not committed'));
    const latest = await get(`${r.url}/v2/hello/manifests/latest`, OCI);
    assert.equal(latest.status, 200, latest.text);
    assert.notEqual(latest.headers.get('docker-content-digest'), pinned.headers.get('docker-content-digest'), 'latest has the uncommitted edit');

    assert.equal(messageWithout(await get(`${r.url}/v2/hello/manifests/nosuchbranch`, OCI), [tree]),
      'the package set has no branch, tag or commit nosuchbranch');
    const missing = messageWithout(await get(`${r.url}/v2/hello/manifests/${'1'.repeat(40)}`, OCI), [tree]);
    assert.match(missing, /Cannot find Git revision '1{40}' .* of repository '<packages>'/);
  });
});

test('a git URL that names nothing: git\'s own words, with <packages> for the location', { timeout: 60_000 }, async () => {
  const gone = join(dir('nixreg-gone-'), 'repository');
  const r = await startNixRegistry(images.dir, { packages: `git+file://${gone}` });
  try {
    for (const tag of ['latest', 'v1']) {
      const message = messageWithout(await get(`${r.url}/v2/hello/manifests/${tag}`, OCI), [gone]);
      assert.match(message, /git ls-remote of the package set failed: fatal: '<packages>' does not appear to be a git repository/);
    }
  } finally { await r.stop(); }
});

test('<nixpkgs>: the NIX_PATH entry is <packages> in Nix\'s errors; tags other than latest say why they are refused', { timeout: 60_000 }, async () => {
  const set = dir('nixreg-nixpath-');
  cpSync(PKGS, join(set, 'nixpkgs'), { recursive: true });
  writeFileSync(join(set, 'nixpkgs/default.nix'), '{ }: { hello = 1 +; }\n');
  const r = await startNixRegistry(images.dir, { packages: '<nixpkgs>', nixEnv: { ...NIX_TEST_ENV, NIX_PATH: `other=/nonexistent:nixpkgs=${join(set, 'nixpkgs')}` } });
  try {
    const broken = messageWithout(await get(`${r.url}/v2/hello/manifests/latest`, OCI), [set]);
    assert.match(broken, /at <packages>\/default\.nix:1:19/);
    const tag = messageWithout(await get(`${r.url}/v2/hello/manifests/v1`, OCI), [set]);
    assert.equal(tag, 'hello is a package list: its tags are latest and the hashes of built images, not v1 (tags pin a package set only when it is a git repository)');
  } finally { await r.stop(); }
});

test('a git URL, credentials and all, is <packages>; a path only as whole components', () => {
  const https = PackageSource.parse('git+https://bot:s3cret@git.example.org/team/nixpkgs.git');
  assert.equal(https.hide("fetching Git repository 'https://bot:s3cret@git.example.org/team/nixpkgs.git'... failed"),
    "fetching Git repository '<packages>'... failed");
  const path = PackageSource.parse('/srv/pkgs');
  assert.equal(path.hide("at /srv/pkgs/lib/a.nix:1:2, not /srv/pkgs2/a.nix nor /x/srv/pkgs; file:///srv/pkgs."),
    'at <packages>/lib/a.nix:1:2, not /srv/pkgs2/a.nix nor /x/srv/pkgs; <packages>.');
});
