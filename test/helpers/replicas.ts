// A set of `nixreg serve` replicas sharing one index (--database) and one bucket
// (--storage), behind Debian's nginx as a plain round-robin with no stickiness: what a
// Kubernetes Service or any load balancer does. Each replica keeps its own data directory
// (temporary files, GC roots), as a pod's emptyDir would.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireTool } from './exec.js';
import { freePorts } from './ports.js';
import { spawnRegistry, tempDir, type RegistryProcess } from './registry.js';

export interface ReplicaOptions {
  count?: number;
  /** postgres://… shared by every replica. */
  database: string;
  /** s3://BUCKET/PREFIX shared by every replica. */
  storage: string;
  /** The AWS_* variables of the S3 endpoint (Rgw.env). */
  env: NodeJS.ProcessEnv;
  args?: string[];
  images?: string;
}

export interface Replicas {
  /** The load balancer, round-robin over every replica. */
  url: string;
  host: string;
  replicas: RegistryProcess[];
  /** Starts replica `i` again (after a kill) with the same options and data directory. */
  restart(i: number): Promise<RegistryProcess>;
  stop(): Promise<void>;
}

/** nginx as a reverse proxy that streams both ways, as a registry needs. */
function nginxConf(dir: string, port: number, backends: string[]): string {
  return `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream nixreg {
${backends.map((b) => `    server ${b} max_fails=0;`).join('\n')}
    keepalive 16;
  }
  server {
    listen 127.0.0.1:${port};
    client_max_body_size 0;
    location / {
      proxy_pass http://nixreg;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 300s;
      proxy_send_timeout 300s;
      # A replica that died mid-request is not retried for a non-idempotent request;
      # a refused connection (a replica down) goes to the next one.
      proxy_next_upstream error;
    }
  }
}
`;
}

export async function startReplicas(opts: ReplicaOptions): Promise<Replicas> {
  await requireTool('nginx');
  const count = opts.count ?? 2;
  // nginx is on loopback: trusted, so each client is told apart behind it.
  const args = ['--database', opts.database, '--storage', opts.storage, '--trusted-proxies', '127.0.0.1', ...(opts.args ?? [])];
  const spawnOne = (data?: string) => spawnRegistry({ data, env: opts.env, args, ...(opts.images ? { images: opts.images } : {}) });
  const replicas: RegistryProcess[] = [];
  let nginx: ChildProcess | undefined;
  const dir = tempDir('nixreg-nginx-');
  try {
    for (let i = 0; i < count; i++) replicas.push(await spawnOne());
    // nginx's upstream names ports fixed at start, so a restarted replica must get its old
    // port back: replicas listen on ports chosen here, not on port 0.
    const port = await freePorts(1);
    for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, d));
    writeFileSync(join(dir, 'nginx.conf'), nginxConf(dir, port, replicas.map((r) => r.host)));
    let out = '';
    nginx = spawn('nginx', ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
    nginx.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
    const url = `http://127.0.0.1:${port}`;
    for (let t = Date.now(); ; await new Promise((r) => setTimeout(r, 50))) {
      if (nginx.exitCode !== null) throw new Error(`nginx exited ${nginx.exitCode}: ${out}`);
      if (await fetch(`${url}/healthz`).then((r) => r.ok, () => false)) break;
      if (Date.now() - t > 15_000) throw new Error(`nginx did not answer: ${out}`);
    }
    const proxy = nginx;
    return {
      url, host: `127.0.0.1:${port}`, replicas,
      async restart(i) {
        const old = replicas[i]!;
        await old.stop('SIGKILL');
        const [, p] = old.host.split(':');
        const again = await spawnRegistry({ data: old.data, env: opts.env, args: [...args, '--listen', `127.0.0.1:${p}`], ...(opts.images ? { images: opts.images } : {}) });
        replicas[i] = again;
        return again;
      },
      async stop() {
        proxy.kill('SIGTERM');
        await Promise.all(replicas.map((r) => r.stop()));
        for (const r of replicas) rmSync(r.data, { recursive: true, force: true });
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    nginx?.kill('SIGKILL');
    await Promise.all(replicas.map((r) => r.stop('SIGKILL')));
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
