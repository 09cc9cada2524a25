// Nothing nixreg starts outlives it: kill -9 the real `nixreg serve` while a build runs
// (nix-store --realise and the builder it forked), or while an image stream script runs
// (and the process that script started), and every one of those processes is gone soon
// after. The processes are found in /proc: the registry's descendants before the kill
// (after it they belong to init), and anything carrying the build's unique marker.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { after, test, type TestContext } from 'node:test';
import { Images, nixStr, nonce } from '../build/helpers.js';
import { cleanEnv, reap, spawnCli, type CliProcess } from '../cli/spawn.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { tempDir } from '../helpers/registry.js';

interface Proc { pid: number; ppid: number; start: string; state: string; cmdline: string; environ: string }

const dirs: string[] = [];
const procs: CliProcess[] = [];
/** Processes a failed check found still running: killed at the end, not left to run on. */
const leftovers: Proc[] = [];
after(async () => {
  for (const p of procs) await reap(p);
  for (const p of leftovers) if (alive(p)) try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function read(path: string): string {
  try { return readFileSync(path, 'latin1'); } catch { return ''; }
}

function proc(pid: number): Proc | undefined {
  const stat = read(`/proc/${pid}/stat`);
  if (!stat) return undefined;
  // After the command name in parentheses (which may itself hold spaces and parentheses).
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return {
    pid, state: f[0]!, ppid: Number(f[1]), start: f[19]!,
    cmdline: read(`/proc/${pid}/cmdline`).replace(/\0/g, ' ').trim(),
    environ: read(`/proc/${pid}/environ`),
  };
}

function allProcs(): Proc[] {
  return readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map((n) => proc(Number(n))).filter((p): p is Proc => !!p);
}

/** Still running: the same process (not a reused pid), and not a zombie waiting for init. */
function alive(p: Proc): boolean {
  const now = proc(p.pid);
  return !!now && now.start === p.start && now.state !== 'Z' && now.state !== 'X';
}

function descendants(root: number): Proc[] {
  const all = allProcs();
  const out: Proc[] = [];
  const seen = new Set([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const p of all) if (!seen.has(p.pid) && seen.has(p.ppid)) { seen.add(p.pid); out.push(p); grew = true; }
  }
  return out;
}

const carries = (p: Proc, marker: string) => p.cmdline.includes(marker) || p.environ.includes(marker);

async function until<T>(what: string, timeoutMs: number, f: () => T | undefined): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function serve(images: Images): Promise<{ p: CliProcess; url: string }> {
  const data = tempDir('nixreg-orphans-');
  dirs.push(data);
  const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', data, '--images', images.dir],
    { env: cleanEnv({ NIX_CONFIG: NIX_TEST_ENV.NIX_CONFIG }) });
  procs.push(p);
  return { p, url: (await p.listening).url };
}

/**
 * Pulls `repo`, waits until `running` finds the processes that prove the work is under
 * way, kills the registry with SIGKILL, and checks that its descendants and every
 * process carrying `marker` are gone within 10 s.
 */
async function crashDuring(t: TestContext, images: Images, repo: string, marker: string,
  running: (ds: Proc[]) => boolean): Promise<Proc[]> {
  const { p, url } = await serve(images);
  const pid = p.child.pid!;
  void fetch(`${url}/v2/${repo}/manifests/latest`).catch(() => { /* the registry dies under it */ });
  const before = await until(`the processes of ${repo}`, 90_000, () => {
    const ds = descendants(pid);
    return running(ds) ? ds : undefined;
  });
  p.child.kill('SIGKILL');
  await p.exited;
  const killed = Date.now();
  const remaining = () => [...before.filter(alive), ...allProcs().filter((x) => carries(x, marker) && alive(x))];
  try {
    await until('the processes to die with the registry', 10_000, () => remaining().length === 0 || undefined);
  } catch (e) {
    const left = remaining();
    leftovers.push(...left);
    assert.fail(`${(e as Error).message}; still running: ${[...new Set(left.map((x) => `${x.pid} ${x.cmdline}`))].join('; ')}`);
  }
  t.diagnostic(`${before.length} processes (${before.map((x) => x.cmdline.split(' ')[0]).join(', ')}) gone ${Date.now() - killed} ms after the kill`);
  return before;
}

test('kill -9 during a build: nix-store and the builder it runs die with the registry', { timeout: 150_000 }, async (t) => {
  const images = new Images();
  dirs.push(images.dir);
  const n = nonce();
  images.write('sleeper.nix', `derivation {
  name = "sleeper-${n}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  MARK = ${nixStr(n)};
  args = [ "-c" "sleep 60; echo > $out" ];
}
`);
  const before = await crashDuring(t, images, 'sleeper', n,
    (ds) => ds.some((x) => / --realise /.test(x.cmdline)) && ds.some((x) => x.environ.includes(`MARK=${n}`)));
  assert.ok(before.some((x) => /nix-store/.test(x.cmdline)), 'nix-store was among them');
});

test('kill -9 while a stream script runs: the script and what it started die with the registry', { timeout: 150_000 }, async (t) => {
  const images = new Images();
  dirs.push(images.dir);
  const n = nonce();
  // A streamLayeredImage-like output: an executable script named stream-…, whose child
  // (sleep) carries the marker in its environment.
  const script = `#!/bin/sh\nMARK=${n}\nexport MARK\nsleep 60\n`;
  images.write('streamer.nix', `derivation {
  name = "stream-${n}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  script = ${nixStr(script)};
  args = [ "-c" "printf %s \\"$script\\" > $out && chmod +x $out" ];
}
`);
  await crashDuring(t, images, 'streamer', n, (ds) => ds.some((x) => x.cmdline.includes(`-stream-${n}`))
    && ds.some((x) => x.environ.includes(`MARK=${n}`) && x.cmdline.startsWith('sleep')));
});
