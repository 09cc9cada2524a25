// Nix's own distributed builds through nixreg: the host's Nix is told, in the user's
// settings only (NIX_CONFIG and NIX_SSHOPTS in nixreg's environment; nixreg is given no
// flag), to build on a second machine over ssh-ng and never locally (`max-jobs = 0`).
// A pull of a never-built image through the real `nixreg serve` succeeds, and its store
// path was made on the second machine: the builder read that machine's /nix, the
// machine's store knows the path as one it built itself (`ultimate`), and the host's
// store holds it as a copy. Without the builders setting, the same nixreg cannot build
// at all: it left `max-jobs = 0` alone. Runs on the host (Nix 2.8) and in .ci/nix-2.26's
// root (Nix 2.26).
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import * as tar from 'tar-stream';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { spawnRegistry, type RegistryProcess } from '../helpers/registry.js';
import { startRemoteBuilder, type RemoteBuilder } from '../helpers/remote-builder.js';
import { run } from '../helpers/exec.js';
import { Images, errorOf, get, nixStr, nonce } from './helpers.js';

let remote: RemoteBuilder;
let images: Images;
const regs: RegistryProcess[] = [];

/** The host's Nix as a build farm's front end: it builds nothing itself. */
const farmConfig = (builders: string) => `${NIX_TEST_ENV.NIX_CONFIG}\nbuilders = ${builders}\nbuilders-use-substitutes = false\nmax-jobs = 0`;

before(async () => {
  remote = await startRemoteBuilder();
  images = new Images();
});
after(async () => {
  for (const r of regs) await r.stop('SIGKILL');
  await remote?.stop();
  images?.cleanup();
});

/** An image of one new derivation whose builder records where it ran: /nix/remote-id, if there is one. */
function whereImage(repo: string): string {
  const n = nonce();
  images.write(`${repo}.nix`, `{
  contents = [ (derivation {
    name = "where-${n}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" ${nixStr('mkdir -p $out/share; cat /nix/remote-id > $out/share/where 2>/dev/null || echo host > $out/share/where')} ];
  }) ];
  config.Cmd = [ "/bin/sh" ];
}
`);
  return `where-${n}`;
}

async function serve(nixConfig: string): Promise<RegistryProcess> {
  const r = await spawnRegistry({ images: images.dir, env: { NIX_CONFIG: nixConfig, NIX_SSHOPTS: remote.sshOpts } });
  regs.push(r);
  return r;
}

/** Every file of the image's layers (path → content), downloaded from the registry. */
async function imageFiles(url: string, repo: string): Promise<Map<string, string>> {
  const m = await get(`${url}/v2/${repo}/manifests/latest`);
  assert.equal(m.status, 200, m.text);
  const files = new Map<string, string>();
  for (const l of m.json().layers as { digest: string; mediaType: string }[]) {
    const res = await fetch(`${url}/v2/${repo}/blobs/${l.digest}`);
    assert.equal(res.status, 200, `layer ${l.digest}`);
    assert.match(l.mediaType, /gzip$/);
    const extract = tar.extract();
    Readable.from(Buffer.from(await res.arrayBuffer())).pipe(createGunzip()).pipe(extract);
    for await (const e of extract) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(c as Buffer);
      if (e.header.type === 'file') files.set(e.header.name, Buffer.concat(chunks).toString());
    }
  }
  return files;
}

/** What a store says of `path` (`nix path-info --json`: 2.8's list, or 2.19 and later's object by path). */
interface PathInfo { path: string; ultimate?: boolean; registrationTime?: number }
function pathInfo(stdout: string, path: string): PathInfo | undefined {
  const j = JSON.parse(stdout) as unknown;
  const list = Array.isArray(j) ? j as PathInfo[] : Object.entries(j as object).map(([p, v]) => ({ ...(v as object), path: p }));
  return list.find((i) => i.path === path);
}
const pathInfoArgs = (path: string) => ['--extra-experimental-features', 'nix-command', 'path-info', '--json', path];

describe('builds on a remote builder over ssh-ng', () => {
  test('a pull builds on the remote machine: the path is made in its store, then copied to the host\'s', { timeout: 120_000 }, async () => {
    const name = whereImage('farm');
    const reg = await serve(farmConfig(`@${remote.machines}`));
    const files = await imageFiles(reg.url, 'farm');
    const where = [...files].find(([p]) => p.endsWith(`-${name}/share/where`));
    assert.ok(where, `the image holds the build's output: ${[...files.keys()].join(', ')}`);
    assert.equal(where[1].trim(), remote.id, 'the builder ran on the remote machine (it read that machine\'s /nix)');

    const out = `/${where[0].replace(/\/share\/where$/, '')}`;
    const there = await remote.exec('nix', pathInfoArgs(out));
    assert.equal(there.code, 0, `the remote store knows ${out}: ${there.stderr}`);
    const here = await run('nix', pathInfoArgs(out), { env: NIX_TEST_ENV });
    const [r, h] = [pathInfo(there.stdout, out), pathInfo(here.stdout, out)];
    assert.equal(r?.ultimate, true, `the remote store built it itself: ${there.stdout}`);
    assert.notEqual(h?.ultimate, true, `the host's store holds a copy, not a build of its own: ${here.stdout}`);
    assert.ok(r!.registrationTime! <= h!.registrationTime!, 'registered remotely first');

    const builds = (await get(`${reg.url}/nixreg/builds`)).json() as { builds: { repository: string; log: string }[] };
    const job = builds.builds.find((b) => b.repository === 'farm');
    assert.ok(job, JSON.stringify(builds));
    const log = (await get(`${reg.url}${job.log}`, '*/*')).text;
    assert.match(log, /building '\/nix\/store\/[^']+-where-[^']+\.drv' on 'ssh-ng:\/\/root@127\.0\.0\.1'/, log);
  });

  test('without builders, the same settings build nothing: nixreg keeps max-jobs = 0', { timeout: 120_000 }, async () => {
    whereImage('nowhere');
    const reg = await serve(farmConfig(''));
    const res = await get(`${reg.url}/v2/nowhere/manifests/latest`);
    assert.notEqual(res.status, 200, 'nothing was built locally');
    const e = errorOf(res);
    assert.match(e.message, /Nix is set to build nothing on this machine \(max-jobs = 0\) and has no remote builders/, e.message);
    assert.match(e.message, /To fix it: name the build machines in `builders`/, e.message);
  });
});
