// bench/serve's authenticated section: what --auth costs a manifest GET. It owns a pair
// of nixreg servers of this build, started alike on fresh data directories with the same
// image pushed, one of them with --auth; their auth file and htpasswd file; the Docker
// token flow run against the one with --auth; and the rows of its table.
//
// The baseline is a second, fresh nixreg rather than the one compared with Distribution,
// so that the two differ in --auth alone and not in what they went through before (the
// 1 GiB push, the other wrk cases). Three targets are measured in rotating order:
// the plain server without credentials, the --auth server with `Authorization: Bearer`
// (what docker sends after the token flow), and the --auth server with `Authorization:
// Basic` on every request (what curl and scripts send). Both authenticated rates are
// ratios against the plain one, paired by round (report.ts, pairedRow) because this
// machine's load drifts more between rounds than the gate costs; the goal (≥ 0.9×) is on
// the Bearer row. The Basic row has none: it is as fast only while the credential cache
// of src/registry/auth/logins.ts works, so a low ratio there points at that cache.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { call, checkManifest, DOCKER_ACCEPT, expect, pushImage, type Reply } from './client.js';
import { syntheticImage } from './content.js';
import { alternate, pairedRow, type Measured, type Row } from './report.js';
import { startNixreg, type Server } from './servers.js';
import { runWrk, type WrkResult } from './wrk.js';

export interface AuthBenchOptions {
  /** dist/src/main.cjs of the build under test. */
  cli: string;
  /** An empty directory for the servers' data and the auth files. */
  dir: string;
  seconds: number;
  rounds: number;
  threads: number;
  connections: number;
  /** Directory for `node --cpu-prof` profiles of both servers (written when they stop). */
  cpuProfDir?: string | undefined;
  /** Called with each server as soon as it runs, so the caller's cleanup stops it. */
  track(s: Server): void;
  log(msg: string): void;
}

export interface AuthBenchResult {
  /** One sentence on what was compared, for the line above the table. */
  setup: string;
  rows: Row[];
}

const USER = 'bench';
/** Long enough to outlive any run of the benchmark: an expired token would turn into 401s mid-run. */
const TOKEN_TTL = 3600;
const GOAL = 0.9;

interface Target { name: string; pid: number; url: string; headers: Record<string, string> }

export async function runAuthBench(o: AuthBenchOptions): Promise<AuthBenchResult> {
  // -------------------------------------------------------------- the auth file
  // htpasswd itself, as an operator would make the file: its `$2y$` hashes at its default cost.
  const password = randomBytes(12).toString('hex');
  let line: string;
  try {
    line = execFileSync('htpasswd', ['-nbB', USER, password], { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
  } catch (e) {
    throw new Error(`htpasswd failed (apt-get install apache2-utils): ${(e as Error).message}`);
  }
  const cost = Number(/^[^:]+:\$2[aby]\$(\d\d)\$/.exec(line)?.[1]);
  if (!cost) throw new Error(`htpasswd -B wrote no bcrypt line: ${line}`);
  writeFileSync(join(o.dir, 'htpasswd'), `${line}\n`);
  const authFile = join(o.dir, 'auth.yml');
  writeFileSync(authFile, [
    'htpasswd: ./htpasswd',
    'token:',
    `  ttl: ${TOKEN_TTL}`,
    'accessControl:',
    '  repositories:',
    '    "bench/**":',
    '      policies:',
    `        - users: [${USER}]`,
    '          actions: [read, create]',
    '',
  ].join('\n'));
  const basic = { Authorization: `Basic ${Buffer.from(`${USER}:${password}`).toString('base64')}` };

  // -------------------------------------------------------------- the pair
  const prof = (name: string) => (o.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir, '--cpu-prof-name', `${name}.cpuprofile`] : []);
  for (const d of ['plain', 'auth']) mkdirSync(join(o.dir, d));
  const plain = await startNixreg(o.cli, join(o.dir, 'plain'), { name: 'nixreg', nodeArgs: prof('nixreg-plain') });
  o.track(plain);
  const authed = await startNixreg(o.cli, join(o.dir, 'auth'), {
    name: 'nixreg --auth', args: ['--auth', authFile], ready: basic, nodeArgs: prof('nixreg-auth'),
  });
  o.track(authed);
  o.log(`nixreg at ${plain.url} (pid ${plain.pid}), nixreg --auth at ${authed.url} (pid ${authed.pid}); htpasswd -B cost ${cost}`);

  // -------------------------------------------------------------- the same image in both, the way docker pushes
  const img = syntheticImage('bench/app', 'v1');
  const digest = await pushImage(plain.url, img);
  const pushToken = await dockerToken(authed.url, `repository:${img.repo}:pull,push`, basic);
  const pushed = await pushImage(authed.url, img, bearer(pushToken));
  if (pushed !== digest) throw new Error(`the two servers gave the same manifest different digests: ${digest}, ${pushed}`);

  // The pull token, for the scope the manifest's own challenge names (docker pull's step 1).
  const path = `/v2/${img.repo}/manifests/${img.tag}`;
  const denied = await call('GET', `${authed.url}${path}`, { Accept: DOCKER_ACCEPT });
  if (denied.status !== 401) throw new Error(`nixreg --auth answered a manifest GET without credentials with ${denied.status}, not 401: is the gate on?`);
  const scope = challenge(denied).scope;
  if (scope !== `repository:${img.repo}:pull`) throw new Error(`the 401 names scope ${scope}, not repository:${img.repo}:pull`);
  const pullToken = await dockerToken(authed.url, scope, basic);

  await checkManifest(plain.url, img, digest, {}, 'nixreg');
  await checkManifest(authed.url, img, digest, bearer(pullToken), 'nixreg --auth with the Bearer token');
  await checkManifest(authed.url, img, digest, basic, 'nixreg --auth with Basic credentials');
  o.log(`pushed ${img.repo}:${img.tag} (${digest}) to both; pull token of ${pullToken.length} characters`);

  // -------------------------------------------------------------- manifest GET, rotating
  const accept = { Accept: DOCKER_ACCEPT };
  const none: Target = { name: 'no auth', pid: plain.pid, url: plain.url, headers: accept };
  const viaBearer: Target = { name: 'Bearer', pid: authed.pid, url: authed.url, headers: { ...accept, ...bearer(pullToken) } };
  const viaBasic: Target = { name: 'Basic', pid: authed.pid, url: authed.url, headers: { ...accept, ...basic } };
  const targets = [none, viaBearer, viaBasic];
  const wrk = (seconds: number) => (t: Target) => runWrk({
    url: `${t.url}${path}`, headers: t.headers, seconds, threads: o.threads, connections: o.connections,
  });
  // Warm-up: JIT, caches (the token and credential caches too), connections; not recorded.
  for (const t of targets) await wrk(2)(t);
  const r = await alternate(targets, o.rounds, wrk(o.seconds));
  for (const t of targets) o.log(`manifest GET by tag, ${t.name}: ${r.get(t)!.map((x) => x.v.rps.toFixed(0)).join(', ')} req/s`);
  const perRound = (t: Target) => r.get(t)!.map((x, i) => (x.v.rps / r.get(none)![i]!.v.rps).toFixed(2)).join(', ');
  o.log(`per-round rate ratios to no auth: Bearer ${perRound(viaBearer)}; Basic ${perRound(viaBasic)}`);

  // -------------------------------------------------------------- rows
  const rows: Row[] = [];
  const of = (t: Target, f: (x: Measured<WrkResult>) => number) => r.get(t)!.map(f);
  const cpuUs = (x: Measured<WrkResult>) => (x.cpuMs * 1000) / x.v.requests;
  for (const [t, label, goal] of [[viaBearer, 'Bearer token', GOAL], [viaBasic, 'Basic credentials', undefined]] as const) {
    rows.push(pairedRow(`manifest GET by tag, ${label} (req/s)`, of(t, (x) => x.v.rps), of(none, (x) => x.v.rps), 'higher', goal, 0));
    rows.push(pairedRow(`manifest GET by tag, ${label} p99 (ms)`, of(t, (x) => x.v.p99ms), of(none, (x) => x.v.p99ms), 'lower', undefined, 2));
    rows.push(pairedRow(`manifest GET by tag, ${label}: server CPU per request (µs)`, of(t, cpuUs), of(none, cpuUs), 'lower', undefined, 0));
  }
  const setup = `nixreg --auth (htpasswd -B cost ${cost}, token ttl ${TOKEN_TTL} s, user ${USER} may read and create bench/**) `
    + 'against the same build without --auth, both on fresh data dirs with the same image pushed; '
    + 'Bearer: a pull token from GET /token, as docker pull gets it; Basic: the user\'s credentials on every request; '
    + 'each round runs the three back to back, and a ratio is the median of the per-round ratios';
  return { setup, rows };
}

function bearer(token: string): Record<string, string> {
  return { Authorization: `Bearer ${token}` };
}

/** The parameters of a 401's `WWW-Authenticate: Bearer realm=…,service=…[,scope=…]`. */
function challenge(r: Reply): Record<string, string> {
  const h = String(r.headers['www-authenticate'] ?? '');
  if (!/^Bearer /i.test(h)) throw new Error(`401 without a Bearer challenge: ${JSON.stringify(h)}`);
  return Object.fromEntries([...h.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
}

/**
 * The Docker token flow as a client runs it: GET /v2/ without credentials for the
 * challenge, then its realm with the service and `scope`, with Basic credentials.
 */
async function dockerToken(base: string, scope: string, basic: Record<string, string>): Promise<string> {
  const c = challenge(expect(await call('GET', `${base}/v2/`), 401, `GET ${base}/v2/ without credentials`));
  if (!c.realm || !c.service) throw new Error(`challenge without realm or service: ${JSON.stringify(c)}`);
  const url = new URL(c.realm);
  url.searchParams.set('service', c.service);
  url.searchParams.set('scope', scope);
  const r = expect(await call('GET', url.toString(), basic), 200, `GET ${url}`);
  const body = JSON.parse(r.body.toString()) as { token?: string; access_token?: string; expires_in?: number; issued_at?: string };
  if (!body.token || body.access_token !== body.token || body.expires_in !== TOKEN_TTL || !body.issued_at) {
    throw new Error(`unexpected token response: ${r.body.toString().slice(0, 300)}`);
  }
  return body.token;
}
