// nixreg as most users run Nix (NixOS, the official installer): as an unprivileged
// service user whose every Nix operation goes through nix-daemon (NIX_REMOTE=daemon).
// The test starts the daemon itself, as root, on a private socket, and runs the real
// `nixreg serve` as the user nixreg-test: a pull builds; the GC roots keep the closure
// alive while it is packed (as the daemon sees them) and let it go after; kill -9 of
// nixreg leaves no build behind (the builder is the daemon's child: closing the client's
// connection stops it); and a broken set-up gets a diagnosis on /readyz and on pulls.
// Runs on the host (Nix 2.8) and in .ci/nix-2.26's root (Nix 2.26).
import assert from 'node:assert/strict';
import { chmodSync, existsSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { reap, type CliProcess } from '../cli/spawn.js';
import { requireTool, run } from '../helpers/exec.js';
import { cliFor, serveAs, serviceUser, startNixDaemon, type NixDaemon, type User } from '../helpers/nix-daemon.js';
import { tempDir } from '../helpers/registry.js';
import { Images, PKGS, errorOf, get, nixStr, nonce } from './helpers.js';

let user: User;
let daemon: NixDaemon;
let images: Images;
const procs: CliProcess[] = [];
const daemons: NixDaemon[] = [];
const dirs: string[] = [];

before(async () => {
  await requireTool('nix-daemon');
  user = serviceUser();
  daemon = await startNixDaemon();
  daemons.push(daemon);
  images = new Images();
  chmodSync(images.dir, 0o755);
  cliFor(user);
});
after(async () => {
  for (const p of procs) await reap(p);
  for (const d of daemons) await d.stop();
  images?.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function serve(env: Record<string, string>): Promise<{ url: string; data: string; p: CliProcess }> {
  const { p, data } = serveAs(user, images.dir, env);
  procs.push(p);
  dirs.push(data);
  return { url: (await p.listening).url, data, p };
}

/** As root, through the test's daemon: the daemon's view of the store. */
const asRoot = (args: string[]) => run('nix-store', args, { env: { ...process.env, ...daemon.clientEnv }, check: false });

async function until<T>(what: string, timeoutMs: number, f: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The GC roots (link → store path) that nixreg's builds hold under `data`. */
function roots(data: string): Map<string, string> {
  const out = new Map<string, string>();
  const base = join(data, 'gcroots');
  for (const owner of existsSync(base) ? readdirSync(base) : []) {
    for (const job of readdirSync(join(base, owner))) {
      for (const r of readdirSync(join(base, owner, job))) {
        try { out.set(join(base, owner, job, r), readlinkSync(join(base, owner, job, r))); } catch { /* going */ }
      }
    }
  }
  return out;
}

describe('nixreg as an unprivileged user through nix-daemon', () => {
  test('a pull builds; the closure is rooted while it is packed, as the daemon sees it, and free once stored', { timeout: 240_000 }, async () => {
    const n = nonce();
    // 1 GiB of zeros (sparse on disk) makes packing last long enough to look at.
    images.write('app.nix', `let pkgs = import ${PKGS} { nonce = ${nixStr(n)}; }; in {
  contents = [ pkgs.hello (derivation { name = "zeros-${n}"; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" "mkdir $out && truncate -s 1G $out/zeros" ]; }) ];
  config.Cmd = [ "/bin/hello" ];
}
`);
    const { url, data } = await serve({ ...daemon.clientEnv });
    const pull = get(`${url}/v2/app/manifests/latest`);
    const held = await until('the build\'s GC roots', 180_000, () => {
      const r = roots(data);
      return [...r.values()].some((p) => p.endsWith(`-zeros-${n}`)) ? r : undefined;
    });
    const hello = [...held.values()].find((p) => p.endsWith('-hello'));
    assert.ok(hello, `hello is rooted: ${[...held.values()].join(', ')}`);
    const seen = (await asRoot(['--gc', '--print-roots'])).stdout;
    const refused = await asRoot(['--delete', hello]);
    const stillHeld = [...held.keys()].every((l) => existsSync(l));
    assert.ok(stillHeld, 'the roots were there all along: the checks ran while the image was packed');
    for (const link of held.keys()) assert.ok(seen.includes(link), `the daemon sees the root ${link}:\n${seen}`);
    assert.notEqual(refused.code, 0, 'a rooted path is not deleted');
    assert.match(refused.stderr, /still alive/);

    const res = await pull;
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(readdirSync(join(data, 'gcroots')), [], 'no root is left');
    const freed = await asRoot(['--delete', ...new Set(held.values())]);
    assert.equal(freed.code, 0, `the closure can be collected now: ${freed.stderr}`);
  });

  test('kill -9 of nixreg mid-build: the daemon stops the build when the connection closes', { timeout: 120_000 }, async () => {
    const n = nonce();
    images.write('sleeper.nix', `derivation {
  name = "sleeper-${n}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  MARK = ${nixStr(n)}; args = [ "-c" "sleep 600; echo > $out" ];
}
`);
    const { url, p } = await serve({ ...daemon.clientEnv });
    void fetch(`${url}/v2/sleeper/manifests/latest`).catch(() => { /* the registry dies under it */ });
    const marked = () => readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
      try { return readFileSync(`/proc/${d}/environ`, 'latin1').includes(`MARK=${n}`); } catch { return false; }
    });
    const builders = await until('the builder', 60_000, () => (marked().length ? marked() : undefined));
    const owner = readFileSync(`/proc/${builders[0]}/status`, 'utf8').match(/^Uid:\s+(\d+)/m)?.[1];
    assert.notEqual(Number(owner), user.uid, 'the builder is the daemon\'s (a build user\'s), not nixreg\'s');
    p.child.kill('SIGKILL');
    await p.exited;
    await until('the build to stop', 20_000, () => (marked().length === 0 ? true : undefined));
    assert.equal((await asRoot(['--gc', '--print-roots'])).code, 0, 'the daemon goes on serving');
  });
});

describe('a broken daemon set-up is diagnosed', () => {
  // Readiness asks Nix only where there are expressions to build.
  before(() => { images.image('plain.nix', { nonce: nonce() }); });

  async function notReady(env: Record<string, string>): Promise<{ reason: string; message: string }> {
    const { url } = await serve(env);
    const body = await until('Nix\'s verdict on /readyz', 60_000, async () => {
      const r = await get(`${url}/readyz`);
      const b = r.json() as { checks: { nix: { ok: boolean; state?: string; reason?: string } } };
      return b.checks.nix.state === 'failed' ? { status: r.status, ...b.checks.nix } : undefined;
    });
    assert.equal(body.status, 503);
    const e = errorOf(await get(`${url}/v2/plain/manifests/latest`));
    assert.equal(e.code, 'MANIFEST_UNKNOWN');
    return { reason: body.reason!, message: e.message };
  }

  test('no daemon on the socket', { timeout: 90_000 }, async () => {
    const dir = tempDir('nixreg-no-daemon-');
    dirs.push(dir);
    chmodSync(dir, 0o755);
    const missing = join(dir, 'socket');
    const r = await notReady({ NIX_REMOTE: 'daemon', NIX_DAEMON_SOCKET_PATH: missing });
    assert.match(r.reason, new RegExp(`no daemon listens at ${missing}`));
    assert.match(r.message, /To fix it: start the daemon/);
  });

  test('a socket the user may not open', { timeout: 90_000 }, async () => {
    const closed = await startNixDaemon();
    daemons.push(closed);
    chmodSync(join(closed.socket, '..'), 0o700);
    const r = await notReady(closed.clientEnv);
    assert.match(r.reason, new RegExp(`may not open the Nix daemon's socket at ${closed.socket}`));
    assert.match(r.message, /To fix it: .*permissions/);
  });

  test('a daemon that does not allow the user', { timeout: 90_000 }, async () => {
    const strict = await startNixDaemon('substituters =\nsandbox = false\nallowed-users = root');
    daemons.push(strict);
    const r = await notReady(strict.clientEnv);
    assert.match(r.reason, /the Nix daemon refused the user nixreg runs as/);
    assert.match(r.message, /To fix it: .*allowed-users/);
  });

  test('no daemon asked for, and a store the user cannot write', { timeout: 90_000 }, async () => {
    const r = await notReady({ NIX_REMOTE: '' });
    assert.match(r.reason, /cannot write the Nix store/);
    assert.match(r.message, /NIX_REMOTE=daemon/);
  });
});
