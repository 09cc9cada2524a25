// Stateful sequences for the HTTP fuzzer: uploads started, patched in and out of order,
// finished or cancelled (also at the same time), images pushed, read and deleted,
// mounts, referrers, indexes, and deletes racing reads. Only the absence of 5xx and of
// unanswered requests is checked: other cases touch the same repositories concurrently,
// so no answer here is guaranteed to be a success.
import { wire } from './client.js';
import { BLOBS, CONFIG, MANIFESTS, OCI_INDEX, OCI_MANIFEST, indexOf, referrer, sha256, type Blob } from './content.js';
import { OWNED, accept, pushName, range } from './pools.js';
import type { Ctx } from './runner.js';

type Manifest = (typeof MANIFESTS)[number];
const blobsOf = (m: { body: Buffer }) => [CONFIG, ...BLOBS.filter((b) => m.body.includes(b.digest))];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const acceptHeader = (ctx: Ctx): Record<string, string | string[]> => { const a = accept(ctx.rng); return a === undefined ? {} : { Accept: a }; };

/** Starts an upload; its Location, or undefined when the registry refused. */
async function start(ctx: Ctx, repo: string): Promise<string | undefined> {
  const a = await ctx.send({ method: 'POST', path: `/v2/${repo}/blobs/uploads/` });
  const loc = a.headers?.location;
  return a.statuses[0] === 202 && typeof loc === 'string' ? loc : undefined;
}

const withDigest = (loc: string, digest: string) => `${loc}${loc.includes('?') ? '&' : '?'}digest=${digest}`;

/** Pushes a blob by one of the ways clients do. */
async function pushBlob(ctx: Ctx, repo: string, b: Blob): Promise<void> {
  const { rng } = ctx;
  const how = rng.pick(['monolithic', 'post-put', 'patch-put', 'chunks', 'chunked-patch']);
  if (how === 'monolithic') {
    await ctx.send({ method: 'POST', path: `/v2/${repo}/blobs/uploads/?digest=${b.digest}`, headers: { 'Content-Type': 'application/octet-stream' }, body: b.data });
    return;
  }
  const loc = await start(ctx, repo);
  if (!loc) return;
  if (how === 'post-put') {
    await ctx.send({ method: 'PUT', path: withDigest(loc, b.digest), body: b.data });
    return;
  }
  const cuts = how === 'chunks' ? [0, ...Array.from({ length: rng.int(1, 3) }, () => rng.int(0, b.data.length)).sort((x, y) => x - y), b.data.length] : [0, b.data.length];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const [s, e] = [cuts[i]!, cuts[i + 1]!];
    if (s === e) continue;
    const headers: Record<string, string> = how === 'chunked-patch' ? {} : { 'Content-Range': `${s}-${e - 1}` };
    await ctx.send({ method: 'PATCH', path: loc, headers, body: b.data.subarray(s, e), ...(how === 'chunked-patch' ? { chunked: 4096 } : {}) });
  }
  await ctx.send({ method: 'PUT', path: withDigest(loc, b.digest) });
}

async function pushManifest(ctx: Ctx, repo: string, m: Manifest, ref: string): Promise<void> {
  for (const b of blobsOf(m)) await pushBlob(ctx, repo, b);
  await ctx.send({ method: 'PUT', path: `/v2/${repo}/manifests/${ref}`, headers: { 'Content-Type': m.mediaType }, body: m.body });
}

async function pushPull(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const m = rng.pick(MANIFESTS);
  const tag = rng.pick(['latest', 'v1', 'seq', `t${rng.int(0, 9)}`]);
  await pushManifest(ctx, repo, m, rng.chance(0.8) ? tag : m.digest);
  await ctx.send({ method: 'GET', path: `/v2/${repo}/manifests/${tag}`, headers: acceptHeader(ctx) });
  await ctx.send({ method: 'HEAD', path: `/v2/${repo}/manifests/${m.digest}` });
  const b = rng.pick(blobsOf(m));
  const r = range(rng);
  await ctx.send({ method: 'GET', path: `/v2/${repo}/blobs/${b.digest}`, headers: r ? { Range: r } : {} });
  if (rng.chance(0.5)) {
    await ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/${m.digest}` });
    await ctx.send({ method: 'GET', path: `/v2/${repo}/manifests/${m.digest}` });
    await ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/${tag}` });
    if (rng.chance(0.5)) await ctx.send({ method: 'DELETE', path: `/v2/${repo}/blobs/${b.digest}` });
    await ctx.send({ method: 'GET', path: `/v2/${repo}/blobs/${b.digest}` });
    await ctx.send({ method: 'GET', path: `/v2/${repo}/tags/list` });
  }
}

/** Chunks in order, out of order, repeated; status between; then finish, a wrong finish, or cancel. */
async function chunks(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const data = rng.bytes(rng.int(1, 200_000));
  const loc = await start(ctx, repo);
  if (!loc) return;
  const cuts = [0, ...Array.from({ length: rng.int(1, 4) }, () => rng.int(1, data.length)).sort((x, y) => x - y), data.length];
  const pieces = cuts.slice(0, -1).map((s, i) => [s, cuts[i + 1]!] as const).filter(([s, e]) => e > s);
  const order = [...pieces];
  if (order.length > 1 && rng.chance(0.4)) { const i = rng.int(0, order.length - 2); [order[i], order[i + 1]] = [order[i + 1]!, order[i]!]; }
  if (rng.chance(0.2)) order.splice(rng.int(0, order.length), 0, rng.pick(pieces));
  for (const [s, e] of order) {
    const cr: Record<string, string> = rng.chance(0.85) ? { 'Content-Range': `${s}-${e - 1}` } : {};
    await ctx.send({ method: 'PATCH', path: loc, headers: cr, body: data.subarray(s, e), ...(rng.chance(0.2) ? { chunked: 1000 } : {}) });
    if (rng.chance(0.3)) await ctx.send({ method: rng.pick(['GET', 'HEAD']), path: loc });
  }
  // Whatever arrived out of order is missing: send the pieces again in order.
  if (rng.chance(0.5)) {
    for (const [s, e] of pieces) await ctx.send({ method: 'PATCH', path: loc, headers: { 'Content-Range': `${s}-${e - 1}` }, body: data.subarray(s, e) });
  }
  const end = rng.pick(['finish', 'finish', 'wrong-digest', 'cancel']);
  if (end === 'cancel') await ctx.send({ method: 'DELETE', path: loc });
  else await ctx.send({ method: 'PUT', path: withDigest(loc, end === 'finish' ? sha256(data) : sha256('nope')) });
  await ctx.send({ method: rng.pick(['GET', 'PATCH', 'PUT', 'DELETE']), path: loc, body: rng.chance(0.5) ? data.subarray(0, 10) : undefined });
  if (end === 'finish') await ctx.send({ method: 'GET', path: `/v2/${repo}/blobs/${sha256(data)}` });
}

/** Finish and cancel of the same session at the same time. */
async function cancelDuringFinish(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const data = rng.bytes(rng.pick([1000, 100_000, 1_000_000]));
  const loc = await start(ctx, repo);
  if (!loc) return;
  const split = rng.chance(0.5) ? data.length : rng.int(0, data.length);
  if (split > 0) await ctx.send({ method: 'PATCH', path: loc, headers: { 'Content-Range': `0-${split - 1}` }, body: data.subarray(0, split) });
  const rest = data.subarray(split);
  // A pause before the cancel, so that it lands in every phase of the finish.
  const delay = rng.pick([0, 0, 1, 3, 10]);
  await Promise.all([
    ctx.send({ method: 'PUT', path: withDigest(loc, sha256(data)), body: rest.length ? rest : undefined }),
    (async () => { if (delay) await sleep(delay); return ctx.send({ method: 'DELETE', path: loc }); })(),
  ]);
  await ctx.send({ method: 'GET', path: loc });
  await ctx.send({ method: 'GET', path: `/v2/${repo}/blobs/${sha256(data)}` });
}

/** Several chunks, or a chunk and the finish, of one session at once. */
async function concurrentPatch(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const loc = await start(ctx, repo);
  if (!loc) return;
  const parts = Array.from({ length: rng.int(2, 3) }, () => rng.bytes(rng.int(1, 150_000)));
  const withFinish = rng.chance(0.4);
  await Promise.all([
    ...parts.map((p) => ctx.send({ method: 'PATCH', path: loc, body: p, chunked: 1000 })),
    ...(withFinish ? [ctx.send({ method: 'PUT', path: withDigest(loc, sha256(parts[0]!)) })] : []),
  ]);
  await ctx.send({ method: 'GET', path: loc });
  await ctx.send({ method: 'PUT', path: withDigest(loc, sha256(Buffer.concat(parts))) });
}

async function mount(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const [a, b] = [pushName(rng), pushName(rng)];
  const blob = rng.pick(BLOBS);
  await pushBlob(ctx, a, blob);
  await ctx.send({ method: 'POST', path: `/v2/${b}/blobs/uploads/?mount=${blob.digest}&from=${a}` });
  await ctx.send({ method: 'GET', path: `/v2/${b}/blobs/${blob.digest}` });
  await ctx.send({ method: 'DELETE', path: `/v2/${a}/blobs/${blob.digest}` });
  await ctx.send({ method: 'POST', path: `/v2/${b}/blobs/uploads/?mount=${blob.digest}&from=${a}` });
  await ctx.send({ method: rng.pick(['GET', 'HEAD']), path: `/v2/${b}/blobs/${blob.digest}` });
  if (rng.chance(0.5)) await ctx.send({ method: 'DELETE', path: `/v2/${b}/blobs/${blob.digest}` });
}

async function referrers(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const i = rng.int(0, MANIFESTS.length - 1);
  const m = MANIFESTS[i]!;
  await pushManifest(ctx, repo, m, m.digest);
  for (const b of [CONFIG, BLOBS[1]!]) await pushBlob(ctx, repo, b);
  const types = ['application/vnd.example.sbom', 'application/vnd.example.sig', 'text/plain'];
  const refs = Array.from({ length: rng.int(1, 3) }, () => referrer(i, rng.pick(types), rng.hex(6)));
  for (const r of refs) await ctx.send({ method: 'PUT', path: `/v2/${repo}/manifests/${sha256(r)}`, headers: { 'Content-Type': OCI_MANIFEST }, body: r });
  const q = rng.pick(['', `?artifactType=${encodeURIComponent(rng.pick(types))}`, '?artifactType=none']);
  await ctx.send({ method: 'GET', path: `/v2/${repo}/referrers/${m.digest}${q}` });
  if (rng.chance(0.5)) await ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/${sha256(rng.pick(refs))}` });
  if (rng.chance(0.5)) await ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/${m.digest}` });
  await ctx.send({ method: 'GET', path: `/v2/${repo}/referrers/${m.digest}` });
}

async function index(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const kids = [MANIFESTS[0]!, rng.pick(MANIFESTS.slice(1))];
  for (const k of kids) await pushManifest(ctx, repo, k, k.digest);
  const body = indexOf(kids);
  await ctx.send({ method: 'PUT', path: `/v2/${repo}/manifests/multi`, headers: { 'Content-Type': OCI_INDEX }, body });
  await ctx.send({ method: 'GET', path: `/v2/${repo}/manifests/multi`, headers: rng.chance(0.5) ? { Accept: OCI_MANIFEST } : {} });
  await ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/${kids[0]!.digest}` });
  await ctx.send({ method: 'GET', path: `/v2/${repo}/manifests/${sha256(body)}` });
  if (rng.chance(0.5)) await ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/${sha256(body)}` });
}

/** Reads of a blob racing its delete (and its re-push). */
async function deleteRace(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const b = rng.pick([BLOBS[4]!, BLOBS[5]!]);
  await pushBlob(ctx, repo, b);
  const p = `/v2/${repo}/blobs/${b.digest}`;
  await Promise.all([
    ctx.send({ method: 'GET', path: p }), ctx.send({ method: 'GET', path: p, headers: { Range: 'bytes=100-' } }),
    ctx.send({ method: 'DELETE', path: p }), ctx.send({ method: 'HEAD', path: p }), ctx.send({ method: 'GET', path: p }),
    ...(rng.chance(0.5) ? [ctx.send({ method: 'POST', path: `/v2/${repo}/blobs/uploads/?digest=${b.digest}`, body: b.data })] : []),
  ]);
  await ctx.send({ method: 'GET', path: p });
}

async function manifestRace(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const m = rng.pick(MANIFESTS);
  await pushManifest(ctx, repo, m, 'race');
  const put = (t: string) => ctx.send({ method: 'PUT', path: `/v2/${repo}/manifests/${t}`, headers: { 'Content-Type': m.mediaType }, body: m.body });
  await Promise.all([
    put('r1'), put('r2'), ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/${m.digest}` }),
    ctx.send({ method: 'GET', path: `/v2/${repo}/manifests/r1` }), ctx.send({ method: 'DELETE', path: `/v2/${repo}/manifests/r1` }),
    ctx.send({ method: 'DELETE', path: `/v2/${repo}/blobs/${CONFIG.digest}` }), ctx.send({ method: 'GET', path: `/v2/${repo}/tags/list?n=1` }),
  ]);
}

/** The expression-backed repository and nixreg's own endpoints: pulls of it run Nix, so rarely. */
async function builds(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  await ctx.send({ method: rng.pick(['GET', 'HEAD']), path: `/v2/${OWNED}/manifests/latest`, headers: acceptHeader(ctx) });
  await ctx.send({ method: 'GET', path: `/v2/${OWNED}/tags/list` });
  const list = await ctx.send({ method: 'GET', path: '/nixreg/builds' });
  const ids = [...(list.body?.toString() ?? '').matchAll(/"id":"([^"]+)"/g)].map((x) => x[1]!);
  if (ids.length) await ctx.send({ method: 'GET', path: `/nixreg/builds/${rng.pick(ids)}/log` });
  await ctx.send({ method: 'GET', path: '/nixreg/stats' });
  await ctx.send({ method: 'PUT', path: `/v2/${OWNED}/manifests/latest`, headers: { 'Content-Type': OCI_MANIFEST }, body: MANIFESTS[0]!.body });
  await ctx.send({ method: 'POST', path: `/v2/${OWNED}/blobs/uploads/` });
}

/** A chunk cut off mid-body (the client went away), then the upload resumed from the status. */
async function abortMidUpload(ctx: Ctx): Promise<void> {
  const { rng } = ctx;
  const repo = pushName(rng);
  const data = rng.bytes(rng.int(10, 300_000));
  const loc = await start(ctx, repo);
  if (!loc) return;
  const sent = rng.int(0, data.length - 1);
  await ctx.send({
    method: '(raw)', path: '(raw)', mayHang: true,
    raw: wire(`PATCH ${loc} HTTP/1.1`, [['Host', 'x'], ['Content-Length', String(data.length)], ['Content-Range', `0-${data.length - 1}`]], data.subarray(0, sent)),
  });
  const st = await ctx.send({ method: 'GET', path: loc });
  const m = /^0-(\d+)$/.exec(String(st.headers?.range ?? ''));
  // "0-0" is both an empty upload and a one-byte one: taken for empty, at worst a 416.
  const offset = st.statuses[0] === 204 && m && Number(m[1]) > 0 ? Number(m[1]) + 1 : 0;
  if (offset < data.length) {
    await ctx.send({ method: 'PATCH', path: loc, headers: { 'Content-Range': `${offset}-${data.length - 1}` }, body: data.subarray(offset) });
  }
  await ctx.send({ method: 'PUT', path: withDigest(loc, sha256(data)) });
}

export const SEQUENCES: [number, string, (ctx: Ctx) => Promise<void>][] = [
  [3, 'seq-push-pull', pushPull],
  [2, 'seq-chunks', chunks],
  [1.5, 'seq-cancel-during-finish', cancelDuringFinish],
  [1, 'seq-concurrent-patch', concurrentPatch],
  [1, 'seq-mount', mount],
  [1, 'seq-referrers', referrers],
  [0.6, 'seq-index', index],
  [1, 'seq-delete-race', deleteRace],
  [0.6, 'seq-manifest-race', manifestRace],
  [0.15, 'seq-builds', builds],
  [0.8, 'seq-abort-mid-upload', abortMidUpload],
];
