// A second machine for Nix's distributed builds, made on this one: a mount namespace
// (`unshare --mount`) whose /nix is an empty tmpfs, so its store is a store of its own
// (the first Nix command that opens it creates the database), and an sshd in it on a free
// loopback port, with its own configuration, host key and authorized key in a temp dir
// (root may log in by that key only, and only through this sshd). Over ssh-ng the host's
// Nix runs `nix-daemon --stdio` there, which sshd's default PATH finds in /usr/bin.
//
// The machine's /nix holds `remote-id`, a value of its own: a builder that runs there
// (sandbox off) can read it, one on the host cannot. Its Nix settings are the tests' usual
// ones in a nix.conf of its own (NIX_CONF_DIR, set by sshd for every session), and builds
// run as root, without build users: Nix kills every process of a build user's uid before a
// build, and this store's build-user locks are not the host's, so sharing nixbld1..10
// with the host's builds (other tests, in parallel) could kill theirs.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon } from './daemon.js';
import { requireTool, run, type RunResult } from './exec.js';
import { freePorts } from './ports.js';
import { tempDir } from './registry.js';

export const SSHD = '/usr/sbin/sshd';

export interface RemoteBuilder {
  /** What the machine's /nix/remote-id says. */
  id: string;
  /** A machines file (the format of /etc/nix/machines) naming this machine over ssh-ng. */
  machines: string;
  /** What the host's Nix needs in NIX_SSHOPTS to reach it (port, known host key). */
  sshOpts: string;
  /** Runs a command in the machine (its mount namespace), with its Nix settings. */
  exec(cmd: string, args: string[]): Promise<RunResult>;
  stop(): Promise<void>;
}

/** Nix's name for this machine's platform, as a machines file lists it. */
function currentSystem(): string {
  const r = spawnSync('nix-instantiate', ['--eval', '--json', '--expr', 'builtins.currentSystem'], { encoding: 'utf8' });
  const system = JSON.parse(r.stdout || 'null') as string | null;
  if (!system) throw new Error(`cannot ask Nix for builtins.currentSystem: ${r.stderr}`);
  return system;
}

export async function startRemoteBuilder(): Promise<RemoteBuilder> {
  await requireTool(SSHD);
  await requireTool('ssh');
  const dir = tempDir('nixreg-remote-builder-');
  const id = `remote-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const file = (name: string, text: string, mode = 0o600) => { const p = join(dir, name); writeFileSync(p, text); chmodSync(p, mode); return p; };
  for (const key of ['host_key', 'client_key']) await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', key, '-f', join(dir, key)]);
  const port = await freePorts(1);
  mkdirSync(join(dir, 'nix-conf'));
  file('nix-conf/nix.conf', 'substituters =\nsandbox = false\nbuild-users-group =\n', 0o644);
  file('authorized_keys', readFileSync(join(dir, 'client_key.pub'), 'utf8'));
  const sshdConfig = file('sshd_config', [
    `Port ${port}`, 'ListenAddress 127.0.0.1', `HostKey ${join(dir, 'host_key')}`, `PidFile ${join(dir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`, 'PermitRootLogin prohibit-password',
    'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'UsePAM no',
    // The temp dir's parents (/tmp) are world-writable, which strict modes refuse.
    'StrictModes no', `SetEnv NIX_CONF_DIR=${join(dir, 'nix-conf')}`, '',
  ].join('\n'));
  const hostKey = readFileSync(join(dir, 'host_key.pub'), 'utf8').split(' ').slice(0, 2).join(' ');
  file('known_hosts', `[127.0.0.1]:${port} ${hostKey}\n`);
  const sshConfig = file('ssh_config', [
    'Host 127.0.0.1', `  Port ${port}`, `  UserKnownHostsFile ${join(dir, 'known_hosts')}`,
    '  StrictHostKeyChecking yes', '  BatchMode yes', '  IdentitiesOnly yes', '',
  ].join('\n'));
  // Nix's machines format: URI, platforms, SSH key, jobs, speed, features, mandatory features.
  const machines = file('machines', `ssh-ng://root@127.0.0.1 ${currentSystem()} ${join(dir, 'client_key')} 2 1 - - -\n`, 0o644);
  const sshOpts = `-F ${sshConfig}`;

  // sshd insists on its privilege separation directory, /run/sshd, which Debian makes
  // only when it starts the service: the machine gets a /run of its own to hold it.
  const script = [
    'mount -t tmpfs -o mode=755 nix /nix',
    'printf "%s\\n" "$1" > /nix/remote-id',
    'mount -t tmpfs -o mode=755 run /run',
    'mkdir -m 755 /run/sshd',
    'exec "$2" -D -e -f "$3"',
  ].join('; ');
  // setpriv and unshare exec, as does the script: the daemon's pid is sshd's, and the
  // kernel ends it if the test runner dies. The namespace (and its tmpfs) ends with it.
  const probe = ['-F', sshConfig, '-i', join(dir, 'client_key'), '-o', 'ConnectTimeout=5', 'root@127.0.0.1', 'cat /nix/remote-id'];
  const daemon = await startDaemon('sshd', 'setpriv', [
    '--pdeathsig', 'SIGTERM', '--', 'unshare', '--mount', '--propagation', 'private', '--',
    'sh', '-euc', script, 'remote-builder', id, SSHD, sshdConfig,
  ], dir, async () => (await run('ssh', probe, { check: false })).stdout.trim() === id);
  const pid = Number(readFileSync(join(dir, 'sshd.pid'), 'utf8'));
  return {
    id, machines, sshOpts,
    exec: (cmd, args) => run('nsenter', [`--target=${pid}`, '--mount', '--', cmd, ...args], {
      check: false, env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', NIX_CONF_DIR: join(dir, 'nix-conf') },
    }),
    stop: () => daemon.stop(),
  };
}
