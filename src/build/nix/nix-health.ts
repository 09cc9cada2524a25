// Whether Nix can build on this machine at all, and if not, what is wrong and how to
// fix it. A registry that builds on pull is useless without working Nix, and the
// failures a fresh machine shows (no build users, no daemon, a sandbox a container
// cannot give) come as Nix traces that name no fix. So: build a trivial derivation
// (probe.nix) at start, and put every failure through one table of diagnoses, both the
// probe's and those of real evaluations and builds.
//
// Room: build/nix, the Nix adapter. Of build, imports only the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { NixUnavailable } from '../errors.js';
import { NixError, buildProbe } from './nix.js';
import { essentialError } from './nix-errors.js';

interface Diagnosis {
  /** Matched against the failure's message and Nix's stderr. */
  when: RegExp;
  problem: (m: RegExpMatchArray) => string;
  fix: string;
}

const BUILD_USERS_FIX = 'create the Nix build users: on Debian, `apt-get install nix-setup-systemd`; or by hand, '
  + '`groupadd --system nixbld` and, for N in 1..10, `useradd --system --gid nixbld --groups nixbld --no-user-group '
  + '--home-dir /var/empty --shell /usr/sbin/nologin nixbldN`; '
  + 'or set `build-users-group =` in /etc/nix/nix.conf to build as the user nixreg runs as';

/** The one table: environment problems that stop every build, in the order they are tried. */
const DIAGNOSES: Diagnosis[] = [
  {
    when: /cannot run nix-(?:instantiate|store): .*ENOENT/,
    problem: () => 'Nix is not installed (nix-instantiate and nix-store are not on PATH)',
    fix: 'install Nix: on Debian, `apt-get install nix-bin`; elsewhere see https://nixos.org/download, and make sure nix-store is on the PATH nixreg starts with',
  },
  {
    when: /the group '([^']*)' specified in 'build-users-group' does not exist/,
    problem: (m) => `Nix is set to build as the users of the group '${m[1]}' (build-users-group), and that group does not exist`,
    fix: BUILD_USERS_FIX,
  },
  {
    when: /the build users group '([^']*)' has no members/,
    problem: (m) => `the Nix build users group '${m[1]}' has no members`,
    fix: BUILD_USERS_FIX,
  },
  {
    when: /cannot connect to socket at '([^']*)': Permission denied/,
    problem: (m) => `the user nixreg runs as may not open the Nix daemon's socket at ${m[1]}`,
    fix: 'give that user access to the socket: nix-daemon makes it writable for all, so look at the permissions of the directories above it; or point NIX_DAEMON_SOCKET_PATH at the daemon\'s socket',
  },
  {
    // The daemon closes the connection of a user that allowed-users does not name.
    when: /cannot open connection to remote store '[^']*': .*(?:Connection reset by peer|Broken pipe|end of file|end-of-file)/,
    problem: () => 'the Nix daemon refused the user nixreg runs as',
    fix: 'allow that user in the daemon\'s /etc/nix/nix.conf: add it (or @its-group) to allowed-users (the default, *, allows everyone), then restart nix-daemon',
  },
  {
    when: /cannot connect to socket at '([^']*)'/,
    problem: (m) => `Nix is set to build through its daemon, and no daemon listens at ${m[1]}`,
    fix: 'start the daemon (`systemctl start nix-daemon.socket`); or, with nixreg running as root, let Nix use the store directly (unset NIX_REMOTE, and no `store = daemon` in nix.conf)',
  },
  {
    // A build farm's front end (max-jobs = 0) whose farm is missing: no machine in
    // `builders`. Not when machines exist and none fits one derivation ("remote machines
    // may not have all required system features"): that is the image's, not the machine's.
    when: /unable to start any build;\s*either increase '--max-jobs' or enable remote builds/i,
    problem: () => 'Nix is set to build nothing on this machine (max-jobs = 0) and has no remote builders to send builds to',
    fix: 'name the build machines in `builders` (or /etc/nix/machines) of the Nix settings nixreg builds with (the daemon\'s, through the daemon), see "Build farm" in the README; or allow local builds with `max-jobs` above 0',
  },
  {
    when: /cloning builder process|creating new (?:user )?namespace|CLONE_NEWUSER|unable to (?:start|set up) (?:the )?(?:build|sandbox)|sandbox.*(?:not supported|Operation not permitted)/i,
    problem: () => 'Nix cannot set up its build sandbox here (a container without the privileges for namespaces, for instance)',
    fix: 'set `sandbox = false` in /etc/nix/nix.conf (Debian\'s nix-setup-systemd ships exactly that), or give the container the privileges the sandbox needs',
  },
  {
    // Nix's own state (/nix/var) or the store directory itself, not a file some build reads.
    when: /'\/nix\/(?:var\/[^']*|store\/?)'[^\n]*(?:Permission denied|Operation not permitted|Read-only file system)/i,
    problem: () => 'the user nixreg runs as cannot write the Nix store',
    fix: 'run nixreg as root (single-user Nix), or as a user allowed to use the Nix daemon with NIX_REMOTE=daemon',
  },
];

/** The environment problem behind a Nix failure, if it is one the table knows. */
export function diagnose(err: unknown): NixUnavailable | undefined {
  if (!(err instanceof NixError)) return undefined;
  const text = `${err.message}\n${err.stderr}`;
  for (const d of DIAGNOSES) {
    const m = text.match(d.when);
    if (m) return new NixUnavailable(d.problem(m), d.fix);
  }
  return undefined;
}

/**
 * Why a builder that runs a host program (`/bin/sh`, as every expression without nixpkgs
 * does) cannot start: Nix's sandbox shows a build only the store. Not an environment
 * problem (with nixpkgs' stdenv the sandbox is right), so a hint on the build's error.
 */
export function sandboxHint(stderr: string): string {
  const m = /executing '(\/(?!nix\/store\/)[^']*)': No such file or directory/.exec(stderr);
  return m ? ` (its builder runs ${m[1]}, a program outside the Nix store, which Nix's build sandbox hides: set \`sandbox = false\` in /etc/nix/nix.conf, or build with nixpkgs' stdenv)` : '';
}

export interface NixHealthOptions {
  env?: NodeJS.ProcessEnv | undefined;
  log?: Logger | undefined;
  /** A failed probe is repeated at most this often, on demand (default 5 s). */
  recheckMs?: number | undefined;
  /** A probe that takes longer has failed (default 60 s). */
  timeoutMs?: number | undefined;
}

/**
 * The probe's verdict, shared by every caller. Success is kept for good (a later
 * environment failure is diagnosed from the build that meets it, which calls `lost`);
 * a failure is re-probed on demand, so fixing the machine needs no restart.
 */
export class NixHealth {
  private verdict: Promise<void> | undefined;
  /** Whether the verdict in hand is known yet. */
  private settled = false;
  /** What stops Nix, while something does; when it was found. */
  private unavailable: NixUnavailable | undefined;
  private failedAt = 0;
  /** The problem last warned about, so that a re-probe meeting it again stays quiet. */
  private warned: string | undefined;

  readonly recheckMs: number;

  constructor(private readonly o: NixHealthOptions = {}) {
    this.recheckMs = o.recheckMs ?? 5000;
  }

  /** Resolves when Nix can build; rejects with NixUnavailable saying why not. */
  ready(): Promise<void> {
    if (!this.verdict || (this.unavailable && Date.now() - this.failedAt >= this.recheckMs)) {
      this.settled = false;
      const v = this.probe();
      this.verdict = v;
      v.then(() => { this.unavailable = undefined; }, (e: NixUnavailable) => this.failed(e))
        .finally(() => { if (this.verdict === v) this.settled = true; });
    }
    return this.verdict;
  }

  /** A build met an environment problem: probe again before the next build. */
  lost(problem: NixUnavailable): void {
    this.verdict = Promise.reject(problem);
    this.verdict.catch(() => {});
    this.settled = true;
    this.failed(problem);
  }

  /** For operators (/nixreg/stats): the verdict as it stands. */
  status(): { state: 'unknown' | 'checking' | 'ok' | 'failed'; problem?: string; fix?: string } {
    if (!this.verdict) return { state: 'unknown' };
    if (!this.settled) return { state: 'checking' };
    const u = this.unavailable;
    return u ? { state: 'failed', problem: u.problem, fix: u.fix } : { state: 'ok' };
  }

  private failed(e: NixUnavailable): void {
    this.unavailable = e;
    this.failedAt = Date.now();
  }

  private async probe(): Promise<void> {
    const log = this.o.log;
    const started = Date.now();
    try {
      await buildProbe(randomBytes(8).toString('hex'), { env: this.o.env, timeoutMs: this.o.timeoutMs ?? 60_000 });
    } catch (e) {
      const found = diagnose(e) ?? new NixUnavailable(
        `a trivial Nix build failed: ${e instanceof NixError ? essentialError(e.stderr) || e.message : String(e)}`,
        'run `nix-store --realise` on any derivation by hand to see the whole error, and fix what it names');
      // One warning per problem, not one per re-probe.
      if (found.problem !== this.warned) log?.warn({ problem: found.problem, fix: found.fix }, `Nix cannot build images: ${found.problem}. To fix it: ${found.fix}`);
      this.warned = found.problem;
      throw found;
    }
    log?.info({ ms: Date.now() - started }, this.warned ? 'Nix can build images again' : 'Nix can build images');
    this.warned = undefined;
  }
}
