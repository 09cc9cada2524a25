// dockerTools compatibility end to end: the nix.dev tutorial's hello-docker.nix, unchanged,
// over the offline nixpkgs stand-in (test/nixpkgs), pulled from a real nixreg process by a
// real Docker engine, against `nix-build` + `docker load` of the same file.
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { after, before, test } from 'node:test';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { ROOT, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';

const FIXTURE = join(ROOT, 'test/fixtures/hello-docker.nix');
/** sha256 of the tutorial's file as published on nix.dev: the fixture must stay unchanged. */
const TUTORIAL_SHA256 = '0c9e214cde95c3634328441e2b57e481d37f49ed394f2f42040f4a5435bc82e7';
const env = { ...NIX_TEST_ENV, NIX_PATH: `nixpkgs=${join(ROOT, 'test/nixpkgs')}` };

let dockerd: Dockerd;
let reg: RegistryProcess;
let images: string;

before(async () => {
  await requireTool('nix-build');
  images = tempDir('nixreg-dockertools-');
  copyFileSync(FIXTURE, join(images, 'hello-docker.nix'));
  for (const [name, fn] of [['hello-layered', 'buildLayeredImage'], ['hello-stream', 'streamLayeredImage']]) {
    writeFileSync(join(images, `${name}.nix`), `{ pkgs ? import <nixpkgs> { } }:
pkgs.dockerTools.${fn} {
  name = "${name}";
  contents = [ pkgs.hello ];
  config.Cmd = [ "/bin/hello" ];
}
`);
  }
  // A derivation whose output is a truncated archive.
  writeFileSync(join(images, 'broken.nix'), `derivation {
  name = "broken.tar";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "head -c 100000 /dev/zero > layer.tar && tar -cf full.tar layer.tar && head -c 30000 full.tar > $out" ];
}
`);
  [dockerd, reg] = await Promise.all([startDockerd(), spawnRegistry({ images, env })]);
});

after(async () => {
  await Promise.allSettled([dockerd?.stop(), reg?.stop()]);
  for (const d of [images, reg?.data]) if (d) rmSync(d, { recursive: true, force: true });
});

async function nixBuild(file: string): Promise<string> {
  const r = await run('nix-build', ['--no-out-link', file], { env });
  return r.stdout.trim().split('\n').pop()!;
}

async function imageId(ref: string): Promise<string> {
  return (await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', ref])).stdout.trim();
}

/** A shell-session transcript line for the README. */
function transcript(cmd: string, out: string): string {
  return `$ ${cmd}\n${out.trim()}\n`;
}

test("the nix.dev tutorial's hello-docker.nix, unchanged: one docker pull = nix-build + docker load", async (t) => {
  assert.equal(createHash('sha256').update(readFileSync(FIXTURE)).digest('hex'), TUTORIAL_SHA256, 'the fixture is the tutorial file');
  const out = await nixBuild(FIXTURE);
  const hash = basename(out).slice(0, 32);
  assert.match(basename(out), /^[0-9a-z]{32}-docker-image-hello-docker\.tar\.gz$/);

  const ref = `${reg.host}/hello-docker:${hash}`;
  const pull = await dockerd.docker(['pull', ref]);
  const hello = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
  assert.equal(hello.stdout, 'Hello, world!\n');
  const pulled = await imageId(ref);

  // The tutorial's way, in the same engine: the same image ID.
  const load = await dockerd.docker(['load'], { input: readFileSync(out) });
  assert.equal(load.stdout.trim(), `Loaded image: hello-docker:${hash}`);
  assert.equal(await imageId(`hello-docker:${hash}`), pulled);

  // latest builds nothing new and names the same image.
  await dockerd.docker(['pull', `${reg.host}/hello-docker:latest`]);
  assert.equal(await imageId(`${reg.host}/hello-docker:latest`), pulled);

  const lines = transcript(`docker pull ${ref}`, pull.stdout) + transcript(`docker run --network none ${ref}`, hello.stdout)
    + transcript(`docker load < ${out}`, load.stdout) + transcript('docker image inspect --format {{.Id}} (both)', pulled);
  for (const l of lines.trim().split('\n')) t.diagnostic(l);
});

test('buildLayeredImage (gzip) and streamLayeredImage (a script) pull, run, and match docker load', async () => {
  for (const name of ['hello-layered', 'hello-stream']) {
    const out = await nixBuild(join(images, `${name}.nix`));
    const hash = basename(out).slice(0, 32);
    const ref = `${reg.host}/${name}:${hash}`;
    await dockerd.docker(['pull', ref]);
    const hello = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
    assert.equal(hello.stdout, 'Hello, world!\n', name);
    // streamLayeredImage's documented use: `$(nix-build …) | docker load`.
    const load = await dockerd.docker(['load'], { input: name === 'hello-stream' ? await streamed(out) : readFileSync(out) });
    const loaded = /Loaded image: (\S+)/.exec(load.stdout)?.[1];
    assert.ok(loaded, load.stdout);
    assert.equal(await imageId(loaded), await imageId(ref), `${name}: same image ID as docker load`);
  }
});

/** The bytes a stream script writes (run with argv, no shell). */
function streamed(script: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = spawn(script, [], { stdio: ['ignore', 'pipe', 'ignore'] });
    const chunks: Buffer[] = [];
    c.stdout.on('data', (b: Buffer) => chunks.push(b));
    c.on('error', reject);
    c.on('close', (code) => (code === 0 ? resolve(Buffer.concat(chunks)) : reject(new Error(`${script} exited ${code}`))));
  });
}

test('a derivation whose archive is malformed: an OCI error that says why, and nothing stored', async (t) => {
  const r = await fetch(`${reg.url}/v2/broken/manifests/latest`);
  assert.equal(r.status, 404);
  const body = await r.json() as { errors: { code: string; message: string }[] };
  assert.equal(body.errors[0]!.code, 'MANIFEST_UNKNOWN');
  assert.match(body.errors[0]!.message, /broken\.tar: malformed image archive: cannot read it \(truncated or corrupt\?\)/);
  const pull = await dockerd.docker(['pull', `${reg.host}/broken:latest`], { check: false });
  assert.notEqual(pull.code, 0);
  assert.match(pull.stderr, /malformed image archive/, 'docker shows the reason');
  t.diagnostic(`$ docker pull ${reg.host}/broken:latest`);
  t.diagnostic(pull.stderr.trim());
  // `latest` is listed for every expression-backed repository; no other tag may appear.
  const tags = await (await fetch(`${reg.url}/v2/broken/tags/list`)).json() as { tags?: string[] };
  assert.deepEqual(tags.tags, ['latest']);
  const db = new Database(join(reg.data, 'index.db'), { readonly: true, fileMustExist: true });
  try {
    const stored = db.prepare(`SELECT (SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE r.name = 'broken')
      + (SELECT count(*) FROM repo_blobs b JOIN repositories r ON r.id = b.repo_id WHERE r.name = 'broken')
      + (SELECT count(*) FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.name = 'broken') AS n`).get() as { n: number };
    assert.equal(stored.n, 0, 'no manifest, blob link or tag was stored for the broken image');
  } finally { db.close(); }
  assert.deepEqual(readdirSync(join(reg.data, 'tmp')), [], 'no temporary files left');
});
