// A real S3 for tests: a throwaway single-node Ceph cluster (one mon, one OSD, one radosgw,
// Debian's 16.2 packages) on 127.0.0.1, everything under one temp dir: its own config
// passed with -c, nothing read from or written to /etc/ceph, /var/lib/ceph or
// /var/log/ceph, no systemd. The settings and traps are in ../shared/research/s3-rgw.md.
// The daemons are this process's children, run as whoever runs the tests (root in CI).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { requireTool, run, waitFor } from './exec.js';
import { freePorts } from './ports.js';

export interface RgwOptions {
  /**
   * memstore (default): objects live in the OSD's RAM, fastest to start. bluestore: on a
   * sparse file in the temp dir, for tests that store hundreds of MB.
   */
  objectstore?: 'memstore' | 'bluestore';
  /** The OSD's capacity: memstore refuses writes at 95 % of it. Default 4 GiB. */
  capacityBytes?: number;
}

export interface S3Endpoint {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

export interface Rgw extends S3Endpoint {
  region: 'default';
  dir: string;
  /** The AWS SDK's own variables that point a child process (nixreg) at this S3. */
  env: Record<string, string>;
  /** A client with the settings this radosgw needs (see s3Client), plus `config`. */
  client(config?: S3ClientConfig): S3Client;
  createBucket(name: string): Promise<void>;
  /** SIGSTOP to radosgw: connections are accepted by the kernel and never answered. */
  pause(): void;
  resume(): void;
  pids(): { mon: number; osd: number; rgw: number };
  /** The tail of the daemons' logs, for a failure message. */
  logs(): string;
  /** Kills the daemons and removes the dir; safe to call twice. */
  stop(): Promise<void>;
}

/**
 * An S3 client for radosgw. Checksums only when an operation requires them: the SDK's
 * default sends stream bodies as aws-chunked with a trailing checksum, which radosgw 16
 * refuses (411 MissingContentLength). Path-style, as any endpoint that is not AWS needs.
 */
export function s3Client(s3: S3Endpoint, config: S3ClientConfig = {}): S3Client {
  // The SDK's Node 20 notice, off as nixreg's own client has it (src/blobs/store/s3.ts).
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...config,
  });
}

const TOOLS = ['setpriv', 'ceph-authtool', 'monmaptool', 'ceph-mon', 'ceph-osd', 'ceph', 'radosgw-admin', 'radosgw'];

function config(dir: string, fsid: string, base: number, opts: RgwOptions): string {
  const capacity = opts.capacityBytes ?? 4 * 1024 ** 3;
  const store = opts.objectstore === 'bluestore'
    ? ['osd objectstore = bluestore', 'bluestore block create = true', `bluestore block size = ${capacity}`,
      'bluestore fsck on mkfs = false', 'bluestore fsck on mount = false',
      // The OSD would otherwise grow its caches toward osd_memory_target (4 GiB).
      'bluestore cache autotune = false', 'bluestore cache size = 67108864']
    : ['osd objectstore = memstore', `memstore device bytes = ${capacity}`];
  return [
    '[global]',
    `fsid = ${fsid}`,
    `mon host = [v2:127.0.0.1:${base}]`,
    'public addr = 127.0.0.1',
    'cluster addr = 127.0.0.1',
    'ms bind msgr1 = false',
    // The OSD binds four ports (public, cluster, two heartbeats) from this range.
    `ms bind port min = ${base + 2}`,
    `ms bind port max = ${base + 9}`,
    'auth cluster required = none',
    'auth service required = none',
    'auth client required = none',
    // Without cephx the daemons' default mode, secure, cannot work: radosgw hangs at start.
    'ms mon client mode = crc',
    'ms client mode = crc',
    'ms cluster mode = crc',
    'ms service mode = crc',
    'ms mon cluster mode = crc',
    'ms mon service mode = crc',
    'osd pool default size = 1',
    'osd pool default min size = 1',
    'osd pool default pg num = 8',
    'osd pool default pg autoscale mode = off',
    'osd crush chooseleaf type = 0',
    'mon allow pool size one = true',
    // Each pool radosgw creates waits for a proposal: 1 s each by default.
    'paxos propose interval = 0.05',
    // The mon stops itself when its disk has less than 5 % free by default.
    'mon data avail warn = 2',
    'mon data avail crit = 1',
    `run dir = ${dir}/run`,
    `admin socket = ${dir}/run/$name.asok`,
    `pid file = ${dir}/run/$name.pid`,
    `log file = ${dir}/log/$name.log`,
    `mon cluster log file = ${dir}/log/$cluster.$channel.log`,
    `crash dir = ${dir}/crash`,
    `keyring = ${dir}/keyring`,
    '[mon]',
    `mon data = ${dir}/mon/$cluster-$id`,
    '[osd]',
    `osd data = ${dir}/osd/$id`,
    ...store,
    '[client.rgw.nixreg]',
    `rgw frontends = beast endpoint=127.0.0.1:${base + 1}`,
    `rgw data = ${dir}/rgw`,
    // Deleted objects are otherwise kept for 2 h (in RAM with memstore).
    'rgw gc obj min wait = 30',
    'rgw gc processor period = 30',
    '',
  ].join('\n');
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

export async function startRgw(opts: RgwOptions = {}): Promise<Rgw> {
  for (const t of TOOLS) await requireTool(t);
  // The ports were free when drawn; a process started since may have taken one.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startCluster(opts);
    } catch (e) {
      if (attempt === 3 || !/Address already in use/.test((e as Error).message)) throw e;
    }
  }
}

async function startCluster(opts: RgwOptions): Promise<Rgw> {
  const dir = mkdtempSync('/tmp/nxrgw-');
  for (const d of ['mon', 'osd/0', 'rgw', 'run', 'log', 'crash']) mkdirSync(join(dir, d), { recursive: true });
  const conf = join(dir, 'ceph.conf');
  const fsid = randomUUID();
  // base: mon, base+1: S3, base+2..base+9: the OSD's messenger ports.
  const base = await freePorts(10);
  writeFileSync(conf, config(dir, fsid, base, opts));
  const c = ['-c', conf];
  const ceph = (args: string[]) => run('ceph', [...c, '--connect-timeout', '10', ...args]);

  const children: Record<string, ChildProcess> = {};
  let out = '';
  const daemon = (name: string, cmd: string, args: string[]) => {
    // setpriv (util-linux) execs the daemon with the kernel told to kill it if this process
    // dies without stop(): a test runner killed in CI leaves no cluster behind.
    const child = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', cmd, ...c, ...args, '-f'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (b: Buffer) => { out = (out + `${name}: ${b.toString()}`).slice(-16 * 1024); };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    children[name] = child;
    return child;
  };
  // A daemon's exit is a result, not an error: waitFor would retry an error until its timeout.
  const until = async (name: string, probe: () => Promise<boolean>) => {
    const state = await waitFor(name, async () => {
      const ch = children[name]!;
      if (ch.exitCode !== null || ch.signalCode !== null) return 'exited';
      return (await probe()) ? 'ready' : undefined;
    }, 30_000);
    if (state === 'exited') throw new Error(`${name} exited ${children[name]!.exitCode ?? children[name]!.signalCode}`);
  };
  const logs = () => {
    const tail = (f: string) => { try { return readFileSync(join(dir, 'log', f), 'utf8').slice(-3000); } catch { return ''; } };
    return `${out}\n--- mon.a.log\n${tail('mon.a.log')}\n--- osd.0.log\n${tail('osd.0.log')}\n--- client.rgw.nixreg.log\n${tail('client.rgw.nixreg.log')}`;
  };
  const stop = async () => {
    // SIGKILL: on SIGTERM each daemon takes 2 s to stop, and nothing they hold outlives the dir.
    await Promise.all(Object.values(children).map((ch) => {
      if (ch.exitCode !== null || ch.signalCode !== null) return undefined;
      const gone = new Promise((r) => ch.once('exit', r));
      ch.kill('SIGKILL');
      return gone;
    }));
    rmSync(dir, { recursive: true, force: true });
  };

  const endpoint = `http://127.0.0.1:${base + 1}`;
  const accessKeyId = `NIXREG${randomBytes(7).toString('hex').toUpperCase()}`;
  const secretAccessKey = randomBytes(20).toString('base64url');
  try {
    await run('ceph-authtool', ['--create-keyring', join(dir, 'keyring'), '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${base}]`, join(dir, 'monmap')]);
    await run('ceph-mon', [...c, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')]);
    daemon('mon', 'ceph-mon', ['-i', 'a']);
    // Listening is enough: `ceph osd new` waits (up to its connect timeout) for the quorum.
    await until('mon', () => listening(base));

    const uuid = randomUUID();
    const id = (await ceph(['osd', 'new', uuid])).stdout.trim();
    if (id !== '0') throw new Error(`ceph osd new gave osd.${id}, expected osd.0`);
    await run('ceph-osd', [...c, '-i', '0', '--mkfs', '--osd-uuid', uuid]);
    daemon('osd', 'ceph-osd', ['-i', '0']);
    // radosgw-admin blocks until an OSD is up: wait for it here, where a death is noticed.
    await until('osd', async () => {
      const stat = JSON.parse((await ceph(['osd', 'stat', '-f', 'json'])).stdout) as { num_up_osds?: number };
      return stat.num_up_osds === 1;
    });

    // Also creates radosgw's pools.
    await run('radosgw-admin', [...c, 'user', 'create', '--uid=nixreg', '--display-name=nixreg tests',
      `--access-key=${accessKeyId}`, `--secret-key=${secretAccessKey}`]);
    daemon('rgw', 'radosgw', ['-n', 'client.rgw.nixreg']);
    await until('rgw', async () => {
      const r = await fetch(`${endpoint}/`, { signal: AbortSignal.timeout(2000) });
      return (await r.text()).includes('ListAllMyBucketsResult');
    });
  } catch (e) {
    const detail = logs();
    await stop();
    throw new Error(`the Ceph cluster did not start: ${(e as Error).message}\n${detail}`);
  }

  const s3: S3Endpoint = { endpoint, accessKeyId, secretAccessKey, region: 'default' };
  const signal = (sig: NodeJS.Signals) => { children.rgw!.kill(sig); };
  return {
    ...s3,
    region: 'default',
    dir,
    env: { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey, AWS_REGION: 'default', AWS_ENDPOINT_URL_S3: endpoint },
    client: (config) => s3Client(s3, config),
    async createBucket(name) {
      const client = s3Client(s3);
      try { await client.send(new CreateBucketCommand({ Bucket: name })); } finally { client.destroy(); }
    },
    pause: () => signal('SIGSTOP'),
    resume: () => signal('SIGCONT'),
    pids: () => ({ mon: children.mon!.pid!, osd: children.osd!.pid!, rgw: children.rgw!.pid! }),
    logs,
    stop,
  };
}
