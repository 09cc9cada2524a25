// Issue 25: the web page's JSON API (/nixreg/api) and its pages, in process, over pushed
// images (a closure record is written through Storage as a build writes it, so no Nix):
// what each caller sees with --auth (a repository one may not read answers exactly as
// one that does not exist, and never appears), pagination, sizes, config, the closure
// and why-chains, comparisons, escaping of user data, and --ui off. Built images in a
// real browser: test/e2e/web-browser.test.ts.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { closureDocument, storeClosure } from '../../src/build/assembly/closure.js';
import { OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, http, sha256, startReg, type Res, type TestRegistry } from '../api/util.js';
import { basicAuth, writeAuth } from '../helpers/auth.js';
import { tempDir } from '../helpers/registry.js';

const PASSWORDS: Record<string, string> = { bob: 'bob-pw-93ad', alice: 'alice-pw-7c1f', admin: 'admin-pw-5b2e' };
const AUTH = `
htpasswd: ./htpasswd
accessControl:
  repositories:
    "team/**":
      policies:
        - { users: [bob, alice], actions: [read] }
    "team/secret/**":
      policies: [{ users: [alice], actions: [read] }]
    "public/**": { defaultPolicy: [read], anonymousPolicy: [read] }
  adminPolicy: { users: [admin], actions: [read, create, update, delete] }
`;
const as = (user?: string) => (user ? basicAuth(user, PASSWORDS[user]!) : {});
const EVIL = '<script>alert(1)</script>"\'&';

/** Pushes an image of `layers` (bodies) with `labels`; returns its manifest digest and blob sizes. */
async function push(reg: TestRegistry, repo: string, tag: string, layers: string[], labels: Record<string, string> = {}) {
  const config = Buffer.from(JSON.stringify({
    created: '2024-05-06T07:08:09Z', architecture: 'arm64', os: 'linux', config: { Entrypoint: ['/bin/sh'], Cmd: ['-c', 'true'], Env: ['A=1'], Labels: labels },
    rootfs: { type: 'layers', diff_ids: [] }, salt: `${repo}:${tag}`,
  }));
  const blobs = [config, ...layers.map((l) => Buffer.from(l))];
  for (const b of blobs) {
    const r = await http(reg.url, 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, { headers: { ...as('admin'), 'content-type': 'application/octet-stream' }, body: b });
    assert.equal(r.status, 201);
  }
  const m = JSON.stringify({
    schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
    layers: blobs.slice(1).map((b) => ({ mediaType: OCI_LAYER, digest: sha256(b), size: b.length })),
  });
  const r = await http(reg.url, 'PUT', `/v2/${repo}/manifests/${tag}`, { headers: { ...as('admin'), 'content-type': OCI_MANIFEST }, body: m });
  assert.equal(r.status, 201, r.text());
  return { digest: sha256(m), size: Buffer.byteLength(m), config: config.length, layers: blobs.slice(1).map((b) => b.length) };
}

const store = (h: string, name: string) => `/nix/store/${h.repeat(32)}-${name}`;
/** A closure as nix-store reports it: app → lib → libc, app → data; data is big. */
function closureOf(version: string, h: string) {
  const [app, lib, libc, data] = [store(h, `app-${version}`), store('c', 'lib-1'), store('d', 'libc-2'), store(h === 'a' ? 'e' : 'f', 'data')];
  return {
    paths: { app, lib, libc, data },
    closure: [
      { path: app, narSize: 1000, references: [app, lib, data] }, { path: lib, narSize: 5000, references: [libc] },
      { path: libc, narSize: 20_000, references: [] }, { path: data, narSize: h === 'a' ? 90_000 : 95_000, references: [] },
    ],
  };
}

const get = (reg: TestRegistry, path: string, user?: string) => http(reg.url, 'GET', path, { headers: as(user) });
/** An error body with the repository's name taken out: what tells one 404 from another. */
const anonymised = (r: Res, name: string) => ({ status: r.status, body: r.text().split(name).join('NAME') });

describe('web API and pages', () => {
  let reg: TestRegistry;
  let v1: Awaited<ReturnType<typeof push>>;
  let v2: Awaited<ReturnType<typeof push>>;
  const c1 = closureOf('1.0', 'a');
  const c2 = closureOf('2.0', 'b');
  before(async () => {
    const dir = tempDir('nixreg-web-');
    reg = await startReg({ auth: writeAuth(dir, AUTH, PASSWORDS) });
    v1 = await push(reg, 'team/app', 'v1', ['shared layer', 'old layer'], { 'org.example.note': EVIL });
    v2 = await push(reg, 'team/app', 'v2', ['shared layer', 'new layer, longer'], {});
    await push(reg, 'team/secret/keys', 'v1', ['secret']);
    await push(reg, 'public/tools', 'v1', ['tools']);
    for (let i = 0; i < 5; i++) await push(reg, 'public/tools', `t${i}`, [`tools ${i}`]);
    // What a build records (build/assembly/closure.ts): layer 0 holds lib and libc, layer 1 app and data.
    for (const [img, c] of [[v1, c1], [v2, c2]] as const) {
      const layers = [[c.paths.lib, c.paths.libc], [c.paths.app, c.paths.data]];
      const d = { digest: img.digest, mediaType: OCI_MANIFEST, size: img.size };
      assert.ok(await storeClosure(reg.storage, 'team/app', d, closureDocument(c.closure, layers, [c.paths.app])));
    }
  });
  after(async () => { await reg.destroy(); });

  test('repositories: only what the caller may read, paginated, searchable', async () => {
    const names = async (user?: string, q = '') => (await get(reg, `/nixreg/api/repositories${q}`, user)).json().repositories.map((r: any) => r.name);
    assert.deepEqual(await names(), ['public/tools']);
    assert.deepEqual(await names('bob'), ['public/tools', 'team/app']);
    assert.deepEqual(await names('alice'), ['public/tools', 'team/app', 'team/secret/keys']);
    assert.deepEqual(await names('alice', '?q=secret'), ['team/secret/keys']);
    assert.deepEqual(await names('bob', '?q=secret'), []);
    const first = await get(reg, '/nixreg/api/repositories?n=1', 'alice');
    assert.deepEqual(first.json().repositories, [{ name: 'public/tools', madeFrom: 'pushed' }]);
    assert.equal(first.json().next, 'public/tools');
    assert.match(first.headers.get('link') ?? '', /last=public%2Ftools.*rel="next"/);
    assert.deepEqual((await get(reg, '/nixreg/api/repositories?n=0', 'alice')).json(), { repositories: [] });
    const second = await get(reg, '/nixreg/api/repositories?n=1&last=public/tools', 'alice');
    assert.deepEqual(second.json().repositories.map((r: any) => r.name), ['team/app']);
  });

  test('a repository the caller may not read answers exactly as one that does not exist, on every endpoint and page', async () => {
    const paths = (name: string) => [
      `/nixreg/api/repositories/${name}/tags`, `/nixreg/api/repositories/${name}/images/v1`,
      `/nixreg/api/repositories/${name}/images/v1/closure`, `/nixreg/api/repositories/${name}/compare?from=v1&to=v1`,
      `/repository?name=${name}`, `/image?name=${name}&ref=v1`, `/compare?name=${name}&from=v1&to=v1`,
    ];
    for (const [user, hidden] of [[undefined, 'team/app'], ['bob', 'team/secret/keys']] as const) {
      const absent = 'team/absent';
      for (const [i, p] of paths(hidden).entries()) {
        const r = await get(reg, p, user);
        assert.equal(r.status, 404, `${user} ${p}`);
        if (i < 4) assert.equal(r.json().errors[0].code, 'NAME_UNKNOWN');
        assert.deepEqual(anonymised(r, hidden), anonymised(await get(reg, paths(absent)[i]!, user), absent), `${user} ${p}`);
      }
      // Nor do the pages that list name it.
      for (const p of ['/', '/?q=team', `/repository?name=public/tools`]) assert.ok(!(await get(reg, p, user)).text().includes(hidden), `${user} ${p}`);
    }
    // With read, the same paths answer.
    assert.equal((await get(reg, '/nixreg/api/repositories/team/secret/keys/tags', 'alice')).status, 200);
    assert.equal((await get(reg, '/repository?name=team/secret/keys', 'alice')).status, 200);
  });

  test('tags with sizes and creation times; an image with its config and layers', async () => {
    const t = (await get(reg, '/nixreg/api/repositories/team/app/tags', 'bob')).json();
    assert.equal(t.madeFrom, 'pushed');
    assert.deepEqual(t.tags.map((x: any) => [x.tag, x.digest, x.size, x.created, x.platform]), [
      ['v1', v1.digest, v1.config + v1.layers[0]! + v1.layers[1]!, '2024-05-06T07:08:09Z', 'linux/arm64'],
      ['v2', v2.digest, v2.config + v2.layers[0]! + v2.layers[1]!, '2024-05-06T07:08:09Z', 'linux/arm64'],
    ]);
    const page = (await get(reg, '/nixreg/api/repositories/public/tools/tags?n=2&last=t1')).json();
    assert.deepEqual(page.tags.map((x: any) => x.tag), ['t2', 't3']);
    assert.equal(page.next, 't3');
    const img = (await get(reg, '/nixreg/api/repositories/team/app/images/v1', 'bob')).json();
    assert.equal(img.digest, v1.digest);
    assert.equal(img.platform, 'linux/arm64');
    assert.deepEqual(img.config.entrypoint, ['/bin/sh']);
    assert.deepEqual(img.config.cmd, ['-c', 'true']);
    assert.deepEqual(img.config.labels, { 'org.example.note': EVIL });
    assert.deepEqual(img.layers.map((l: any) => [l.size, l.uncompressed]), [[v1.layers[0], 5000 + 20_000], [v1.layers[1], 1000 + 90_000]]);
    assert.equal(img.closure, true);
    const plain = (await get(reg, '/nixreg/api/repositories/public/tools/images/v1')).json();
    assert.deepEqual([plain.closure, plain.layers[0].uncompressed], [false, null]);
    assert.equal((await get(reg, '/nixreg/api/repositories/public/tools/images/nope')).json().errors[0].code, 'MANIFEST_UNKNOWN');
  });

  test('closure: biggest first, and the why-chain of a path from the top of the closure', async () => {
    const c = (await get(reg, `/nixreg/api/repositories/team/app/images/v1/closure?why=${encodeURIComponent(c1.paths.libc)}`, 'bob')).json();
    assert.deepEqual(c.paths.map((p: any) => p.path), [c1.paths.data, c1.paths.libc, c1.paths.lib, c1.paths.app]);
    assert.deepEqual(c.total, { paths: 4, narSize: 116_000 });
    assert.deepEqual(c.why.map((p: any) => p.path), [c1.paths.app, c1.paths.lib, c1.paths.libc]);
    const paged = (await get(reg, `/nixreg/api/repositories/team/app/images/v1/closure?n=2&last=${encodeURIComponent(c1.paths.libc)}`, 'bob')).json();
    assert.deepEqual(paged.paths.map((p: any) => p.path), [c1.paths.lib, c1.paths.app]);
    assert.equal((await get(reg, '/nixreg/api/repositories/public/tools/images/v1/closure')).status, 404);
    assert.equal((await get(reg, `/nixreg/api/repositories/team/app/images/v1/closure?why=/nix/store/x`, 'bob')).status, 404);
  });

  test('a pushed closure look-alike that is not one is ignored, not trusted', async () => {
    const tools = (await get(reg, '/nixreg/api/repositories/public/tools/images/t0')).json();
    for (const [i, blob] of ['not json', JSON.stringify({ schemaVersion: 1, roots: [7], layers: [], paths: [{ path: 'x', narSize: 1, layer: 0, references: [99] }] })].entries()) {
      const b = Buffer.from(blob);
      const empty = Buffer.from('{}');
      for (const x of [b, empty]) {
        assert.equal((await http(reg.url, 'POST', `/v2/public/tools/blobs/uploads/?digest=${sha256(x)}`, { headers: { ...as('admin'), 'content-type': 'application/octet-stream' }, body: x })).status, 201);
      }
      const m = JSON.stringify({
        schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: 'application/vnd.nixreg.closure.v1+json',
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(empty), size: 2 },
        layers: [{ mediaType: 'application/vnd.nixreg.closure.v1+json', digest: sha256(b), size: b.length }],
        subject: { mediaType: OCI_MANIFEST, digest: tools.digest, size: 1 }, annotations: { i: String(i) },
      });
      assert.equal((await http(reg.url, 'PUT', `/v2/public/tools/manifests/${sha256(m)}`, { headers: { ...as('admin'), 'content-type': OCI_MANIFEST }, body: m })).status, 201);
      assert.equal((await get(reg, '/nixreg/api/repositories/public/tools/images/t0')).json().closure, false);
      assert.equal((await get(reg, '/image?name=public/tools&ref=t0')).status, 200);
    }
  });

  test('compare: bytes to download, store paths added, removed and changed', async () => {
    const c = (await get(reg, '/nixreg/api/repositories/team/app/compare?from=v1&to=v2', 'bob')).json();
    assert.equal(c.download, v2.config + v2.layers[1]!, 'the new config and the layer not shared');
    assert.deepEqual(c.layers, { shared: 1, added: 1, removed: 1 });
    assert.deepEqual(c.paths.changed.map((x: any) => [x.from, x.to]), [[c1.paths.data, c2.paths.data], [c1.paths.app, c2.paths.app]]);
    assert.deepEqual(c.paths.added.map((x: any) => x.path), [], 'a new version of a name, or a new hash, is a change');
    assert.equal(c.paths.counts.changed, 2);
    assert.equal(c.paths.counts.same, 2);
    const page = (await get(reg, '/compare?name=team/app&from=v1&to=v2', 'bob')).text();
    assert.match(page, /id="download">\d/);
  });

  test('pages escape user data and forbid inline script', async () => {
    const r = await get(reg, '/image?name=team/app&ref=v1', 'bob');
    assert.equal(r.status, 200);
    assert.ok(!r.text().includes('<script>alert'), 'a label is never markup');
    assert.ok(r.text().includes('&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;'));
    assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'self'/);
    assert.match(r.text(), /<svg class="closure"/);
    assert.equal((r.text().match(/<rect class="path/g) ?? []).length, 4);
    const why = await get(reg, `/image?name=team/app&ref=v1&why=${encodeURIComponent(c1.paths.libc)}`, 'bob');
    assert.match(why.text(), /<ol class="why">.*app-1\.0.*lib-1.*libc-2/s);
    const home = await get(reg, `/?q=${encodeURIComponent(EVIL)}`);
    assert.ok(!home.text().includes('<script>alert'));
    const js = await get(reg, '/static/app.js');
    assert.match(js.headers.get('content-type') ?? '', /text\/javascript/);
    const repo = (await get(reg, '/repository?name=team/app', 'bob')).text();
    for (const cmd of ['docker pull', 'podman pull', 'nerdctl pull', 'image: ']) assert.ok(repo.includes(`data-copy="${cmd}`), cmd);
  });

  test('the operator page is for admins: storage, collections, counters', async () => {
    const r = await get(reg, '/operator', 'admin');
    assert.equal(r.status, 200);
    assert.match(r.text(), /Blobs stored<\/th><td>\d+ \(/);
    assert.match(r.text(), /<h2>Garbage collection<\/h2>/);
    assert.match(r.text(), /connections\.open/);
    assert.equal((await get(reg, '/operator', 'bob')).status, 403);
    assert.equal((await get(reg, '/operator')).status, 401);
  });

  test('sign-in asks for Basic credentials; the API never does for a listing', async () => {
    const r = await get(reg, '/login');
    assert.equal(r.status, 401);
    assert.match(r.headers.get('www-authenticate') ?? '', /^Basic realm="nixreg"/);
    assert.equal((await get(reg, '/login', 'bob')).status, 303);
  });
});

test('CSRF: a write that a browser says comes from another site is refused; registry clients and the same origin are not', async () => {
  const reg = await startReg();
  try {
    const post = (headers: Record<string, string>) => http(reg.url, 'POST', '/v2/a/b/blobs/uploads/', { headers });
    const cases: Record<string, string>[] = [{ origin: 'http://evil.example' }, { 'sec-fetch-site': 'cross-site' }, { 'sec-fetch-site': 'same-site', origin: reg.url }, { origin: 'null' }];
    for (const h of cases) {
      const r = await post(h);
      assert.equal(r.status, 403, JSON.stringify(h));
      assert.equal(r.json().errors[0].code, 'DENIED');
    }
    assert.equal((await post({})).status, 202, 'docker, skopeo, curl: no Origin');
    assert.equal((await post({ origin: reg.url })).status, 202);
    assert.equal((await post({ 'sec-fetch-site': 'same-origin', origin: reg.url })).status, 202);
    assert.equal((await http(reg.url, 'GET', '/nixreg/api/repositories', { headers: { 'sec-fetch-site': 'cross-site' } })).status, 200, 'reads are not writes');
  } finally { await reg.destroy(); }
});

test('--ui off: / is 404 as before; the JSON API stays', async () => {
  const reg = await startReg({ ui: false });
  try {
    await push(reg, 'a/b', 'v1', ['x']);
    assert.equal((await get(reg, '/')).status, 404);
    assert.equal((await get(reg, '/static/app.js')).status, 404);
    for (const p of ['/builds', '/operator', '/repository?name=a/b']) assert.equal((await get(reg, p)).status, 404, p);
    assert.equal((await get(reg, '/nixreg/api/repositories')).json().repositories[0].name, 'a/b');
  } finally { await reg.destroy(); }
});
