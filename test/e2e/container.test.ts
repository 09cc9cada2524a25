// The container image is real: the repository's Dockerfile builds (on a Node base image
// made here, since none can be downloaded), and its image serves the registry and builds
// examples/hello.nix with Nix on pull, into an image Docker pulls and runs. Slow: minutes.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:net';
import { after, before, test } from 'node:test';
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

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

async function logs(): Promise<string> {
  if (!container) return '';
  const l = await daemon().docker(['logs', container], { check: false });
  return `container logs:\n${(l.stdout + l.stderr).slice(-6000)}`;
}

/** A port free on loopback now; the container binds it a moment later. */
function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer().once('error', rej).listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (a && typeof a === 'object' ? res(a.port) : rej(new Error('no port'))));
    });
  });
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
