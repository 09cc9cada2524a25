// The contract of the index seam (src/blobs/index/index.ts), one suite run against every
// implementation, as store-contract.ts is for the blob seam: index-sqlite.test.ts runs it
// on a file, index-postgres.test.ts on a throwaway PostgreSQL. Each method's guarantees
// as the interface states them: blobs and links, manifests and tags, listings and their
// pages, referrers, uploads and their claims and limits, builds and layers, the cache
// quota's queries, garbage collection's snapshot, writes and sweep steps (a manifest
// pushed during a mark keeps what it references), and opening an index of an older schema.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { Index, RepoKey, RepoWrites, SweepMark, WritesSince } from '../../src/blobs/index/index.js';

export interface IndexBackend {
  /** A fresh, empty index. */
  fresh(): Promise<Index>;
  /**
   * An index of the oldest schema this implementation migrates from, opened under the
   * current one, made holding: repository `kept/repo` linking blob OLD_BLOB (size 1),
   * repository `only/uploads` with no content, and upload OLD_UPLOAD of `only/uploads`.
   */
  older?(): Promise<Index>;
}

export const OLD_BLOB = `sha256:${'a'.repeat(64)}`;
export const OLD_UPLOAD = '0b7c1a5e-3f4d-4e2a-9b8c-1d2e3f4a5b6c';

const digest = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const OCI = 'application/vnd.oci.image.manifest.v1+json';
const none = { blobs: [], manifests: [] };
let n = 0;
/** A repository name of its own for each test, so that one index serves the suite. */
const repo = (what: string) => `contract/${what}-${++n}`;

/** A mark that keeps what it is told, and says what sweepStep asked of it. */
class FakeMark implements SweepMark {
  readonly keep = new Set<string>();
  readonly seen: RepoWrites[] = [];
  readonly calls: string[] = [];
  missing: string[] = [];
  since: number;
  constructor(since: number, private readonly onWrites?: (w: RepoWrites, m: FakeMark) => void) { this.since = since; }
  wants(): WritesSince { return { manifests: this.since, others: this.since }; }
  takeIn(w: RepoWrites): string[] { this.seen.push(w); this.onWrites?.(w, this); this.calls.push('takeIn'); return this.missing; }
  readNow(m: string[]): 'read' | 'more' | 'unreadable' { this.calls.push(`readNow ${m.length}`); return 'read'; }
  async read(m: string[]) { this.calls.push(`read ${m.length}`); return true; }
  caughtUp(asOf: number) { this.calls.push('caughtUp'); this.since = asOf; }
  keepsManifest(d: string) { return this.keep.has(d); }
  keepsLink(d: string) { return this.keep.has(d); }
}

export function indexContract(name: string, backend: IndexBackend) {
  describe(`Index contract: ${name}`, () => {
    let ix: Index;
    before(async () => { ix = await backend.fresh(); });
    after(async () => { await ix?.close(); });

    /** A stored blob linked into `r`, and its digest. */
    const blob = async (r: string, s: string, size = s.length) => { const d = digest(s); await ix.addBlob(r, d, size); return d; };
    /** A manifest of `r` referencing `layers` (added first), optionally tagged. */
    const manifest = async (r: string, s: string, tag?: string, layers: string[] = [], extra: object = {}) => {
      const d = digest(s);
      assert.deepEqual(await ix.putManifest(r, { digest: d, mediaType: OCI, size: s.length, ...extra }, { blobs: layers, manifests: [] }, tag), []);
      return d;
    };

    test('answers: ping, shared, description', async () => {
      await ix.ping();
      assert.equal(typeof ix.shared, 'boolean');
      assert.ok(ix.description.length > 0);
    });

    test('blobs and links: add, link, unlink (orphaned with the last use), forget; missing rows read as undefined', async () => {
      const a = repo('links');
      const b = repo('links');
      const d = await blob(a, 'one blob', 8);
      assert.equal(await ix.blobSize(d), 8);
      assert.equal(await ix.linkedBlobSize(a, d), 8);
      assert.equal(await ix.linkedBlobSize(b, d), undefined);
      assert.equal(await ix.blobSize(digest('nothing')), undefined);
      assert.equal(await ix.linkBlob(b, digest('nothing')), false);
      assert.equal(await ix.repository(b), undefined, 'a refused link creates no repository');
      assert.equal(await ix.linkBlob(b, d), true);
      assert.equal(await ix.linkedBlobSize(b, d), 8);
      assert.deepEqual(await ix.unlinkBlob(a, d), { removed: true, orphaned: false });
      assert.deepEqual(await ix.unlinkBlob(a, d), { removed: false, orphaned: false });
      assert.deepEqual(await ix.unlinkBlob(repo('never'), d), { removed: false, orphaned: false });
      assert.deepEqual(await ix.unlinkBlob(b, d), { removed: true, orphaned: true });
      assert.equal(await ix.blobSize(d), undefined, 'the orphan\'s row is gone');
      // Forgotten: every row naming it goes.
      const c = repo('forget');
      const f = await blob(c, 'forgotten');
      const m = await manifest(c, 'manifest of forgotten', 't', [f]);
      await ix.forgetBlob(f);
      await ix.forgetBlob(m);
      assert.equal(await ix.blobSize(f), undefined);
      assert.equal(await ix.linkedBlobSize(c, f), undefined);
      assert.equal(await ix.lookup(c, { tag: 't' }), undefined);
      assert.equal(await ix.lookup(c, { digest: m }), undefined);
    });

    test('blobsAfter pages in digest order; totals count them', async () => {
      const fresh = await backend.fresh();
      try {
        const r = repo('pages');
        const ds = [];
        for (let i = 0; i < 25; i++) { ds.push(digest(`page ${i}`)); await fresh.addBlob(r, ds[i]!, i); }
        ds.sort();
        const got: string[] = [];
        for (let after = '', page; (page = await fresh.blobsAfter(after, 10)).length; after = page[page.length - 1]!.digest) {
          assert.ok(page.length <= 10);
          got.push(...page.map((p) => p.digest));
          for (const p of page) assert.equal(typeof p.created_at, 'number');
        }
        assert.deepEqual(got, ds);
        assert.deepEqual(await fresh.totals(), { blobs: 25, bytes: (24 * 25) / 2 });
      } finally { await fresh.close(); }
    });

    test('putManifest: missing references write nothing; present ones record it (blob row, tag) atomically', async () => {
      const r = repo('put');
      const layer = digest('unlinked layer');
      const m = digest('manifest with a missing layer');
      const child = digest('missing child');
      assert.deepEqual((await ix.putManifest(r, { digest: m, mediaType: OCI, size: 5 }, { blobs: [layer], manifests: [child] }, 't')).sort(), [child, layer].sort());
      assert.equal(await ix.lookup(r, { digest: m }), undefined);
      assert.equal(await ix.blobSize(m), undefined);
      assert.equal(await ix.resolveTag(r, 't'), undefined);
      const l = await blob(r, 'linked layer');
      const d = await manifest(r, 'a manifest', 't', [l], { artifactType: 'x/y' });
      assert.deepEqual(await ix.lookup(r, { tag: 't' }), { digest: d, media_type: OCI, size: 10, artifact_type: 'x/y', subject: null });
      assert.deepEqual(await ix.lookup(r, { digest: d }), await ix.lookup(r, { tag: 't' }));
      assert.equal(await ix.blobSize(d), 10, 'the body is a blob');
      assert.equal(await ix.resolveTag(r, 't'), d);
      assert.equal(await ix.lookup(repo('other'), { digest: d }), undefined, 'visible in its repository only');
      // An index naming a child present in the repository.
      const idx = digest('an index');
      assert.deepEqual(await ix.putManifest(r, { digest: idx, mediaType: OCI, size: 8 }, { blobs: [], manifests: [d] }), []);
      assert.ok(await ix.lookup(r, { digest: idx }));
    });

    test('tags: put moves, delete says whether there was one, list pages in byte order; by_digest only ever becomes true', async () => {
      const r = repo('tags');
      const one = await manifest(r, 'one', 'b');
      const two = await manifest(r, 'two');
      for (const t of ['a', 'C', 'c', 'b2']) await ix.putTag(r, t, two);
      await ix.putTag(r, 'b', two);
      assert.equal(await ix.resolveTag(r, 'b'), two);
      assert.deepEqual(await ix.listTags(r, '', 100), ['C', 'a', 'b', 'b2', 'c']);
      assert.deepEqual(await ix.listTags(r, 'a', 2), ['b', 'b2']);
      assert.equal(await ix.listTags(repo('none'), '', 10), undefined);
      assert.equal(await ix.deleteTag(r, 'C'), true);
      assert.equal(await ix.deleteTag(r, 'C'), false);
      assert.equal(await ix.deleteTag(repo('none'), 'x'), false);
      await assert.rejects(ix.putTag(r, 'dangling', digest('not a manifest of r')));
      // by_digest: pushed by tag (false), then by digest (true), then by tag again (stays true).
      const key = (await ix.repository(r))!;
      const flag = async () => (await ix.repoSnapshot(key)).manifests.find((m) => m.digest === one)!.by_digest;
      await ix.putManifest(r, { digest: one, mediaType: OCI, size: 3, byDigest: false }, none);
      assert.equal(await flag(), false);
      await ix.putManifest(r, { digest: one, mediaType: OCI, size: 3, byDigest: true }, none);
      await ix.putManifest(r, { digest: one, mediaType: OCI, size: 3, byDigest: false }, none, 'again');
      assert.equal(await flag(), true);
    });

    test('deleteManifest: returns its tags, takes them along, and orphans its blob only when nothing else uses it', async () => {
      const r = repo('del');
      const s = repo('del');
      const d = await manifest(r, 'shared manifest', 'x');
      await ix.putTag(r, 'y', d);
      await manifest(s, 'shared manifest');
      const out = await ix.deleteManifest(r, d);
      assert.deepEqual({ ...out, tags: out.tags.sort() }, { deleted: true, tags: ['x', 'y'], orphaned: false });
      assert.equal(await ix.resolveTag(r, 'x'), undefined);
      assert.deepEqual(await ix.deleteManifest(r, d), { deleted: false, tags: [], orphaned: false });
      assert.deepEqual(await ix.deleteManifest(repo('none'), d), { deleted: false, tags: [], orphaned: false });
      assert.deepEqual(await ix.deleteManifest(s, d), { deleted: true, tags: [], orphaned: true });
      assert.equal(await ix.blobSize(d), undefined);
    });

    test('repositories: listed only with content, in byte order and pages; looked up by name', async () => {
      const fresh = await backend.fresh();
      try {
        await fresh.addBlob('b/x', digest('b'), 1);
        await fresh.addBlob('B/x', digest('B'), 1);
        await fresh.addBlob('a/x', digest('a'), 1);
        await fresh.putManifest('c/x', { digest: digest('c'), mediaType: OCI, size: 1 }, none);
        await fresh.createUpload('upload-only', 'd/x', 'client');
        assert.deepEqual(await fresh.listRepos('', 10), ['B/x', 'a/x', 'b/x', 'c/x']);
        assert.deepEqual(await fresh.listRepos('a/x', 2), ['b/x', 'c/x']);
        assert.equal(await fresh.repository('d/x'), undefined, 'an upload creates no repository');
        const a = await fresh.repository('a/x');
        assert.equal(a?.name, 'a/x');
        assert.deepEqual((await fresh.repositories()).map((k) => k.name).sort(), ['B/x', 'a/x', 'b/x', 'c/x']);
        assert.ok((await fresh.repositories()).some((k) => k.id === a!.id));
      } finally { await fresh.close(); }
    });

    test('referrers: pages in digest order, filtered by type, with the byte size of their annotations; annotations byte for byte', async () => {
      const r = repo('refs');
      const subject = await manifest(r, 'the subject');
      const want = new Map<string, string>();
      for (let i = 0; i < 12; i++) {
        const annotations = i % 3 === 0 ? undefined : { n: String(i), text: `é…${i}` };
        const d = await manifest(r, `referrer ${i}`, undefined, [], { subject, artifactType: i % 2 ? 'odd/type' : 'even/type', annotations });
        if (annotations) want.set(d, JSON.stringify(annotations));
      }
      const all = await ix.referrers(r, subject, { after: '', limit: 100 });
      assert.equal(all.length, 12);
      assert.deepEqual(all.map((x) => x.digest), all.map((x) => x.digest).sort());
      const page = await ix.referrers(r, subject, { after: all[4]!.digest, limit: 3 });
      assert.deepEqual(page.map((x) => x.digest), all.slice(5, 8).map((x) => x.digest));
      const odd = await ix.referrers(r, subject, { after: '', limit: 100, artifactType: 'odd/type' });
      assert.equal(odd.length, 6);
      assert.ok(odd.every((x) => x.artifact_type === 'odd/type'));
      for (const x of all) {
        const json = want.get(x.digest);
        assert.equal(x.annotations_bytes, json === undefined ? null : Buffer.byteLength(json));
        assert.equal((await ix.referrerAnnotations(r, x.digest))?.toString(), json);
        assert.equal(x.media_type, OCI);
      }
      assert.deepEqual(await ix.referrers(repo('none'), subject, { after: '', limit: 10 }), []);
      const gone = [...want.keys()][0]!;
      await ix.deleteManifest(r, gone);
      assert.equal(await ix.referrerAnnotations(r, gone), undefined, 'annotations go with their manifest');
    });

    test('uploads: rows, counts and limits (refused: nothing written), touch, claims, delete', async () => {
      const fresh = await backend.fresh();
      try {
        const limits = { repo: 2, client: 3, total: 4 };
        assert.equal(await fresh.createUpload('u1', 'up/a', 'c1', limits), undefined);
        assert.equal(await fresh.createUpload('u2', 'up/a', 'c2', limits), undefined);
        assert.deepEqual(await fresh.createUpload('u3', 'up/a', 'c1', limits), { repo: 2, client: 1, total: 2 });
        assert.equal(await fresh.getUpload('u3'), undefined);
        await fresh.createUpload('u4', 'up/b', 'c1');
        assert.deepEqual(await fresh.openUploads('up/a', 'c1'), { repo: 2, client: 2, total: 3 });
        assert.equal(await fresh.uploadCount(), 3);
        const row = (await fresh.getUpload('u1'))!;
        assert.equal(row.repo, 'up/a');
        assert.equal(row.staged, null);
        assert.equal(row.claimed_by, null);
        await sleep(5);
        await fresh.touchUpload('u1', '{"offset":5}');
        await fresh.touchUpload('u1');
        const touched = (await fresh.getUpload('u1'))!;
        assert.equal(touched.staged, '{"offset":5}', 'a touch without staging keeps it');
        assert.ok(touched.updated_at > row.updated_at);
        await fresh.touchUpload('nope', '{}');
        // Claims: one owner at a time, until it runs out; a takeover only from the holder.
        const t = Date.now();
        assert.equal(await fresh.claimUpload('u1', 'A', t + 60_000), true);
        assert.equal(await fresh.claimUpload('u1', 'B', t + 60_000), false);
        assert.equal(await fresh.claimUpload('u1', 'A', t + 60_000), true, 'its own claim again');
        assert.equal((await fresh.getUpload('u1'))!.claimed_by, 'A');
        assert.equal(await fresh.takeOverClaim('u1', 'C', 'B', t + 60_000), false);
        assert.equal(await fresh.takeOverClaim('u1', 'A', 'B', t + 60_000), true);
        assert.equal(await fresh.claimUpload('u1', 'A', t + 60_000), false);
        await fresh.extendClaim('u1', 'A', t - 1);
        assert.equal(await fresh.claimUpload('u1', 'A', t + 60_000), false, 'only the holder extends');
        await fresh.releaseUpload('u1', 'A');
        assert.equal(await fresh.claimUpload('u1', 'A', t + 60_000), false, 'only the holder releases');
        await fresh.releaseUpload('u1', 'B');
        assert.equal(await fresh.claimUpload('u1', 'A', t + 60_000), true);
        await fresh.extendClaim('u1', 'A', Date.now() - 1000);
        assert.equal(await fresh.claimUpload('u1', 'B', t + 60_000), true, 'a claim that ran out is anyone\'s');
        assert.equal(await fresh.claimUpload('nope', 'A', t + 60_000), false);
        const all = await fresh.allUploads();
        assert.deepEqual(all.map((u) => u.id).sort(), ['u1', 'u2', 'u4']);
        assert.equal(all.find((u) => u.id === 'u1')!.claimed_until, t + 60_000);
        await fresh.deleteUpload('u1');
        await fresh.deleteUpload('u1');
        assert.equal(await fresh.getUpload('u1'), undefined);
        assert.equal(await fresh.uploadCount(), 2);
      } finally { await fresh.close(); }
    });

    test('concurrent starts cannot both take the last free slot', async () => {
      const fresh = await backend.fresh();
      try {
        const limits = { repo: 5, client: 100, total: 100 };
        const outs = await Promise.all(Array.from({ length: 20 }, (_, i) => fresh.createUpload(`race-${i}`, 'race/r', `c${i}`, limits)));
        assert.equal(outs.filter((o) => o === undefined).length, 5);
        assert.equal((await fresh.openUploads('race/r', '')).repo, 5);
      } finally { await fresh.close(); }
    });

    test('layers and builds: a layer only while its blob is stored; builds recorded, replaced, looked up', async () => {
      const r = repo('built');
      const l = await blob(r, 'a layer');
      await ix.putLayer('key1', { digest: l, diff_id: digest('diff'), size: 7 });
      assert.deepEqual(await ix.getLayer('key1'), { digest: l, diff_id: digest('diff'), size: 7 });
      assert.equal(await ix.getLayer('nokey'), undefined);
      const row = { repo: r, hash: 'h1', manifest: digest('m'), media_type: OCI, size: 1, alt_manifest: null, alt_media_type: null, alt_size: null, store_path: '/nix/store/x', layer_format: 'gzip-6' };
      assert.equal(await ix.hasBuilds(r), false);
      await ix.putBuild(row);
      assert.equal(await ix.hasBuilds(r), true);
      assert.deepEqual(await ix.getBuild(r, 'h1'), { ...row, evicted_at: null });
      await ix.putBuild({ ...row, store_path: '/nix/store/y', layer_format: null });
      assert.deepEqual(await ix.getBuild(r, 'h1'), { ...row, store_path: '/nix/store/y', layer_format: null, evicted_at: null });
      assert.equal(await ix.getBuild(r, 'h2'), undefined);
      await ix.unlinkBlob(r, l);
      await ix.forgetBlob(l);
      assert.equal(await ix.getLayer('key1'), undefined);
    });

    test('times for the web page: when tags moved and their builds were last pulled, when repositories last changed', async () => {
      const [r, quiet] = [repo('times'), repo('times-quiet')];
      const t0 = Date.now() - 5_000;
      const built = await manifest(r, 'built image', 'latest');
      const pushed = await manifest(r, 'pushed image', 'v1');
      await ix.putBuild({ repo: r, hash: 'h', manifest: built, media_type: OCI, size: 1, alt_manifest: null, alt_media_type: null, alt_size: null, store_path: '/nix/store/h', layer_format: null });
      await ix.notePulls([{ repo: r, digest: built, at: Date.now() + 60_000 }]);
      const times = (await ix.tagTimes(r, ['latest', 'v1', 'absent'])).sort((a, b) => a.tag.localeCompare(b.tag));
      assert.deepEqual(times.map((t) => t.tag), ['latest', 'v1']);
      for (const t of times) assert.ok(t.updated >= t0 && t.updated <= Date.now() + 5_000, `${t.tag} moved at ${t.updated}`);
      assert.ok(times[0]!.pulled! >= Date.now() + 50_000, 'the build\'s last pull');
      assert.equal(times[1]!.pulled, null, 'a pushed image is never pulled "as built"');
      assert.ok(pushed);
      await blob(quiet, 'only a blob');
      const changes = await ix.repoChanges([r, quiet, 'no/such']);
      assert.deepEqual(changes.map((c) => c.repo), [r]);
      assert.ok(changes[0]!.changed >= t0);
      assert.deepEqual(await ix.tagTimes('no/such', ['latest']), []);
    });

    test('the cache quota: usage of built repositories alone, eviction order by last pull, eviction keeps what another build names', async () => {
      const fresh = await backend.fresh();
      try {
        const build = async (r: string, hash: string, m: string, layer: string, size: number) => {
          await fresh.addBlob(r, digest(layer), size);
          await fresh.putManifest(r, { digest: digest(m), mediaType: OCI, size: 10 }, { blobs: [digest(layer)], manifests: [] }, hash);
          await fresh.putBuild({ repo: r, hash, manifest: digest(m), media_type: OCI, size: 10, alt_manifest: null, alt_media_type: null, alt_size: null, store_path: `/nix/store/${hash}`, layer_format: null });
        };
        await build('q/a', 'h1', 'ma', 'la', 100);
        await sleep(5);
        await build('q/b', 'h2', 'mb', 'lb', 1000);
        await fresh.putBuild({ ...(await fresh.getBuild('q/b', 'h2'))!, hash: 'h3' });
        // Pushed content is never counted, even a blob a built repository shares.
        await fresh.addBlob('pushed/p', digest('la'), 100);
        assert.equal(await fresh.builtUsage(), 1000 + 10 + 10);
        assert.deepEqual(await fresh.evictionOrder(), [{ repo: 'q/a', manifest: digest('ma') }, { repo: 'q/b', manifest: digest('mb') }]);
        await fresh.notePulls([{ repo: 'q/a', digest: digest('ma'), at: Date.now() + 1000 }, { repo: 'q/a', digest: digest('ma'), at: 1 }]);
        assert.deepEqual((await fresh.evictionOrder()).map((e) => e.repo), ['q/b', 'q/a'], 'a pull moves it back; a time never goes back');
        await fresh.evictBuild('q/b', digest('mb'));
        assert.notEqual((await fresh.getBuild('q/b', 'h2'))!.evicted_at, null);
        assert.notEqual((await fresh.getBuild('q/b', 'h3'))!.evicted_at, null, 'every build row of that manifest');
        assert.equal(await fresh.lookup('q/b', { digest: digest('mb') }), undefined);
        assert.equal(await fresh.resolveTag('q/b', 'h2'), undefined);
        assert.equal(await fresh.blobSize(digest('mb')) !== undefined, true, 'blob rows stay (GC removes them)');
        assert.deepEqual(await fresh.evictionOrder(), [{ repo: 'q/a', manifest: digest('ma') }]);
        // Another build not evicted that names the manifest keeps it.
        await fresh.putBuild({ ...(await fresh.getBuild('q/a', 'h1'))!, hash: 'h5', manifest: digest('other'), alt_manifest: digest('ma') });
        await fresh.evictBuild('q/a', digest('ma'));
        assert.ok(await fresh.lookup('q/a', { digest: digest('ma') }), 'still named by build h5 (as its alternate)');
      } finally { await fresh.close(); }
    });

    test('GC: a snapshot, the writes since, candidates by cutoff, and isTagged', async () => {
      const r = repo('gc');
      const l = await blob(r, 'gc layer');
      const tagged = await manifest(r, 'gc tagged', 't', [l]);
      await ix.putTag(r, 't2', tagged);
      await ix.putManifest(r, { digest: digest('gc bydigest'), mediaType: OCI, size: 1, byDigest: true }, none);
      await ix.putBuild({ repo: r, hash: 'hh', manifest: tagged, media_type: OCI, size: 1, alt_manifest: digest('alt'), alt_media_type: OCI, alt_size: 1, store_path: '/s', layer_format: null });
      const key = (await ix.repository(r))!;
      const snap = await ix.repoSnapshot(key);
      assert.deepEqual(snap.tagged, [tagged], 'each tagged digest once');
      assert.deepEqual(snap.manifests.map((m) => [m.digest, m.by_digest]).sort(), [[digest('gc bydigest'), true], [tagged, false]].sort());
      assert.deepEqual(snap.builds, [{ manifest: tagged, alt_manifest: digest('alt'), evicted_at: null }]);
      assert.ok(snap.asOf >= Math.max(...snap.manifests.map((m) => m.created_at)));
      await sleep(5);
      const since = Date.now();
      await sleep(5);
      const later = await manifest(r, 'gc later');
      await ix.putTag(r, 't', later);
      const w = await ix.repoWrites(key, { manifests: since, others: since });
      assert.deepEqual(w.manifests.map((m) => m.digest), [later]);
      assert.deepEqual(w.tags, [later]);
      assert.deepEqual(w.builds, []);
      assert.ok(w.asOf >= since);
      const c = await ix.sweepCandidates(key, since);
      assert.deepEqual(c.manifests.sort(), [digest('gc bydigest'), tagged].sort());
      assert.deepEqual(c.links, [l]);
      assert.equal(await ix.isTagged(key, later), true);
      assert.equal(await ix.isTagged(key, digest('gc bydigest')), false);
    });

    test('GC: a sweep step removes what the mark does not keep, re-checking tags and stamps, and keeps a manifest pushed during the mark', async () => {
      const r = repo('sweep');
      const oldLayer = await blob(r, 'old layer');
      const gone = await blob(r, 'gone layer');
      const untagged = await manifest(r, 'untagged old', undefined, [oldLayer]);
      const retagged = await manifest(r, 'retagged old');
      const kept = await manifest(r, 'kept old');
      await sleep(5);
      const key = (await ix.repository(r))!;
      const cutoff = Date.now();
      const began = cutoff;
      await sleep(5);
      // During the mark: a push referencing the old layer, and a tag onto an old manifest.
      const pushed = await manifest(r, 'pushed during the mark', 'new', [oldLayer]);
      await ix.putTag(r, 'back', retagged);
      const mark = new FakeMark(began, (w, m) => {
        // What a real mark would conclude from the writes: the new manifest and its layer live.
        if (w.manifests.some((x) => x.digest === pushed)) { m.keep.add(pushed); m.keep.add(oldLayer); }
      });
      mark.keep.add(kept);
      const out = await ix.sweepStep(key, { mark, cutoff, manifests: [untagged, retagged, kept, pushed], links: [oldLayer, gone], maxReads: 8 });
      assert.deepEqual(out, { outcome: 'swept', manifests: 1, links: 1 });
      assert.ok(mark.seen[0]!.manifests.some((x) => x.digest === pushed), 'the step took in the write made during the mark');
      assert.deepEqual(mark.calls.filter((c) => c === 'takeIn' || c === 'caughtUp'), ['takeIn', 'caughtUp']);
      assert.equal(await ix.lookup(r, { digest: untagged }), undefined);
      assert.ok(await ix.lookup(r, { digest: retagged }), 'tagged since: re-checked, kept');
      assert.ok(await ix.lookup(r, { digest: kept }));
      assert.ok(await ix.lookup(r, { digest: pushed }), 'stamped after the cutoff');
      assert.equal(await ix.linkedBlobSize(r, gone), undefined);
      assert.ok(await ix.linkedBlobSize(r, oldLayer), 'the layer of the manifest pushed during the mark stays');
    });

    test('GC: a step that must read more bodies than it may gives way having removed nothing (or reads them awaiting); unreadable removes nothing', async () => {
      const r = repo('giveway');
      const d = await manifest(r, 'to go');
      await sleep(5);
      const key = (await ix.repository(r))!;
      const cutoff = Date.now();
      const mark = new FakeMark(cutoff);
      mark.missing = ['a', 'b'];
      const out = await ix.sweepStep(key, { mark, cutoff, manifests: [d], links: [], maxReads: 1 });
      if (out.outcome === 'more') {
        assert.ok(await ix.lookup(r, { digest: d }), 'nothing removed');
        assert.ok(!mark.calls.includes('caughtUp'));
      } else {
        assert.deepEqual(out, { outcome: 'swept', manifests: 1, links: 0 });
        assert.ok(mark.calls.includes('read 2'), 'read awaiting, within the step');
      }
      const r2 = repo('unreadable');
      const d2 = await manifest(r2, 'stays');
      await sleep(5);
      const k2 = (await ix.repository(r2))!;
      const m2 = new FakeMark(Date.now());
      m2.missing = ['x'];
      m2.readNow = () => 'unreadable';
      m2.read = async () => false;
      assert.deepEqual(await ix.sweepStep(k2, { mark: m2, cutoff: Date.now(), manifests: [d2], links: [], maxReads: 8 }), { outcome: 'unreadable' });
      assert.ok(await ix.lookup(r2, { digest: d2 }));
    });

    test('GC: unused blobs listed by cutoff, dropped only if still unused and without a young cached layer; blobUses weighs them', async () => {
      const fresh = await backend.fresh();
      try {
        const r = 'unused/r';
        const [a, b, c, used] = [digest('ua'), digest('ub'), digest('uc'), digest('used')];
        for (const [d, size] of [[a, 1], [b, 2], [c, 3], [used, 4]] as const) await fresh.addBlob(r, d, size);
        await fresh.putLayer('old-layer', { digest: b, diff_id: b, size: 2 });
        await sleep(5);
        // A sweep takes their links and leaves the rows, unused.
        const swept = Date.now();
        const out = await fresh.sweepStep((await fresh.repository(r))!, { mark: new FakeMark(swept), cutoff: swept, manifests: [], links: [a, b, c], maxReads: 8 });
        assert.deepEqual(out, { outcome: 'swept', manifests: 0, links: 3 });
        await sleep(5);
        const cutoff = Date.now();
        assert.deepEqual((await fresh.unusedBlobs(cutoff)).sort(), [a, b, c].sort());
        assert.deepEqual(await fresh.unusedBlobs(swept - 1000), [], 'stored after that cutoff');
        const uses = await fresh.blobUses(cutoff, '', 100);
        assert.deepEqual(uses.find((u) => u.digest === used), { digest: used, size: 4, links: 1, manifests: 0, young: 0 });
        assert.deepEqual(uses.find((u) => u.digest === b), { digest: b, size: 2, links: 0, manifests: 0, young: 0 });
        assert.deepEqual(uses.map((u) => u.digest), uses.map((u) => u.digest).sort());
        assert.equal((await fresh.blobUses(cutoff, '', 1)).length, 1);
        // Re-checked when dropped: linked again meanwhile, or a young cached layer, keeps it.
        await fresh.linkBlob('unused/other', c);
        await sleep(5);
        await fresh.putLayer('young-layer', { digest: b, diff_id: b, size: 2 });
        assert.deepEqual(await fresh.dropUnusedBlobs([a, b, c], cutoff), [{ digest: a, size: 1 }]);
        assert.equal(await fresh.blobSize(a), undefined);
        assert.equal(await fresh.blobSize(c), 3);
        assert.deepEqual(await fresh.dropUnusedBlobs([b, used, digest('never')], Date.now() + 1000), [{ digest: b, size: 2 }]);
        assert.equal(await fresh.blobSize(b), undefined);
        assert.equal(await fresh.getLayer('old-layer'), undefined, 'its cached layers go with it');
        assert.equal(await fresh.blobSize(used), 4, 'a linked blob is never dropped');
      } finally { await fresh.close(); }
    });

    if (backend.older) {
      test('an index of an older schema opens under the current one: content kept, upload resumable, empty repositories gone', async () => {
        const old = await backend.older!();
        try {
          assert.equal(await old.blobSize(OLD_BLOB), 1);
          assert.equal(await old.linkedBlobSize('kept/repo', OLD_BLOB), 1);
          assert.equal((await old.getUpload(OLD_UPLOAD))?.repo, 'only/uploads');
          assert.equal(await old.repository('only/uploads'), undefined);
          assert.deepEqual(await old.listRepos('', 10), ['kept/repo']);
          // And it works as a current one.
          assert.deepEqual(await old.putManifest('kept/repo', { digest: digest('new'), mediaType: OCI, size: 3 }, { blobs: [OLD_BLOB], manifests: [] }, 'v'), []);
          assert.equal((await old.lookup('kept/repo', { tag: 'v' }))?.digest, digest('new'));
        } finally { await old.close(); }
      });
    }
  });
}

export type { RepoKey };
