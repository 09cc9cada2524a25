// The registries under test, each as its real binary on a free loopback port with its
// own temporary data directory. Their output goes to a log file, not a pipe, so a
// chatty server never stalls on a full pipe and never costs the bench process CPU.
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, writeFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { call } from './client.js';

export interface Server {
  name: string;
  url: string;
  pid: number;
  logFile: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * Starts `cmd` with its output appended to `logFile` and waits (at most 15 s) until
 * `ready` says yes; stop() ends it with SIGTERM, SIGKILL 10 s later. bench/http2 starts
 * its processes through this too.
 */
export async function spawnReady(cmd: string, args: string[], logFile: string, ready: () => Promise<boolean>, env?: NodeJS.ProcessEnv): Promise<{ pid: number; stop(): Promise<void> }> {
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: env ?? process.env });
  } finally {
    closeSync(fd);
  }
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let dead = false;
  void exited.then(() => { dead = true; });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  };
  for (let i = 0; i < 150; i++) {
    if (dead) break;
    if (await ready().catch(() => false)) return { pid: child.pid!, stop };
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`${cmd} ${args.join(' ')} did not start; its log:\n${readFileSync(logFile, 'utf8').slice(-4000)}`);
}

/** `ready`: headers for the readiness probe, GET /v2/ (credentials, for a server with --auth). */
async function launch(name: string, cmd: string, args: string[], url: string, logFile: string, ready: Record<string, string> = {}, env?: NodeJS.ProcessEnv): Promise<Server> {
  const p = await spawnReady(cmd, args, logFile, async () => (await call('GET', `${url}/v2/`, ready)).status === 200, env);
  return { name, url, logFile, ...p };
}

export interface NixregOptions {
  name?: string;
  /** More `serve` flags, e.g. --auth FILE. */
  args?: string[];
  /** Flags for node itself, e.g. --cpu-prof. */
  nodeArgs?: string[];
  /** Headers for the readiness probe (credentials when `args` has --auth). */
  ready?: Record<string, string>;
  /** Its environment (default: this process's), e.g. NIXREG_METRICS=off. */
  env?: NodeJS.ProcessEnv;
}

/** `nixreg serve` exactly as a user runs it (default log level). */
export async function startNixreg(cli: string, dir: string, o: NixregOptions = {}): Promise<Server> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  return launch(o.name ?? 'nixreg', process.execPath,
    [...o.nodeArgs ?? [], cli, 'serve', '--listen', `127.0.0.1:${port}`, '--data', join(dir, 'data'), ...o.args ?? []],
    url, join(dir, 'nixreg.log'), o.ready, o.env);
}

/**
 * CNCF Distribution 2.8 with filesystem storage. Its access log and info logging are
 * turned off and the in-memory blob descriptor cache on: the fastest configuration of
 * it we know, so that a ratio in nixreg's favour is not an artefact of logging.
 */
export async function startDistribution(bin: string, dir: string): Promise<Server> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const config = join(dir, 'config.yml');
  writeFileSync(config, [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(join(dir, 'data'))}`,
    '  delete:',
    '    enabled: true',
    '  cache:',
    '    blobdescriptor: inmemory',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '',
  ].join('\n'));
  return launch('distribution', bin, ['serve', config], url, join(dir, 'distribution.log'));
}
