// A throwaway PostgreSQL 15 cluster for tests (Debian's postgresql-15): initdb in a temp
// dir, the postmaster as this process's child (not daemonized by pg_ctl, so CI's session
// cleanup reaches it), on 127.0.0.1 and a free port with its unix socket in the temp dir.
// One cluster serves a test file; createDatabase() gives each test a fresh database.
// initdb and postgres refuse to run as root: as root they run as Debian's `postgres` user
// (made by the package), through setpriv (util-linux), which execs rather than forks, so the
// child's pid is the postmaster's.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { run } from './exec.js';
import { freePorts } from './ports.js';

export const PG_BIN = '/usr/lib/postgresql/15/bin';

export interface PostgresOptions {
  /**
   * false: fsync, synchronous_commit and full_page_writes off, for speed. A crash of the
   * postmaster can then lose acknowledged commits (an OS crash could; a killed backend
   * cannot), so tests of durability keep the default, true.
   */
  durable?: boolean;
  /** Any other server settings (`-c name=value`), e.g. max_connections or tcp_keepalives_idle. */
  settings?: Record<string, string | number>;
}

export interface Postgres {
  /** postgres://nixreg:PASSWORD@127.0.0.1:PORT/postgres (a superuser, password authentication). */
  url: string;
  host: string;
  port: number;
  user: string;
  password: string;
  dir: string;
  /** A new empty database (a generated name unless given); returns its URL. */
  createDatabase(name?: string): Promise<string>;
  /** SIGSTOP to the postmaster and every backend: connections open, nothing answers ("slow"). */
  pause(): void;
  resume(): void;
  /**
   * Shuts the server down, keeping its data: connections are refused ("down"). fast: a
   * clean shutdown; immediate: as in a crash, so the next up() runs crash recovery, which
   * with fsync on first syncs every file of the cluster (seconds on a busy disk).
   */
  down(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Starts it again on the same port and data after down(). */
  up(): Promise<void>;
  /** The postmaster and its children (backends, checkpointer, ...), for measurements. */
  pids(): number[];
  logs(): string;
  /** Stops the server and removes its directory; safe to call twice. */
  stop(): Promise<void>;
}

let databases = 0;

export async function startPostgres(options: PostgresOptions = {}): Promise<Postgres> {
  if (!existsSync(join(PG_BIN, 'postgres'))) {
    throw new Error(`${PG_BIN}/postgres is missing: install postgresql-15 (run .ci/run)`);
  }
  const asRoot = process.getuid?.() === 0;
  let uid = process.getuid?.() ?? 0;
  let gid = process.getgid?.() ?? 0;
  if (asRoot) {
    uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
    gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  }
  // setpriv changes only the ids: HOME and the rest stay, which neither program reads. The
  // inner one makes the kernel stop the server (SIGQUIT: immediate shutdown) if this process
  // dies without stop(); it comes second because a change of uid clears that setting.
  const as = (cmd: string, args: string[]): [string, string[]] => {
    const orphanless = ['--pdeathsig', 'SIGQUIT', '--', cmd, ...args];
    return asRoot
      ? ['setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', 'setpriv', ...orphanless]]
      : ['setpriv', orphanless];
  };

  // Short: the socket path (DIR/.s.PGSQL.PORT) must fit in sun_path.
  const dir = mkdtempSync('/tmp/nxpg-');
  const data = join(dir, 'data');
  const user = 'nixreg';
  const password = randomBytes(12).toString('hex');
  let port = await freePorts(1);
  const host = '127.0.0.1';
  chownSync(dir, uid, gid);
  const pwfile = join(dir, 'password');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  chownSync(pwfile, uid, gid);

  const settings: Record<string, string | number> = {
    listen_addresses: host,
    port,
    unix_socket_directories: dir,
    ...(options.durable === false ? { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' } : {}),
    ...options.settings,
  };
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let log = '';
  const keep = (c: Buffer) => { log = (log + c.toString()).slice(-64 * 1024); };

  async function up(): Promise<void> {
    const [cmd, args] = as(join(PG_BIN, 'postgres'), ['-D', data, ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])]);
    const c = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    exited = new Promise((r) => c.once('exit', () => r()));
    c.stdout!.on('data', keep);
    c.stderr!.on('data', keep);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => { void down('immediate'); reject(new Error(`postgres did not start in 60 s:\n${log}`)); }, 60_000);
      let since = '';
      const check = (chunk: Buffer) => {
        since += chunk.toString();
        if (since.includes('database system is ready to accept connections')) {
          clearTimeout(t);
          c.stderr!.off('data', check);
          resolve();
        }
      };
      c.stderr!.on('data', check);
      void exited.then(() => { clearTimeout(t); reject(new Error(`postgres exited ${c.exitCode ?? c.signalCode}:\n${log}`)); });
    });
  }

  function pids(): number[] {
    const main = child?.pid;
    if (main === undefined || child!.exitCode !== null || child!.signalCode !== null) return [];
    const kids: number[] = [];
    for (const e of readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      try {
        // The command may hold spaces and parentheses: the ppid is the 2nd field after the last ')'.
        const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
        if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === main) kids.push(Number(e));
      } catch { /* gone */ }
    }
    return [main, ...kids];
  }

  const signal = (pid: number, sig: NodeJS.Signals) => { try { process.kill(pid, sig); } catch { /* gone */ } };
  let paused = false;
  function pause(): void {
    // The postmaster first, so that it forks no backend the list below would miss.
    const main = pids()[0];
    if (main === undefined) return;
    signal(main, 'SIGSTOP');
    for (const p of pids().slice(1)) signal(p, 'SIGSTOP');
    paused = true;
  }
  function resume(): void {
    const [main, ...kids] = pids();
    for (const p of kids) signal(p, 'SIGCONT');
    if (main !== undefined) signal(main, 'SIGCONT');
    paused = false;
  }
  async function down(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    if (paused) resume();
    c.kill(mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
    const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }

  try {
    const [cmd, args] = as(join(PG_BIN, 'initdb'), ['-D', data, '-U', user, `--pwfile=${pwfile}`,
      '--auth-host=scram-sha-256', '--auth-local=trust', '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions']);
    await run(cmd, args, { cwd: dir });
    // The port was free when drawn; a process started since may have taken it.
    for (let attempt = 1; ; attempt++) {
      try {
        await up();
        break;
      } catch (e) {
        if (attempt === 3 || !/Address already in use/.test((e as Error).message)) throw e;
        settings.port = port = await freePorts(1);
      }
    }
  } catch (e) {
    await down('immediate');
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }

  const urlOf = (db: string) => `postgres://${user}:${password}@${host}:${port}/${db}`;
  return {
    url: urlOf('postgres'), host, port, user, password, dir,
    async createDatabase(name = `t${++databases}_${randomBytes(4).toString('hex')}`) {
      if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`not a plain database name: ${name}`);
      const admin = new pg.Client({ connectionString: urlOf('postgres') });
      await admin.connect();
      try { await admin.query(`CREATE DATABASE ${name}`); } finally { await admin.end(); }
      return urlOf(name);
    },
    pause, resume, down, up, pids,
    logs: () => log,
    async stop() {
      await down('fast');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
