// Which registry clients on this machine speak HTTP/2 when a server offers it: docker
// (dockerd), containerd's ctr and skopeo each push and pull a small image through the
// HTTP/2 front, which records every connection's ALPN result and every request's HTTP
// version; curl is the control (it does offer h2). One client at a time, so the lines
// a step adds to the front's log are that client's.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startContainerd } from '../../test/helpers/containerd.js';
import { startDockerd } from '../../test/helpers/dockerd.js';
import { run } from '../../test/helpers/exec.js';
import { multiLayerContext } from '../../test/e2e/fixtures.js';
import type { Certs, Proc } from './servers.js';

export interface ProbeRow {
  client: string;
  version: string;
  /** ALPN results of the client's connections: 'h2', 'http/1.1', or 'none' (no ALPN sent). */
  alpn: Record<string, number>;
  /** HTTP versions of its requests. */
  http: Record<string, number>;
}

interface Line { event: string; alpn?: string | null; http?: string }

function linesSince(log: string, offset: number): { lines: Line[]; end: number } {
  const text = readFileSync(log, 'utf8');
  const lines = text.slice(offset).split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line);
  return { lines, end: text.length };
}

function tally(lines: Line[]): Pick<ProbeRow, 'alpn' | 'http'> {
  const alpn: Record<string, number> = {};
  const http: Record<string, number> = {};
  for (const l of lines) {
    if (l.event === 'connection') { const k = l.alpn ?? 'none'; alpn[k] = (alpn[k] ?? 0) + 1; }
    if (l.event === 'request') { const k = l.http!; http[k] = (http[k] ?? 0) + 1; }
  }
  return { alpn, http };
}

const versionOf = (cmd: string, args: string[]) => {
  try { return execFileSync(cmd, args, { encoding: 'utf8' }).trim().split('\n')[0]!; } catch { return '?'; }
};

export async function probeClients(front: Proc, certs: Certs, work: string): Promise<ProbeRow[]> {
  const host = `127.0.0.1:${front.port}`;
  const rows: ProbeRow[] = [];
  let offset = readFileSync(front.log, 'utf8').length;
  const step = async (client: string, version: string, fn: () => Promise<unknown>) => {
    await fn();
    const { lines, end } = linesSince(front.log, offset);
    offset = end;
    rows.push({ client, version, ...tally(lines) });
  };

  const dockerd = await startDockerd();
  const containerd = await startContainerd().catch(async (e: unknown) => { await dockerd.stop(); throw e; });
  // dockerd trusts a registry's CA from here, read at each connection; removed below
  // (and certs.d itself if it was made here and nothing else put a file in it meanwhile).
  const certsD = `/etc/docker/certs.d/${host}`;
  const madeCertsD = !existsSync('/etc/docker/certs.d');
  const ctx = multiLayerContext('probe');
  try {
    mkdirSync(certsD, { recursive: true });
    copyFileSync(certs.ca, join(certsD, 'ca.crt'));
    const ref = `${host}/probe/docker:v1`;
    await run('docker', ['build', '-q', '-t', ref, ctx.dir], { env: { ...dockerd.env, DOCKER_BUILDKIT: '0' } });
    const dockerVersion = (await dockerd.docker(['version', '--format', 'dockerd {{.Server.Version}}'])).stdout.trim();
    await step('docker push', dockerVersion, () => dockerd.docker(['push', ref]));
    await dockerd.docker(['rmi', ref]);
    await step('docker pull', dockerVersion, () => dockerd.docker(['pull', ref]));

    // ctr treats 127.0.0.1 as plain HTTP unless a hosts.toml says otherwise.
    const hostsDir = join(work, 'ctr-hosts');
    mkdirSync(join(hostsDir, host), { recursive: true });
    writeFileSync(join(hostsDir, host, 'hosts.toml'), [
      `server = "https://${host}"`, `[host."https://${host}"]`, '  capabilities = ["pull", "resolve", "push"]', `  ca = ${JSON.stringify(certs.ca)}`, '',
    ].join('\n'));
    const ctrVersion = versionOf('ctr', ['--version']);
    await step('ctr pull', ctrVersion, () => containerd.ctr(['images', 'pull', '--hosts-dir', hostsDir, ref]));
    await containerd.ctr(['images', 'tag', ref, `${host}/probe/ctr:v1`]);
    await step('ctr push', ctrVersion, () => containerd.ctr(['images', 'push', '--hosts-dir', hostsDir, `${host}/probe/ctr:v1`]));

    const certDir = join(work, 'skopeo-certs');
    mkdirSync(certDir, { recursive: true });
    copyFileSync(certs.ca, join(certDir, 'ca.crt'));
    const skopeoVersion = versionOf('skopeo', ['--version']);
    const layout = join(work, 'skopeo-dir');
    await step('skopeo copy (pull)', skopeoVersion, () => run('skopeo', ['--insecure-policy', 'copy', '--src-cert-dir', certDir, `docker://${ref}`, `dir:${layout}`]));
    await step('skopeo copy (push)', skopeoVersion, () => run('skopeo', ['--insecure-policy', 'copy', '--dest-cert-dir', certDir, `dir:${layout}`, `docker://${host}/probe/skopeo:v1`]));

    await step('curl (control)', versionOf('curl', ['--version']).split(' ').slice(0, 2).join(' '), () => run('curl', ['-sS', '--fail', '--cacert', certs.ca, '-o', '/dev/null', `https://${host}/v2/`]));
  } finally {
    rmSync(certsD, { recursive: true, force: true });
    if (madeCertsD) { try { rmdirSync('/etc/docker/certs.d'); } catch { /* not empty: someone else's */ } }
    ctx.cleanup();
    await Promise.allSettled([dockerd.stop(), containerd.stop()]);
  }
  return rows;
}
