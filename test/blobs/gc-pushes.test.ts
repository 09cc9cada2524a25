// Garbage collection under constant pushes, against the real `nixreg serve`: twelve
// repositories are pushed to without a pause (new layers, tags moved on so that old
// images become garbage, pushes by digest, indexes over old untagged manifests, and
// manifests that reference a garbage layer without uploading it again) while collections
// run back to back with a grace of one second (a push's layers are younger than that
// when its manifest comes). A repository written to during every collection must still
// be collected, and nothing an acknowledged push references may go.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { parseManifest } from '../../src/oci/manifest.js';
import { spawnRegistry, type RegistryProcess } from '../helpers/registry.js';
import { checkStore } from '../helpers/store-check.js';
import { OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, http, sha256 } from '../api/util.js';

const REPOS = 12;
/**
 * Collections start once there is garbage older than the grace period; pushes go on for
 * at least MIN_MS and until COLLECTIONS collections have run start to end meanwhile (a
 * collection yields to the pushes and takes seconds), at most MAX_MS.
 */
const WARMUP_MS = 2_500;
const MIN_MS = 10_000;
const MAX_MS = 40_000;
const COLLECTIONS = 1;
/** Between one image and the next of a repository: constant pushes, not a flood that makes collections take minutes. */
const PAUSE_MS = 50;
const GRACE_MS = 1000;

let reg: RegistryProcess;
before(async () => { reg = await spawnRegistry({ args: ['--gc-grace', String(GRACE_MS / 1000), '--gc-interval', '0'] }); });
after(async () => {
  await reg?.stop();
  if (reg) rmSync(reg.data, { recursive: true, force: true });
});

interface Pushed { repo: string; digest: string; body: Buffer; type: string; blobs: string[]; children: Pushed[] }
interface Report { bytes: number; blobs: number; manifests: number; deferred: number; ms: number; holdMs?: number }

const upload = async (repo: string, b: Buffer) => {
  const r = await http(reg.url, 'POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, { body: b });
  assert.equal(r.status, 201, r.text());
};

test('collections back to back with pushes to every repository free garbage as they go and lose nothing acknowledged', { timeout: 120_000 }, async () => {
  let pushing = true;
  const latencies: number[] = [];
  const timed = async <T>(f: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    try { return await f(); } finally { latencies.push(performance.now() - t); }
  };
  /** What must survive: per repository, the last image under each tag, and every push by digest. */
  const tagged = new Map<string, Pushed>();
  const byDigest: Pushed[] = [];
  /** Per repository, the first image: its tag moves on at the third push after it. */
  const first = new Map<string, Pushed>();
  /** Images an index named: live while that index is tagged. */
  const named = new Set<string>();
  let raced = 0;

  const put = (repo: string, ref: string, body: Buffer, type: string) =>
    timed(() => http(reg.url, 'PUT', `/v2/${repo}/manifests/${ref}`, { headers: { 'content-type': type }, body }));

  const pusher = async (r: number) => {
    const repo = `busy/r${r}`;
    const history: { m: Pushed; layer: Buffer; at: number }[] = [];
    /** The newest image older than the grace period (from the `from`th on): what a collection may be taking now. */
    const older = (from = 0) => {
      for (let k = history.length - 1; k >= from; k--) if (history[k]!.at < Date.now() - 1.5 * GRACE_MS) return history[k];
      return undefined;
    };
    for (let i = 0; pushing; i++) {
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, n: `${r}.${i}` }));
      const layer = randomBytes(8192);
      await timed(() => upload(repo, config));
      await timed(() => upload(repo, layer));
      // Every other image also references the layer of an image older than the grace
      // period, without uploading it again: unless that image is still tagged (its tag
      // moves on every third push) or another image uses the layer, it is garbage that
      // a collection may be taking right now.
      const old = i % 2 === 0 ? older()?.layer : undefined;
      const layers = old ? [layer, old] : [layer];
      const body = Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: OCI_MANIFEST,
        config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
        layers: layers.map((l) => ({ mediaType: OCI_LAYER, digest: sha256(l), size: l.length })),
      }));
      const ref = i % 5 === 4 ? sha256(body) : `t${i % 3}`;
      let res = await put(repo, ref, body, OCI_MANIFEST);
      if (res.status === 404 && old) {
        // The collection took the old layer first: the push was refused, not lost.
        assert.match(res.text(), /BLOB_UNKNOWN/);
        raced++;
        await timed(() => upload(repo, old));
        res = await put(repo, ref, body, OCI_MANIFEST);
      }
      assert.equal(res.status, 201, `${repo} ${ref}: ${res.text()}`);
      const m: Pushed = { repo, digest: sha256(body), body, type: OCI_MANIFEST, blobs: [sha256(config), ...layers.map(sha256)], children: [] };
      history.push({ m, layer, at: Date.now() });
      if (i === 0) first.set(repo, m);
      if (ref.startsWith('sha256:')) byDigest.push(m); else tagged.set(`${repo}:${ref}`, m);
      // An index over this image and one older than the grace period (most likely
      // untagged by now, so garbage): the old one becomes live again through it.
      // Never the first image: the test checks that those are collected while pushes go on,
      // and on a slow machine the first index of most repositories would otherwise name it.
      const child = older(1)?.m;
      if (i % 6 === 5 && child) {
        const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX,
          manifests: [m, child].map((c) => ({ mediaType: OCI_MANIFEST, digest: c.digest, size: c.body.length })) }));
        const ir = await put(repo, 'idx', index, OCI_INDEX);
        named.add(child.digest);
        if (ir.status === 201) tagged.set(`${repo}:idx`, { repo, digest: sha256(index), body: index, type: OCI_INDEX, blobs: [], children: [m, child] });
        else { assert.equal(ir.status, 404, ir.text()); raced++; }
      }
      await new Promise((res) => setTimeout(res, PAUSE_MS));
    }
  };

  const reports: Report[] = [];
  let collecting = true;
  const collector = (async () => {
    await new Promise((res) => setTimeout(res, WARMUP_MS));
    while (collecting) {
      const r = await http(reg.url, 'POST', '/nixreg/gc');
      assert.equal(r.status, 200, r.text());
      reports.push(r.json() as Report);
    }
  })();
  // A pusher that fails stops them all, and the test reports its error.
  const errors: unknown[] = [];
  const pushers = Array.from({ length: REPOS }, (_, r) => pusher(r).catch((e) => { errors.push(e); pushing = false; }));
  const started = Date.now();
  while (pushing && (Date.now() - started < MIN_MS || reports.length < COLLECTIONS) && Date.now() - started < MAX_MS) {
    await new Promise((res) => setTimeout(res, 100));
  }
  if (errors.length) {
    collecting = false;
    await Promise.all([...pushers, collector]);
    throw errors[0];
  }

  // Still pushing: what the collections have done so far.
  const during = reports.slice();
  // (Those no index named: none is, see older(1), but one named would be live.)
  const firsts = [...first.values()].filter((m) => !named.has(m.digest));
  const gone = await Promise.all(firsts.map(async (m) =>
    (await http(reg.url, 'HEAD', `/v2/${m.repo}/manifests/${m.digest}`, { headers: { accept: OCI_MANIFEST } })).status));
  const pushedFor = Date.now() - started;
  pushing = false;
  await Promise.all(pushers);
  collecting = false;
  await collector;

  const sum = (k: 'bytes' | 'deferred' | 'manifests') => during.reduce((n, r) => n + r[k], 0);
  const holds = during.map((r) => r.holdMs ?? NaN);
  const sorted = latencies.slice().sort((a, b) => a - b);
  const diag = `${during.length} collections in ${pushedFor} ms of pushes: ${sum('bytes')} bytes, ${sum('manifests')} manifests freed, ${sum('deferred')} deferrals; ` +
    `longest write transaction ${Math.max(...holds).toFixed(1)} ms; ${latencies.length} push requests, p99 ${sorted[Math.floor(sorted.length * 0.99)]!.toFixed(1)} ms, ` +
    `max ${sorted[sorted.length - 1]!.toFixed(1)} ms; ${raced} pushes refused because a collection took what they referenced`;
  console.log(diag);
  assert.ok(during.length >= COLLECTIONS, diag);
  // Every collection frees something: there is always garbage older than the grace period.
  for (const r of during) assert.ok(r.bytes > 0 && r.deferred === 0, `${JSON.stringify(r)}: ${diag}`);
  assert.ok(firsts.length >= REPOS / 2, diag);
  assert.deepEqual(gone, firsts.map(() => 404), `the first image of every repository, whose tag moved on, is collected while pushes go on: ${diag}`);
  // The longest a collection held the index: pushes and pulls wait that long at most.
  assert.ok(Math.max(...holds) < 250, diag);

  // Every acknowledged image that is still meant to be there pulls whole, byte for byte.
  const check = async (m: Pushed) => {
    const got = await http(reg.url, 'GET', `/v2/${m.repo}/manifests/${m.digest}`, { headers: { accept: m.type } });
    assert.equal(got.status, 200, `${m.repo}@${m.digest}`);
    assert.deepEqual(got.body, m.body);
    for (const d of m.blobs) {
      const b = await http(reg.url, 'GET', `/v2/${m.repo}/blobs/${d}`);
      assert.equal(b.status, 200, `${m.repo} blob ${d} of ${m.digest}`);
      assert.equal(sha256(b.body), d);
    }
    for (const c of m.children) await check(c);
  };
  for (const m of [...tagged.values(), ...byDigest]) await check(m);
  for (const [key, m] of tagged) {
    const [repo, tag] = key.split(':') as [string, string];
    const r = await http(reg.url, 'GET', `/v2/${repo}/manifests/${tag}`, { headers: { accept: m.type } });
    assert.equal(sha256(r.body), m.digest, `${key} still names its last push`);
  }
  await checkStore(reg.data, 'after the collections');
  wholeManifests(reg.data);
});

/**
 * Every manifest the index still holds, acknowledged and still there (tagged or not),
 * has all it references: its blobs linked in its repository, its children there.
 */
function wholeManifests(data: string): void {
  const db = new Database(join(data, 'index.db'), { readonly: true, fileMustExist: true });
  try {
    const linked = db.prepare('SELECT 1 FROM repo_blobs WHERE repo_id = ? AND digest = ?');
    const present = db.prepare('SELECT 1 FROM manifests WHERE repo_id = ? AND digest = ?');
    const rows = db.prepare('SELECT repo_id, digest, media_type FROM manifests').all() as { repo_id: number; digest: string; media_type: string }[];
    for (const m of rows) {
      const p = parseManifest(readFileSync(join(data, 'blobs/sha256', m.digest.slice(7, 9), m.digest.slice(7))), m.media_type);
      for (const b of p.blobs) assert.ok(linked.get(m.repo_id, b), `manifest ${m.digest} (repository ${m.repo_id}) references ${b}, which is gone`);
      for (const c of p.manifests) assert.ok(present.get(m.repo_id, c), `index ${m.digest} (repository ${m.repo_id}) names ${c}, which is gone`);
    }
  } finally {
    db.close();
  }
}
