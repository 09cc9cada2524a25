// The pull-through cache (issue 26 part 1) against real upstreams: Debian's
// docker-registry (Distribution 2.8) with htpasswd auth and TLS from a CA of our own,
// and a nixreg started with --auth, which speaks Docker's token flow. A `nixreg serve`
// mirrors both; the tests pull through it with HTTP, skopeo and containerd's ctr
// (hosts.toml, ?ns=docker.io), count what the upstream served in its access log, and
// finally stop the upstream to see what is still served and how the rest fails.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, request, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { startContainerd, type Containerd } from '../helpers/containerd.js';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { sha256, startDistribution, tarOf, upstreamBlob, upstreamImage, type Distribution } from '../helpers/distribution.js';
import { run } from '../helpers/exec.js';
import { throttle } from '../helpers/throttle.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';
import { makeTls, writeAuthFile, writeHtpasswd, type TlsFiles } from '../helpers/tls.js';

const USER = 'mirror-user';
const PASSWORD = 'Upstream-Secret-9f3k';
const WRONG = 'Wrong-Secret-77zq';
const BASIC = Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
const ACCEPT = 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, '
  + 'application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json';
/** Seconds a cached tag is trusted in these tests. */
const FRESHNESS = 2;

let dir: string;
let tls: TlsFiles;
let up: Distribution;
let tok: RegistryProcess;
let reg: RegistryProcess;
/** The upstream behind a proxy that passes 16 MB/s. */
let slow: Awaited<ReturnType<typeof throttle>>;
/** An upstream that accepts connections and never answers. */
let hang: NetServer;
const hung = new Set<Socket>();
/** An upstream that answers every request 429 (a rate limit), Retry-After: 7. */
let limited: HttpServer;
/** An upstream that answers every blob GET with the same wrong bytes; counts them. */
let liar: HttpServer;
let lies = 0;
/** Every answer body nixreg gave, to look for the credentials in at the end. */
const answers: string[] = [];

async function get(path: string, headers: Record<string, string> = {}, method = 'GET') {
  const r = await fetch(`${reg.url}${path}`, { method, headers: { Accept: ACCEPT, ...headers } });
  const body = Buffer.from(await r.arrayBuffer());
  answers.push(body.toString('latin1'), JSON.stringify([...r.headers]));
  return { status: r.status, headers: r.headers, body, text: () => body.toString() };
}

before(async () => {
  dir = tempDir('nixreg-mirror-');
  tls = await makeTls(['127.0.0.1']);
  const htpasswd = join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { [USER]: PASSWORD });
  up = await startDistribution({
    dir: join(dir, 'up'), tls: { cert: tls.cert, key: tls.key, ca: readFileSync(tls.caCert) }, htpasswd: { file: htpasswd, user: USER, password: PASSWORD },
  });
  // nixreg with --auth: an upstream with Docker token auth.
  const authFile = join(dir, 'auth.yaml');
  writeAuthFile(authFile, { htpasswd: 'htpasswd', accessControl: { repositories: { '**': { policies: [{ users: [USER], actions: ['read', 'create', 'update', 'delete'] }] } } } });
  tok = await spawnRegistry({ data: join(dir, 'tok'), args: ['--auth', authFile] });
  writeFileSync(join(dir, 'password'), `${PASSWORD}\n`);
  hang = createNetServer((c) => { hung.add(c); c.on('error', () => {}); });
  await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
  limited = createHttpServer((_req, res) => { res.writeHead(429, { 'Retry-After': '7', 'Content-Type': 'application/json' }).end('{"errors":[{"code":"TOOMANYREQUESTS"}]}'); });
  await new Promise<void>((r) => limited.listen(0, '127.0.0.1', r));
  liar = createHttpServer((_req, res) => { lies++; res.writeHead(200, { 'Content-Length': '11' }).end('wrong bytes'); });
  await new Promise<void>((r) => liar.listen(0, '127.0.0.1', r));
  slow = await throttle(Number(new URL(up.url).port), 16 * 1024 * 1024);
  const mirrorFile = join(dir, 'mirrors.yaml');
  writeFileSync(mirrorFile, stringify({
    upstreams: [
      { prefix: 'up', url: up.url, username: USER, passwordFile: 'password', caFile: tls.caCert, freshness: FRESHNESS, timeout: 5, namespaces: ['docker.io'] },
      { prefix: 'tok', url: tok.url, username: USER, passwordFile: 'password', freshness: FRESHNESS },
      { prefix: 'slow', url: `https://127.0.0.1:${slow.port}`, username: USER, passwordFile: 'password', caFile: tls.caCert, freshness: FRESHNESS, timeout: 2 },
      { prefix: 'hang', url: `http://127.0.0.1:${(hang.address() as AddressInfo).port}`, timeout: 1 },
      { prefix: 'limited', url: `http://127.0.0.1:${(limited.address() as AddressInfo).port}` },
      { prefix: 'liar', url: `http://127.0.0.1:${(liar.address() as AddressInfo).port}` },
      { prefix: 'bad', url: up.url, username: USER, password: WRONG, caFile: tls.caCert },
    ],
  }));
  // Debug: the access log too is searched for the credentials.
  reg = await spawnRegistry({ data: join(dir, 'reg'), args: ['--mirror-config', mirrorFile], env: { NIXREG_LOG_LEVEL: 'debug' } });
});

after(async () => {
  await reg?.stop();
  await tok?.stop();
  await up?.stop();
  await slow?.close();
  for (const c of hung) c.destroy();
  hang?.close();
  limited?.close();
  liar?.close();
  tls?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const manifestGets = (repo: string) => up.count('GET', new RegExp(`^/v2/${repo}/manifests/`));

test('a cold pull through the mirror gets the upstream\'s bytes and digests; cached, nothing is asked upstream', async () => {
  const img = await upstreamImage(up, 'app', '1', [await tarOf({ 'a.txt': randomBytes(1000) }), await tarOf({ 'b.txt': randomBytes(5000) })]);
  const m = await get('/v2/up/app/manifests/1');
  assert.equal(m.status, 200, m.text());
  assert.deepEqual(m.body, img.manifest);
  assert.equal(m.headers.get('docker-content-digest'), img.digest);
  assert.equal(m.headers.get('content-type'), 'application/vnd.docker.distribution.manifest.v2+json');
  for (const blob of [img.config, ...img.layers]) {
    const b = await get(`/v2/up/app/blobs/${sha256(blob)}`);
    assert.equal(b.status, 200, b.text());
    assert.deepEqual(b.body, blob);
    assert.equal(b.headers.get('docker-content-digest'), sha256(blob));
  }
  const blobGets = up.count('GET', /^\/v2\/app\/blobs\//);
  assert.equal(blobGets, 3);
  assert.equal(manifestGets('app'), 1);
  // Again, by tag (fresh) and by digest, and the blobs: all from the cache.
  assert.deepEqual((await get('/v2/up/app/manifests/1')).body, img.manifest);
  assert.deepEqual((await get(`/v2/up/app/manifests/${img.digest}`)).body, img.manifest);
  assert.deepEqual((await get(`/v2/up/app/blobs/${sha256(img.layers[0]!)}`)).body, img.layers[0]);
  assert.equal(manifestGets('app'), 1);
  assert.equal(up.count('HEAD', /^\/v2\/app\/manifests\//), 0);
  assert.equal(up.count('GET', /^\/v2\/app\/blobs\//), 3);
  // Not upstream: 404 that names the upstream's answer.
  const missing = await get('/v2/up/app/manifests/nope');
  assert.equal(missing.status, 404);
  assert.equal(missing.headers.get('warning'), null);
  assert.match(missing.text(), /MANIFEST_UNKNOWN.*upstream up \(https:\/\/127\.0\.0\.1:\d+\) answered 404/);
});

test('an index comes first, its children as the client asks for them, each by digest, the index\'s bytes unchanged', async () => {
  const child = await upstreamImage(up, 'multi', 'child', [await tarOf({ 'm.txt': randomBytes(2000) })]);
  const list = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.list.v2+json',
    manifests: [{ mediaType: 'application/vnd.docker.distribution.manifest.v2+json', digest: child.digest, size: child.manifest.length, platform: { architecture: 'amd64', os: 'linux' } }],
  }, null, 2));
  const type = 'application/vnd.docker.distribution.manifest.list.v2+json';
  const put = await up.request('PUT', '/v2/multi/manifests/all', { 'Content-Type': type, 'Content-Length': String(list.length) }, list);
  assert.equal(put.status, 201, put.body.toString());
  const idx = await get('/v2/up/multi/manifests/all');
  assert.equal(idx.status, 200, idx.text());
  assert.deepEqual(idx.body, list);
  assert.equal(idx.headers.get('content-type'), type);
  assert.equal(manifestGets('multi'), 1, 'the index alone');
  const c = await get(`/v2/up/multi/manifests/${child.digest}`);
  assert.deepEqual(c.body, child.manifest);
  assert.equal(manifestGets('multi'), 2);
  // HEAD by digest, as containerd resolves: cached now, nothing asked upstream.
  const head = await get(`/v2/up/multi/manifests/${child.digest}`, {}, 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('docker-content-digest'), child.digest);
  assert.equal(manifestGets('multi'), 2);
  assert.equal(up.count('HEAD', /^\/v2\/multi\//), 0);
});

test('a tag older than the freshness is checked with a HEAD, and follows the upstream when it moved', async () => {
  const one = await upstreamImage(up, 'moving', 'v', [await tarOf({ 'x': Buffer.from('one') })], 'one');
  assert.equal((await get('/v2/up/moving/manifests/v')).headers.get('docker-content-digest'), one.digest);
  await new Promise((r) => setTimeout(r, FRESHNESS * 1000 + 300));
  assert.equal((await get('/v2/up/moving/manifests/v')).headers.get('docker-content-digest'), one.digest);
  assert.equal(up.count('HEAD', /^\/v2\/moving\/manifests\/v$/), 1, 'one HEAD checked the stale tag');
  assert.equal(manifestGets('moving'), 1, 'and nothing was fetched again');
  const two = await upstreamImage(up, 'moving', 'v', [await tarOf({ 'x': Buffer.from('two') })], 'two');
  await new Promise((r) => setTimeout(r, FRESHNESS * 1000 + 300));
  const m = await get('/v2/up/moving/manifests/v');
  assert.equal(m.headers.get('docker-content-digest'), two.digest);
  assert.deepEqual(m.body, two.manifest);
  // tag@digest: clients send the digest; the old manifest is still cached.
  assert.deepEqual((await get(`/v2/up/moving/manifests/${one.digest}`)).body, one.manifest);
});

/** A GET of `path` on nixreg, timed: when the first byte and the end arrived, and the body's digest. */
function timedGet(path: string): Promise<{ first: number; end: number; digest: string; bytes: number; status: number }> {
  const u = new URL(reg.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, agent: false }, (res) => {
      const h = createHash('sha256');
      let first = 0;
      let bytes = 0;
      res.on('data', (c: Buffer) => { if (!first) first = performance.now(); bytes += c.length; h.update(c); });
      res.on('end', () => resolve({ first, end: performance.now(), digest: `sha256:${h.digest('hex')}`, bytes, status: res.statusCode! }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

test('20 concurrent pulls of an uncached 32 MB blob: one upstream GET, the first bytes reach every client before the blob is complete; another repository\'s copy is linked, not fetched again', async (t) => {
  const big = randomBytes(32 * 1024 * 1024);
  const digest = await upstreamBlob(up, 'big', big);
  const start = performance.now();
  const pulls = await Promise.all(Array.from({ length: 20 }, () => timedGet(`/v2/slow/big/blobs/${digest}`)));
  for (const p of pulls) {
    assert.equal(p.status, 200);
    assert.equal(p.bytes, big.length);
    assert.equal(p.digest, digest);
  }
  assert.equal(up.count('GET', new RegExp(`^/v2/big/blobs/${digest}$`)), 1, 'one upstream GET for 20 clients');
  // The blob took seconds to come through the proxy; every client had bytes long before.
  const lastFirst = Math.max(...pulls.map((p) => p.first));
  const upstreamDone = slow.state.lastByte;
  t.diagnostic(`first bytes at every client within ${(lastFirst - start).toFixed(0)} ms; the upstream sent its last byte at ${(upstreamDone - start).toFixed(0)} ms; `
    + `the last client finished at ${(Math.max(...pulls.map((p) => p.end)) - start).toFixed(0)} ms`);
  assert.ok(lastFirst < upstreamDone - 500,
    `every client had its first bytes (the last ${(upstreamDone - lastFirst).toFixed(0)} ms) before the upstream had sent the whole blob`);
  // Committed: the next pull is served from the store.
  const again = await timedGet(`/v2/slow/big/blobs/${digest}`);
  assert.equal(again.digest, digest);
  assert.equal(up.count('GET', new RegExp(`^/v2/big/blobs/${digest}$`)), 1);
  // Another repository with the same blob upstream (a shared base layer): the upstream
  // answers for that repository, and the bytes already here are linked, not sent again.
  const mount = await up.request('POST', `/v2/big2/blobs/uploads/?mount=${digest}&from=big`, { 'Content-Length': '0' });
  assert.equal(mount.status, 201);
  const before = slow.state.bytes;
  const shared = await timedGet(`/v2/slow/big2/blobs/${digest}`);
  assert.equal(shared.digest, digest);
  // What the proxy passed before the GET was dropped: some, under load, never the blob (32 MB when fetched again).
  assert.ok(slow.state.bytes - before < big.length / 2, `${slow.state.bytes - before} bytes came through for a blob already here`);
  // And one the upstream does not have in that repository is not handed out.
  assert.equal((await get(`/v2/slow/big3/blobs/${digest}`)).status, 404);
});

test('pushes into a mirror prefix are refused', async () => {
  const post = await fetch(`${reg.url}/v2/up/app/blobs/uploads/`, { method: 'POST' });
  assert.equal(post.status, 403);
  assert.match(await post.text(), /DENIED.*pull-through cache of upstream up/);
  const put = await fetch(`${reg.url}/v2/up/app/manifests/x`, { method: 'PUT', headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' }, body: '{}' });
  assert.equal(put.status, 403);
  const del = await fetch(`${reg.url}/v2/up/app/manifests/1`, { method: 'DELETE' });
  assert.equal(del.status, 403);
});

test('skopeo copies through the mirror exactly what the upstream holds', async () => {
  const img = await upstreamImage(up, 'sk', 'tag', [await tarOf({ 's.txt': randomBytes(20_000) })]);
  const out = join(dir, 'skopeo-dir');
  await run('skopeo', ['copy', '--src-tls-verify=false', `docker://${reg.host}/up/sk:tag`, `dir:${out}`], { check: true });
  assert.deepEqual(readFileSync(join(out, 'manifest.json')), img.manifest);
  for (const l of img.layers) assert.deepEqual(readFileSync(join(out, sha256(l).slice(7))), l);
  const raw = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/up/sk@${img.digest}`], { check: true });
  assert.deepEqual(Buffer.from(raw.stdout), img.manifest);
});

test('containerd pulls through the mirror: by its name, and docker.io names with hosts.toml (?ns=docker.io)', async (t) => {
  let ctrd: Containerd;
  try { ctrd = await startContainerd(); } catch (e) { t.skip(`containerd: ${(e as Error).message.split('\n')[0]}`); return; }
  try {
    const img = await upstreamImage(up, 'library/nsimg', '1', [await tarOf({ 'etc/hello': Buffer.from('hello\n') })]);
    const hosts = join(dir, 'hosts.d');
    mkdirSync(join(hosts, 'docker.io'), { recursive: true });
    writeFileSync(join(hosts, 'docker.io', 'hosts.toml'), [
      'server = "https://registry-1.docker.io"',
      `[host."http://${reg.host}"]`,
      '  capabilities = ["pull", "resolve"]',
      '',
    ].join('\n'));
    const pulled = await ctrd.ctr(['images', 'pull', '--hosts-dir', hosts, 'docker.io/library/nsimg:1']);
    assert.equal(pulled.code, 0, pulled.stderr);
    const listed = await ctrd.ctr(['images', 'ls', '-q']);
    assert.match(listed.stdout, /docker\.io\/library\/nsimg:1/);
    // Stored under the mirror's prefix, fetched upstream once.
    const m = await get('/v2/up/library/nsimg/manifests/1');
    assert.deepEqual(m.body, img.manifest);
    assert.equal(manifestGets('library/nsimg'), 1);
    assert.ok(reg.logs().includes('"path":"/v2/up/library/nsimg/manifests/1"'), 'the ns request became the prefixed name');
    // And by the mirror's own name.
    const app = await ctrd.ctr(['images', 'pull', '--plain-http', `${reg.host}/up/app:1`]);
    assert.equal(app.code, 0, app.stderr);
  } finally {
    await ctrd.stop();
  }
});

test('an upstream with Docker token auth (nixreg --auth) is followed through its challenge', async () => {
  const layer = Buffer.from('token layer');
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const auth = { Authorization: `Basic ${BASIC}` };
  for (const b of [layer, config]) {
    const r = await fetch(`${tok.url}/v2/tokapp/blobs/uploads/?digest=${sha256(b)}`, { method: 'POST', headers: auth, body: b });
    assert.equal(r.status, 201, await r.text());
  }
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256(layer), size: layer.length }],
  }));
  const put = await fetch(`${tok.url}/v2/tokapp/manifests/1`, { method: 'PUT', headers: { ...auth, 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' }, body: manifest });
  assert.equal(put.status, 201, await put.text());
  // Anonymous pulls of it are refused there: only the mirror's credentials get it.
  assert.equal((await fetch(`${tok.url}/v2/tokapp/manifests/1`)).status, 401);
  const m = await get('/v2/tok/tokapp/manifests/1');
  assert.equal(m.status, 200, m.text());
  assert.deepEqual(m.body, manifest);
  assert.deepEqual((await get(`/v2/tok/tokapp/blobs/${sha256(layer)}`)).body, layer);
});

test('wrong upstream credentials: a clear error that names the upstream, without the credentials', async () => {
  const r = await get('/v2/bad/app/manifests/1');
  assert.equal(r.status, 502, r.text());
  assert.match(r.text(), /UNAVAILABLE.*upstream bad \(https:\/\/127\.0\.0\.1:\d+\) refused the configured credentials \(401\)/);
});

test('an upstream that does not answer within its timeout: 504 naming it, in bounded time', async () => {
  const t0 = performance.now();
  const r = await get('/v2/hang/x/manifests/1');
  assert.equal(r.status, 504, r.text());
  assert.match(r.text(), /UNAVAILABLE.*upstream hang \(http:\/\/127\.0\.0\.1:\d+\) did not answer within 1 s/);
  assert.ok(performance.now() - t0 < 5000);
});

test('an upstream that sends other bytes than the digest: the client never gets a whole body, and nothing is stored', async () => {
  const digest = sha256(Buffer.from('right bytes'));
  for (const n of [1, 2]) {
    const r = await fetch(`${reg.url}/v2/liar/x/blobs/${digest}`);
    assert.equal(r.status, 200);
    await assert.rejects(r.arrayBuffer(), 'the body is cut short');
    assert.equal(lies, n, 'nothing was stored: each pull asks the upstream again');
  }
});

test('concurrent pulls of an uncached tag: one upstream GET of the manifest', async () => {
  const img = await upstreamImage(up, 'crowd', '1', [await tarOf({ 'c': Buffer.from('crowd') })]);
  const all = await Promise.all(Array.from({ length: 10 }, () => get('/v2/up/crowd/manifests/1')));
  for (const m of all) assert.deepEqual(m.body, img.manifest);
  assert.equal(manifestGets('crowd'), 1);
});

test('an upstream that limits us (429): 429 naming it, with its Retry-After', async () => {
  const r = await get('/v2/limited/x/manifests/1');
  assert.equal(r.status, 429, r.text());
  assert.equal(r.headers.get('retry-after'), '7');
  assert.match(r.text(), /TOOMANYREQUESTS.*upstream limited \(http:\/\/127\.0\.0\.1:\d+\) answered 429/);
  const b = await get(`/v2/limited/x/blobs/sha256:${'0'.repeat(64)}`);
  assert.equal(b.status, 429, b.text());
});

test('docker pulls through the mirror', async (t) => {
  let dockerd: Dockerd;
  try { dockerd = await startDockerd(); } catch (e) { t.skip(`dockerd: ${(e as Error).message.split('\n')[0]}`); return; }
  try {
    const img = await upstreamImage(up, 'dock', '1', [await tarOf({ 'd.txt': Buffer.from('docker\n') })]);
    const pulled = await dockerd.docker(['pull', `${reg.host}/up/dock:1`]);
    assert.equal(pulled.code, 0, pulled.stderr);
    const digests = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', `${reg.host}/up/dock:1`], { check: true });
    assert.ok(digests.stdout.includes(`${reg.host}/up/dock@${img.digest}`), digests.stdout);
  } finally {
    await dockerd.stop();
  }
});

test('an upstream that stops answering: the stale tag is served after its timeout, then at once for a while', async () => {
  await upstreamImage(up, 'quiet', '1', [await tarOf({ 'q': Buffer.from('quiet') })]);
  assert.equal((await get('/v2/slow/quiet/manifests/1')).status, 200);
  slow.state.hang = true;
  try {
    await new Promise((r) => setTimeout(r, FRESHNESS * 1000 + 300));
    let t0 = performance.now();
    const first = await get('/v2/slow/quiet/manifests/1');
    const waited = performance.now() - t0;
    assert.equal(first.status, 200);
    assert.match(first.headers.get('warning') ?? '', /upstream slow .* could not be checked \(it did not answer in time\)/);
    assert.ok(waited > 1500, `the first waited for the upstream's 2 s timeout (${waited.toFixed(0)} ms)`);
    t0 = performance.now();
    const second = await get('/v2/slow/quiet/manifests/1');
    const quick = performance.now() - t0;
    assert.equal(second.status, 200);
    assert.match(second.headers.get('warning') ?? '', /could not be checked/);
    assert.ok(quick < 1000, `the next did not wait for the upstream again (${quick.toFixed(0)} ms)`);
  } finally {
    slow.state.hang = false;
  }
});

test('who may pull through a mirror is the repository policy of its names, the ?ns= names too', async () => {
  await upstreamImage(up, 'library/open', '1', [await tarOf({ 'o': Buffer.from('open') })]);
  await upstreamImage(up, 'closed', '1', [await tarOf({ 'c': Buffer.from('closed') })]);
  const authFile = join(dir, 'mirror-auth.yaml');
  writeAuthFile(authFile, { htpasswd: 'htpasswd', accessControl: { repositories: { 'up/library/**': { anonymousPolicy: ['read'] } } } });
  const guarded = await spawnRegistry({ data: join(dir, 'guarded'), args: ['--auth', authFile, '--mirror-config', join(dir, 'mirrors.yaml')] });
  try {
    const status = async (path: string) => (await fetch(`${guarded.url}${path}`, { headers: { Accept: ACCEPT } })).status;
    assert.equal(await status('/v2/up/library/open/manifests/1'), 200);
    assert.equal(await status('/v2/library/open/manifests/1?ns=docker.io'), 200);
    assert.equal(await status('/v2/up/closed/manifests/1'), 401);
    assert.equal(await status('/v2/closed/manifests/1?ns=docker.io'), 401);
    // Refused before anything was asked upstream.
    assert.equal(manifestGets('closed'), 0);
  } finally {
    await guarded.stop();
  }
});

test('upstream stopped: cached content is served (a stale tag with a warning), uncached content fails clearly', async () => {
  const img = await upstreamImage(up, 'offline', '1', [await tarOf({ 'o.txt': randomBytes(3000) })]);
  const uncached = await upstreamImage(up, 'offline', '2', [await tarOf({ 'p.txt': randomBytes(3000) })]);
  assert.equal((await get('/v2/up/offline/manifests/1')).status, 200);
  for (const b of [img.config, ...img.layers]) assert.equal((await get(`/v2/up/offline/blobs/${sha256(b)}`)).status, 200);
  await up.stop();
  await new Promise((r) => setTimeout(r, FRESHNESS * 1000 + 300));
  const stale = await get('/v2/up/offline/manifests/1');
  assert.equal(stale.status, 200);
  assert.deepEqual(stale.body, img.manifest);
  assert.match(stale.headers.get('warning') ?? '', /^299 nixreg ".*cached tag served, upstream up \(https:\/\/127\.0\.0\.1:\d+\) could not be checked/);
  assert.match(reg.logs(), /serving the cached tag/);
  assert.equal((await get(`/v2/up/offline/manifests/${img.digest}`)).status, 200);
  for (const b of [img.config, ...img.layers]) assert.deepEqual((await get(`/v2/up/offline/blobs/${sha256(b)}`)).body, b);
  const m = await get('/v2/up/offline/manifests/2');
  assert.equal(m.status, 502, m.text());
  assert.match(m.text(), /UNAVAILABLE.*upstream up \(https:\/\/127\.0\.0\.1:\d+\) is unreachable/);
  const b = await get(`/v2/up/offline/blobs/${sha256(uncached.layers[0]!)}`);
  assert.equal(b.status, 502, b.text());
  assert.match(b.text(), /upstream up/);
});

test('the upstream credentials never reach a client or the log', () => {
  for (const secret of [PASSWORD, WRONG, BASIC, Buffer.from(`${USER}:${WRONG}`).toString('base64')]) {
    assert.ok(!reg.logs().includes(secret), 'a credential is in the log');
    assert.ok(!answers.some((a) => a.includes(secret)), 'a credential is in an answer');
  }
});
