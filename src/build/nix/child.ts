// Every process nixreg starts (nix-instantiate, nix-store, image stream scripts, zstd)
// is started here, tied to nixreg's lifetime: if nixreg dies, even by SIGKILL, the
// kernel sends the child a parent-death signal (`setpriv --pdeathsig`). Nothing else
// would stop them: they run in process groups of their own (so that a timeout can kill
// a whole group), out of reach of whatever kills nixreg's group, and a crash would leave
// a nix-store --realise building for nobody, holding its locks and build users.
//
// The signal fires when the *thread* that forked the child exits; Node forks from its
// main thread, whose exit is the process's. A child dies with nixreg only if nixreg
// dies after setpriv has set the signal: a crash in the microseconds between fork and
// prctl is not covered.
//
// Room: build/nix, the Nix adapter. Of build, imports only the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, isAbsolute, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

export interface TiedOptions extends SpawnOptions {
  /**
   * What the child receives when nixreg dies. SIGTERM for a program that must clean up
   * (nix-store kills its builders, which run as build users in sessions of their own,
   * and releases its locks; SIGKILL would orphan the builders; through nix-daemon the
   * builders are the daemon's, and the daemon stops them when nix-store's connection
   * closes); SIGKILL for one that holds nothing (a filter).
   */
  deathSignal: NodeJS.Signals;
  /**
   * The parent-death signal reaches the child only, not what it starts: a stream script
   * that runs `tar` or `sleep` would leave them behind. With this, coreutils' `timeout`
   * (with no time limit) stands between: on the signal it signals the child's whole
   * process group, and SIGKILLs it 5 s later if anything lingers.
   */
  wholeGroup?: boolean | undefined;
}

/** The executable file `cmd` names, looked up on `env`'s PATH as exec would; undefined if none. */
export function findProgram(cmd: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const candidates = cmd.includes('/') ? [cmd]
    : (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter).filter(isAbsolute).map((d) => join(d, cmd));
  for (const c of candidates) {
    try {
      if (!statSync(c).isFile()) continue;
      accessSync(c, constants.X_OK);
      return c;
    } catch { /* not here */ }
  }
  return undefined;
}

interface Helpers { setpriv?: string | undefined; timeout?: string | undefined }
let helpers: Helpers | undefined;
let warned = false;

/** Found once: setpriv only if it knows --pdeathsig (util-linux 2.33 and later). */
function resolveHelpers(): Helpers {
  if (helpers) return helpers;
  const search = { PATH: `${process.env.PATH ?? ''}${delimiter}/usr/bin${delimiter}/bin` };
  let setpriv = findProgram('setpriv', search);
  if (setpriv) {
    const help = spawnSync(setpriv, ['--help'], { encoding: 'utf8', timeout: 5000 });
    if (!String(help.stdout).includes('--pdeathsig')) setpriv = undefined;
  }
  helpers = { setpriv, timeout: setpriv ? findProgram('timeout', search) : undefined };
  return helpers;
}

/** Logs, once per process, that children cannot be tied to nixreg's lifetime here. */
export function warnIfUntied(log: { warn(msg: string): void } | undefined): void {
  if (warned || !log) return;
  const h = resolveHelpers();
  if (h.setpriv && h.timeout) return;
  warned = true;
  log.warn(h.setpriv
    ? 'coreutils\' timeout is not on PATH: processes that image stream scripts start may outlive a crash of nixreg'
    : 'setpriv (util-linux) with --pdeathsig is not on PATH: Nix builds and other child processes may outlive a crash of nixreg');
}

/** spawn(), with the child (and, if asked, its process group) tied to nixreg's lifetime. */
export function spawnTied(cmd: string, args: string[], opts: TiedOptions): ChildProcess {
  const { deathSignal, wholeGroup, ...spawnOpts } = opts;
  const h = resolveHelpers();
  // A missing program is left to spawn itself, so its error stays the familiar
  // `spawn cmd ENOENT` (nix-health.ts diagnoses a missing Nix by it) rather than
  // setpriv's exit status 127.
  const program = h.setpriv ? findProgram(cmd, spawnOpts.env ?? process.env) : undefined;
  if (!program) return spawn(cmd, args, spawnOpts);
  const inner = wholeGroup && h.timeout ? [h.timeout, '--kill-after=5', '0', program] : [program];
  return spawn(h.setpriv!, ['--pdeathsig', deathSignal, '--', ...inner, ...args], spawnOpts);
}

/** A child process used as a stream filter; `done` rejects on a nonzero exit. */
export function spawnFilter(cmd: string, args: string[]): { stdin: Writable; stdout: Readable; done: Promise<void>; kill(): void } {
  // SIGKILL if nixreg dies: a filter holds nothing that needs cleaning up.
  const child = spawnTied(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], deathSignal: 'SIGKILL' });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { if (stderr.length < 4096) stderr += c.toString(); });
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`${cmd}: ${e.message}`)));
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim().slice(0, 500)}`));
    });
  });
  // The reason a filter dies is in its exit status; an EPIPE on its stdin says less.
  done.catch(() => {});
  return { stdin: child.stdin!, stdout: child.stdout!, done, kill: () => { child.kill('SIGKILL'); } };
}
