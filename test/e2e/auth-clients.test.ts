// Real clients against one nixreg serving HTTPS with --auth (htpasswd users, zot
// policies): docker login/push/pull/run, a read-only user's denied push, anonymous pulls,
// a Kubernetes pull secret (docker config JSON) for docker and skopeo, skopeo both ways
// with --creds and cert dirs, ctr with --user and --tlscacert, an expression image built
// on pull through the gate (and refused a push), and a _catalog filtered per user.
//
// The registry listens on this machine's own IPv4 address, not on 127.0.0.1: dockerd
// counts every 127.0.0.0/8 registry as insecure and skips certificate checks there (it
// logs in with no CA at all), and ctr talks plain HTTP to a loopback registry even with
// --tlscacert; so only off loopback does trusting the CA mean anything, and can fail.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, copyFileSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { startContainerd, type Containerd } from '../helpers/containerd.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run, type RunResult } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { ROOT, spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { makeTls, writeAuthFile, writeHtpasswd, type TlsFiles } from '../helpers/tls.js';
import { busyboxRoot, MANIFEST_ACCEPT, multiLayerContext, re } from './fixtures.js';

const PW = { alice: 'alice-Secret-1', bob: 'bob-Secret-2', admin: 'admin-Secret-3' } as const;
type User = keyof typeof PW;
const CERTS_D = '/etc/docker/certs.d';
const TEAM_GREETING = 'hello from team/app over TLS';
const NIX_GREETING = 'Hello from an image Nix built on pull!';

let dockerd: Dockerd;
let containerd: Containerd;
let reg: RegistryProcess;
let tls: TlsFiles;
let host = '';
let dockerCerts = '';
let madeCertsD = false;
let layout = '';
let layoutDigest = '';
const dirs: string[] = [];

/** The first non-loopback IPv4 address: see the header for why loopback will not do. */
function hostAddress(): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  throw new Error('no non-loopback IPv4 address: dockerd skips TLS verification on loopback, so this test needs one');
}

function dir(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

before(async () => {
  for (const t of ['openssl', 'htpasswd', 'skopeo', 'umoci', 'nix-instantiate', 'nix-store']) await requireTool(t);
  const addr = hostAddress();
  tls = await makeTls(['localhost', '127.0.0.1', addr]);
  await writeHtpasswd(join(tls.dir, 'htpasswd'), PW);
  writeAuthFile(join(tls.dir, 'auth.yaml'), {
    htpasswd: './htpasswd',
    accessControl: {
      repositories: {
        'team/**': { policies: [
          { users: ['alice'], actions: ['read', 'create', 'update', 'delete'] },
          { users: ['bob'], actions: ['read'] },
        ] },
        'public/**': { defaultPolicy: ['read'], anonymousPolicy: ['read'] },
        // alice may push here by policy, so a refused push is the expression's doing.
        'nix/**': { policies: [{ users: ['alice'], actions: ['read', 'create', 'update'] }], defaultPolicy: ['read'] },
      },
      adminPolicy: { users: ['admin'], actions: ['read', 'create', 'update', 'delete'] },
    },
  });
  const images = dir('nixreg-images-');
  mkdirSync(join(images, 'nix'));
  copyFileSync(join(ROOT, 'examples/hello.nix'), join(images, 'nix/hello.nix'));

  // One single-layer OCI layout for skopeo, made with umoci as skopeo.test.ts does.
  const work = dir('nixreg-auth-oci-');
  const root = busyboxRoot();
  dirs.push(root);
  layout = join(work, 'layout');
  await run('umoci', ['init', '--layout', layout]);
  await run('umoci', ['new', '--image', `${layout}:img`]);
  await run('umoci', ['insert', '--image', `${layout}:img`, join(root, 'bin'), '/bin']);
  await run('umoci', ['config', '--image', `${layout}:img`, '--config.cmd', '/bin/busybox', '--config.cmd', 'true']);
  layoutDigest = refDigest(layout, 'img');

  const started = await Promise.allSettled([startDockerd(), startContainerd(), spawnRegistry({
    images, env: NIX_TEST_ENV,
    // A later --listen wins over the helper's 127.0.0.1:0.
    args: ['--listen', `${addr}:0`, '--tls-cert', tls.cert, '--tls-key', tls.key, '--auth', join(tls.dir, 'auth.yaml')],
  })]);
  // Whatever did start is stopped in after(), even when another part failed.
  if (started[0].status === 'fulfilled') dockerd = started[0].value;
  if (started[1].status === 'fulfilled') containerd = started[1].value;
  if (started[2].status === 'fulfilled') reg = started[2].value;
  for (const s of started) if (s.status === 'rejected') throw s.reason;
  host = reg.host;
  assert.match(reg.url, /^https:\/\//);
  // dockerd reads certs.d at each lookup, so it may be written once the port is known.
  madeCertsD = !existsSync(CERTS_D);
  dockerCerts = join(CERTS_D, host);
  mkdirSync(dockerCerts, { recursive: true });
  copyFileSync(tls.caCert, join(dockerCerts, 'ca.crt'));
});

after(async () => {
  await Promise.allSettled([dockerd?.stop(), containerd?.stop(), reg?.stop()]);
  if (dockerCerts) rmSync(dockerCerts, { recursive: true, force: true });
  if (madeCertsD) try { rmdirSync(CERTS_D); } catch { /* something else was put there meanwhile */ }
  for (const d of [...dirs, reg?.data]) if (d) rmSync(d, { recursive: true, force: true });
  tls?.cleanup();
});

interface Client { config: string; docker(args: string[], opts?: { check?: boolean; input?: string }): Promise<RunResult> }

/** A docker CLI with a client config dir of its own: logins never reach ~/.docker. */
function client(): Client {
  const config = dir('nixreg-dockercfg-');
  return { config, docker: (args, opts = {}) => run('docker', args, { env: { ...dockerd.env, DOCKER_CONFIG: config }, ...opts }) };
}

async function loggedIn(user: User): Promise<Client> {
  const c = client();
  const r = await c.docker(['login', host, '-u', user, '--password-stdin'], { input: PW[user] });
  assert.match(r.stdout, /Login Succeeded/);
  return c;
}

/** `docker build` with the classic builder: works offline with FROM scratch. */
async function build(tag: string, greeting: string): Promise<void> {
  const ctx = multiLayerContext(greeting);
  dirs.push(ctx.dir);
  await run('docker', ['build', '-q', '-t', tag, ctx.dir], { env: { ...dockerd.env, DOCKER_BUILDKIT: '0' } });
}

function pushedDigest(out: string): string {
  const m = /digest: (sha256:[a-f0-9]{64}) size: \d+/.exec(out);
  assert.ok(m, `no digest in docker push output:\n${out}`);
  return m[1]!;
}

/** Removes an image from dockerd so that the next pull must fetch it. */
async function forget(ref: string): Promise<void> {
  await run('docker', ['rmi', '--force', ref], { env: dockerd.env, check: false });
  const left = await run('docker', ['image', 'inspect', ref], { env: dockerd.env, check: false });
  assert.notEqual(left.code, 0, `${ref} is still in dockerd`);
}

const creds = (user: User, password: string = PW[user]) => `${user}:${password}`;
const basic = (user: User) => `Basic ${Buffer.from(creds(user)).toString('base64')}`;
const skopeo = (args: string[], check = true) => run('skopeo', ['--insecure-policy', ...args], { check });

function refDigest(dir: string, ref: string): string {
  const idx = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const m = idx.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === ref);
  assert.ok(m, `no ${ref} in ${dir}`);
  return m.digest;
}

/** GET over TLS trusting only the test CA, with a user's Basic credentials or none. */
function https(path: string, user?: User, accept?: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...(user ? { Authorization: basic(user) } : {}), ...(accept ? { Accept: accept } : {}) };
    const req = request(`${reg.url}${path}`, { ca: readFileSync(tls.caCert), headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

let teamRef = '';
let teamDigest = '';

test('docker over TLS: a wrong password fails login; alice logs in, pushes to team/, pulls and runs', { timeout: 180_000 }, async () => {
  const wrong = client();
  const bad = await wrong.docker(['login', host, '-u', 'alice', '--password-stdin'], { input: 'not-her-password', check: false });
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /unauthorized: wrong user name or password/, bad.stderr);
  assert.ok(!existsSync(join(wrong.config, 'config.json')), 'a failed login stores nothing');

  const alice = await loggedIn('alice');
  // The login went to this client's config alone, under the registry's host:port.
  const stored = JSON.parse(readFileSync(join(alice.config, 'config.json'), 'utf8')) as { auths: Record<string, { auth: string }> };
  assert.deepEqual(Object.keys(stored.auths), [host]);
  assert.equal(Buffer.from(stored.auths[host]!.auth, 'base64').toString(), creds('alice'));

  teamRef = `${host}/team/app:v1`;
  await build(teamRef, TEAM_GREETING);
  const push = await alice.docker(['push', teamRef]);
  assert.equal((push.stdout.match(/Pushed/g) ?? []).length, 3, push.stdout);
  teamDigest = pushedDigest(push.stdout);
  const m = await https('/v2/team/app/manifests/v1', 'alice', MANIFEST_ACCEPT);
  assert.equal(m.status, 200);
  assert.equal(m.headers['docker-content-digest'], teamDigest);

  await forget(teamRef);
  assert.match((await alice.docker(['pull', teamRef])).stdout, re(`Digest: ${teamDigest}`));
  const out = await alice.docker(['run', '--rm', '--network', 'none', teamRef]);
  assert.equal(out.stdout.trim(), TEAM_GREETING);
});

test('bob (read only on team/) pulls and runs, but his push is denied and leaves nothing', { timeout: 180_000 }, async () => {
  assert.ok(teamDigest, 'needs the first test');
  const bob = await loggedIn('bob');
  await forget(teamRef);
  assert.match((await bob.docker(['pull', teamRef])).stdout, re(`Digest: ${teamDigest}`));
  assert.equal((await bob.docker(['run', '--rm', '--network', 'none', teamRef])).stdout.trim(), TEAM_GREETING);

  const mine = `${host}/team/app:bob`;
  await bob.docker(['tag', teamRef, mine]);
  const push = await bob.docker(['push', mine], { check: false });
  assert.notEqual(push.code, 0);
  assert.match(push.stderr, /denied: user "bob" may not create team\/app/, push.stderr);
  assert.equal((await https('/v2/team/app/manifests/bob', 'alice', MANIFEST_ACCEPT)).status, 404, 'no tag was written');
});

test('anonymous: pulls public/ (pushed by admin), but a pull of team/ fails with an auth error', { timeout: 180_000 }, async () => {
  assert.ok(teamDigest, 'needs the first test');
  const admin = await loggedIn('admin');
  const publicRef = `${host}/public/tool:v1`;
  await build(publicRef, 'hello from public/tool');
  const digest = pushedDigest((await admin.docker(['push', publicRef])).stdout);

  const anon = client();
  await forget(publicRef);
  assert.match((await anon.docker(['pull', publicRef])).stdout, re(`Digest: ${digest}`));
  assert.equal((await anon.docker(['run', '--rm', '--network', 'none', publicRef])).stdout.trim(), 'hello from public/tool');

  await forget(teamRef);
  const denied = await anon.docker(['pull', teamRef], { check: false });
  assert.notEqual(denied.code, 0);
  // A 401 with the challenge, which docker prints as it is: signing in is what would help.
  assert.match(denied.stderr, /unauthorized: authentication required to pull team\/app/, denied.stderr);
});

test('a Kubernetes pull secret (docker config JSON) works for docker --config and skopeo --authfile', { timeout: 180_000 }, async () => {
  assert.ok(teamDigest, 'needs the first test');
  const secret = dir('nixreg-pullsecret-');
  const authfile = join(secret, 'config.json');
  // What `kubectl create secret docker-registry` puts in .dockerconfigjson.
  writeFileSync(authfile, JSON.stringify({ auths: { [host]: { auth: Buffer.from(creds('alice')).toString('base64') } } }));

  await forget(teamRef);
  const pull = await run('docker', ['--config', secret, 'pull', teamRef], { env: dockerd.env });
  assert.match(pull.stdout, re(`Digest: ${teamDigest}`));
  const out = await run('docker', ['--config', secret, 'run', '--rm', '--network', 'none', teamRef], { env: dockerd.env });
  assert.equal(out.stdout.trim(), TEAM_GREETING);

  const ref = `docker://${teamRef}`;
  const info = JSON.parse((await skopeo(['inspect', '--authfile', authfile, '--cert-dir', tls.caDir, ref])).stdout) as { Digest: string; Layers: string[] };
  assert.equal(info.Digest, teamDigest);
  assert.equal(info.Layers.length, 3);
  // Without the secret the same inspect is refused: it was the authfile that let it in.
  const none = await skopeo(['inspect', '--no-creds', '--cert-dir', tls.caDir, ref], false);
  assert.notEqual(none.code, 0);
  assert.match(none.stderr, /unauthorized: authentication required to pull team\/app/, none.stderr);
});

test('skopeo both ways with --creds and cert dirs: oci layout → team/ → oci layout, digests kept', { timeout: 180_000 }, async () => {
  const dest = `docker://${host}/team/sk:v1`;
  // An empty cert dir leaves only the system roots, which do not know our CA.
  const untrusted = await skopeo(['copy', '--dest-creds', creds('alice'), '--dest-cert-dir', dir('nixreg-nocerts-'), `oci:${layout}:img`, dest], false);
  assert.notEqual(untrusted.code, 0);
  assert.match(untrusted.stderr, /x509: certificate signed by unknown authority/, untrusted.stderr);

  await skopeo(['copy', '--dest-creds', creds('alice'), '--dest-cert-dir', tls.caDir, `oci:${layout}:img`, dest]);
  const info = JSON.parse((await skopeo(['inspect', '--creds', creds('alice'), '--cert-dir', tls.caDir, dest])).stdout) as { Digest: string };
  assert.equal(info.Digest, layoutDigest);

  const out = join(dir('nixreg-auth-out-'), 'layout');
  await skopeo(['copy', '--src-creds', creds('alice'), '--src-cert-dir', tls.caDir, dest, `oci:${out}:copy`]);
  const digest = refDigest(out, 'copy');
  assert.equal(digest, layoutDigest, 'oci → registry → oci keeps the manifest digest');
  const blob = (d: string, x: string) => readFileSync(join(d, 'blobs/sha256', x.slice('sha256:'.length)));
  assert.deepEqual(blob(out, digest), blob(layout, digest), 'the manifest comes back byte for byte');
});

test('ctr pulls with --user and --tlscacert and runs the image; a wrong password fails', { timeout: 180_000 }, async () => {
  assert.ok(teamDigest, 'needs the first test');
  await containerd.ctr(['image', 'pull', '--user', creds('alice'), '--tlscacert', tls.caCert, teamRef]);
  const line = (await containerd.ctr(['image', 'ls'])).stdout.split('\n').find((l) => l.startsWith(`${teamRef} `));
  assert.ok(line, 'ctr lists the image');
  assert.match(line, re(teamDigest), 'containerd sees the digest docker pushed');
  const out = await containerd.ctr(['run', '--rm', '--snapshotter', 'native', teamRef, 'auth-e2e']);
  assert.equal(out.stdout.trim(), TEAM_GREETING);

  await containerd.ctr(['image', 'rm', teamRef]);
  const wrong = await containerd.ctr(['image', 'pull', '--user', creds('alice', 'wrong'), '--tlscacert', tls.caCert, teamRef], { check: false });
  assert.notEqual(wrong.code, 0);
  assert.match(wrong.stderr, /failed to authorize: .*401 Unauthorized/, wrong.stderr);
  const after = await containerd.ctr(['image', 'ls', '-q']);
  assert.ok(!after.stdout.split('\n').includes(teamRef), 'the failed pull stored no image');
});

test('an expression image builds on a signed-in pull over TLS and runs; a push to its repository is denied', { timeout: 600_000 }, async () => {
  const builds = async () => (JSON.parse((await https('/nixreg/builds', 'bob')).body) as { builds: { repository: string; status: string; digest?: string }[] })
    .builds.filter((b) => b.repository === 'nix/hello');
  assert.deepEqual(await builds(), [], 'nothing built before the pull');
  // Anonymous callers are challenged before anything is evaluated or built.
  const anon = await https('/v2/nix/hello/manifests/latest', undefined, MANIFEST_ACCEPT);
  assert.equal(anon.status, 401);
  assert.match(String(anon.headers['www-authenticate']), re(`Bearer realm="${reg.url}/token",service="nixreg",scope="repository:nix/hello:pull"`));
  assert.deepEqual(await builds(), []);

  // bob reads nix/** through defaultPolicy alone: any signed-in user.
  const bob = await loggedIn('bob');
  const ref = `${host}/nix/hello:latest`;
  const pull = await bob.docker(['pull', ref]);
  const digest = /Digest: (sha256:[a-f0-9]{64})/.exec(pull.stdout)?.[1];
  assert.ok(digest, pull.stdout);
  assert.equal((await bob.docker(['run', '--rm', '--network', 'none', ref])).stdout.trim(), NIX_GREETING);
  const done = await builds();
  assert.equal(done.length, 1, JSON.stringify(done));
  assert.equal(done[0]!.status, 'done');
  assert.equal(done[0]!.digest, digest, 'the image docker pulled is the one built on that pull');

  const alice = await loggedIn('alice');
  const mine = `${host}/nix/hello:mine`;
  await alice.docker(['tag', ref, mine]);
  const push = await alice.docker(['push', mine], { check: false });
  assert.notEqual(push.code, 0);
  assert.match(push.stderr, /denied: repository nix\/hello is built from a Nix expression and is read-only/, push.stderr);
});

test('_catalog over TLS (node:https, trusting only the test CA) shows each caller only what it may read', { timeout: 180_000 }, async () => {
  // Self-contained: a repository alice may read and one only the admin may.
  await skopeo(['copy', '--dest-creds', creds('alice'), '--dest-cert-dir', tls.caDir, `oci:${layout}:img`, `docker://${host}/team/cat:v1`]);
  await skopeo(['copy', '--dest-creds', creds('admin'), '--dest-cert-dir', tls.caDir, `oci:${layout}:img`, `docker://${host}/ops/secret:v1`]);
  const catalog = async (user?: User) => {
    const r = await https('/v2/_catalog', user);
    assert.equal(r.status, 200, r.body);
    return (JSON.parse(r.body) as { repositories: string[] }).repositories;
  };
  const all = await catalog('admin');
  assert.ok(all.includes('ops/secret') && all.includes('team/cat'), all.join(' '));
  const alice = await catalog('alice');
  assert.ok(alice.includes('team/cat'));
  assert.ok(!alice.includes('ops/secret'));
  assert.deepEqual(alice, all.filter((r) => /^(team|public|nix)\//.test(r)));
  assert.deepEqual(await catalog(), all.filter((r) => r.startsWith('public/')));
  // The repository alice cannot list, she cannot read either.
  assert.equal((await https('/v2/ops/secret/manifests/v1', 'alice', MANIFEST_ACCEPT)).status, 403);
});
