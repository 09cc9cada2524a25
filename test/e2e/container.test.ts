// The container image is real: the repository's Dockerfile builds (on a Node base image
// made here, since none can be downloaded), and its image serves the registry and builds
// examples/hello.nix with Nix on pull, into an image Docker pulls and runs; and the
// README quick start, word for word, on that same bare Debian with Node 20. Slow: minutes.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { sha256 } from '../api/util.js';
import { freePort } from '../cli/spawn.js';
import { makeNodeBaseImage } from '../helpers/base-image.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { run as exec } from '../helpers/exec.js';
import { ROOT } from '../helpers/registry.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import type { Manifest } from './fixtures.js';

const BASE = 'nixreg-test/node:20-bookworm';
const IMAGE = 'nixreg-test/nixreg:e2e';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const GREETING = 'Hello from an image Nix built on pull!';

let dockerd: Dockerd | undefined;
let container: string | undefined;
let url = '';
let baseMade = false;
let built = false;
let helloRef = '';

before(async (t) => {
  // overlay2 makes this file minutes faster than vfs, which copies the whole image for
  // every build step; vfs remains for file systems overlay2 does not work on.
  try {
    dockerd = await startDockerd({ storageDriver: 'overlay2' });
  } catch (e) {
    if ('diagnostic' in t) t.diagnostic(`overlay2 unavailable, using vfs: ${(e as Error).message.split('\n')[0]}`);
    dockerd = await startDockerd();
  }
});

after(async () => {
  if (dockerd && container) await dockerd.docker(['rm', '--force', '--volumes', container], { check: false });
  await dockerd?.stop();
});

function daemon(): Dockerd {
  assert.ok(dockerd, 'dockerd did not start');
  return dockerd;
}

test('a Node base image from Debian\'s archive and this machine\'s Node', { timeout: 300_000 }, async () => {
  await makeNodeBaseImage(daemon(), BASE);
  const v = await daemon().docker(['run', '--rm', '--network', 'none', BASE, 'sh', '-c', 'node --version && npm --version']);
  assert.match(v.stdout, new RegExp(`^${process.version.replace(/\./g, '\\.')}\\n\\d+\\.`));
  baseMade = true;
});

test('the README quick start, word for word, on that base: a machine with only Debian and Node 20', { timeout: 600_000 }, async () => {
  assert.ok(baseMade, 'needs the base image');
  const { installs, start } = quickStart();
  const port = await freePort();
  // A fresh clone: the working tree without what npm ci and tsc made here.
  const script = [
    'set -e',
    'mkdir /work && tar -C /src --exclude=./node_modules --exclude=./dist --exclude=./data --exclude=./.git -cf - . | tar -C /work -xf -',
    'cd /work',
    'apt-get update -qq',
    ...installs.map((c) => `DEBIAN_FRONTEND=noninteractive ${c} -y -qq > /tmp/apt.log 2>&1 || { tail -40 /tmp/apt.log; exit 1; }`),
    `(${start} > /tmp/nixreg.log 2>&1 &)`,
    // node, not curl: the README installs no curl, and the base has none.
    `node -e '${PULL_HELLO}' ${port} || { tail -c 6000 /tmp/nixreg.log; exit 1; }`,
  ].join('\n');
  const r = await daemon().docker(['run', '--rm', '--network', 'host', '-v', `${ROOT}:/src:ro`,
    '-e', `NIXREG_LISTEN=127.0.0.1:${port}`, '-e', `NIX_CONFIG=${NIX_TEST_ENV.NIX_CONFIG}`, BASE, 'bash', '-c', script], { check: false });
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`.slice(-8000));
  assert.match(r.stdout, /^pulled hello: 200 application\/vnd\.oci\.image\.manifest\.v1\+json$/m);
});

/**
 * The README's quick start: its `sudo apt-get install …` commands (code or inline) and
 * the command that starts the registry, the first code block.
 */
function quickStart(): { installs: string[]; start: string } {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Quick start'), readme.indexOf('\n## ', readme.indexOf('## Quick start') + 1));
  const installs = [...section.matchAll(/sudo (apt-get install [a-z0-9+. -]+?)(?:`|\n)/g)].map((m) => m[1]!.trim());
  const start = /```sh\n([^\n]+)\n```/.exec(section)?.[1];
  assert.ok(start === 'npm ci && npm start', `the quick start's first command: ${start}`);
  assert.ok(installs.some((c) => c.includes('nix-bin')) && installs.some((c) => c.includes('python3')), installs.join('; '));
  return { installs, start };
}

/** Waits for the registry on the port in argv, then pulls hello:latest's manifest. */
const PULL_HELLO = `
const base = "http://127.0.0.1:" + process.argv[1];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  for (let i = 0; ; i++) {
    try { if ((await fetch(base + "/v2/")).ok) break; } catch {}
    if (i > 300) throw new Error("npm start never answered");
    await sleep(1000);
  }
  const r = await fetch(base + "/v2/hello/manifests/latest", { headers: { accept: "application/vnd.oci.image.manifest.v1+json" } });
  const body = await r.text();
  console.log("pulled hello:", r.status, r.headers.get("content-type"));
  if (r.status !== 200) { console.log(body); process.exit(1); }
})().catch((e) => { console.error(String(e)); process.exit(1); });`;

test('docker build: the repository\'s Dockerfile builds on that base', { timeout: 660_000 }, async () => {
  assert.ok(baseMade, 'needs the base image');
  // The classic builder: BuildKit is not part of Debian's 20.10 engine. Build steps reach
  // Debian's archive and the npm registry through the host network: there is no bridge.
  const b = await exec('docker', ['build', '--network', 'host', '--build-arg', `NODE_IMAGE=${BASE}`, '-t', IMAGE, ROOT], {
    check: false, env: { ...daemon().env, DOCKER_BUILDKIT: '0' },
  });
  assert.equal(b.code, 0, `docker build failed:\n${(b.stdout + b.stderr).slice(-6000)}`);
  const cfg = await daemon().docker(['image', 'inspect', '--format', '{{json .Config.Entrypoint}} {{json .Config.Cmd}}', IMAGE]);
  assert.equal(cfg.stdout.trim(), '["node","/app/dist/src/main.cjs"] ["serve","--listen","0.0.0.0:5000","--data","/data","--images","/images"]');
  built = true;
});

test('docker run: the image serves the registry API, with Nix set up for containers', { timeout: 120_000 }, async () => {
  assert.ok(built, 'needs the image');
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  // Offline and sandbox off, as for every test; the image's own nix.conf is checked below.
  const run = await daemon().docker(['run', '--detach', '--network', 'host', '-e', `NIX_CONFIG=${NIX_TEST_ENV.NIX_CONFIG}`,
    IMAGE, 'serve', '--listen', `127.0.0.1:${port}`, '--data', '/data', '--images', '/images']);
  container = run.stdout.trim();
  await untilServing(`${url}/v2/`);
  const v2 = await fetch(`${url}/v2/`);
  assert.equal(v2.status, 200);
  // The image carries the sendfile addon that npm ci compiled (src/registry/zero-copy.ts).
  assert.match(await logs(), /"sendfile":true/);

  // Without NIX_CONFIG, what the image itself configures: sandbox off, build users of the
  // group Nix runs root's builds as, and the user's substituters left alone.
  const conf = await daemon().docker(['exec', '-e', 'NIX_CONFIG=', container, 'nix', '--extra-experimental-features', 'nix-command', 'show-config']);
  assert.match(conf.stdout, /^sandbox = false$/m);
  assert.match(conf.stdout, /^build-users-group = nixbld$/m);
  assert.match(conf.stdout, /^substituters = https:\/\/cache\.nixos\.org\/?$/m);
  const group = await daemon().docker(['exec', container, 'getent', 'group', 'nixbld']);
  assert.deepEqual(group.stdout.trim().split(':')[3]?.split(','), Array.from({ length: 10 }, (_, i) => `nixbld${i + 1}`));
});

test('GET /v2/hello/manifests/latest: Nix in the container builds the example on pull', { timeout: 300_000 }, async () => {
  assert.ok(container, 'needs the running image');
  const r = await fetch(`${url}/v2/hello/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
  const text = await r.text();
  assert.equal(r.status, 200, `${text}\n${await logs()}`);
  assert.equal(r.headers.get('docker-content-digest'), sha256(Buffer.from(text)));
  const m = JSON.parse(text) as Manifest;
  assert.equal(m.mediaType, OCI_MANIFEST);
  assert.ok(m.config && m.layers?.length, text);
  for (const d of [m.config, ...m.layers]) {
    const blob = Buffer.from(await (await fetch(`${url}/v2/hello/blobs/${d.digest}`)).arrayBuffer());
    assert.equal(blob.length, d.size, d.digest);
    assert.equal(sha256(blob), d.digest);
    if (d === m.config) assert.deepEqual(JSON.parse(blob.toString()).config.Cmd, ['/bin/busybox', 'echo', GREETING]);
  }
  helloRef = `${url.replace(/^http:\/\//, '')}/hello:latest`;
});

test('docker pull and run: the image the container built says hello', { timeout: 180_000 }, async () => {
  assert.ok(helloRef, 'needs the built manifest');
  await daemon().docker(['pull', helloRef]);
  const out = await daemon().docker(['run', '--rm', '--network', 'none', helloRef]);
  assert.equal(out.stdout.trim(), GREETING);
});

async function logs(): Promise<string> {
  if (!container) return '';
  const l = await daemon().docker(['logs', container], { check: false });
  return `container logs:\n${(l.stdout + l.stderr).slice(-6000)}`;
}

/** Until `u` answers; fails at once, with its logs, if the container stops. */
async function untilServing(u: string): Promise<void> {
  const end = Date.now() + 60_000;
  while (Date.now() < end) {
    if (await fetch(u).then(() => true, () => false)) return;
    const st = await daemon().docker(['inspect', '--format', '{{.State.Running}}', container!]);
    if (st.stdout.trim() !== 'true') assert.fail(`the container stopped\n${await logs()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.fail(`nothing answered at ${u} within 60 s\n${await logs()}`);
}
