// What the web page shows, read for one caller: repositories, a repository's tags, an
// image, a built image's closure (closure referrers, build/assembly/closure.ts) with the
// why-chain of a store path, and two images compared. The JSON API (handlers/api.ts) and
// the pages (ui/pages.ts) both answer from here, so they cannot disagree about what a
// caller may see: a repository it may not read is one that does not exist, the same
// error word for word, and never in a listing.
//
// Every list is a page (n, last) read from the index a page at a time; the closure
// document is bounded when it is written (MAX_BYTES there, CLOSURE_BYTES here).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request } from 'express';
import { LRUCache } from 'lru-cache';
import type { Descriptor } from '../../oci/descriptor.js';
import { IMAGE_TYPES, INDEX_TYPES, MediaTypes } from '../../oci/media-types.js';
import { checkReference } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import type { Ctx } from '../handlers/context.js';

export type MadeFrom = 'pushed' | 'image file' | 'flake' | 'package list';

/** Page sizes: each tag of a page costs a manifest and a config read. */
export const REPOS_PAGE = 100;
export const TAGS_PAGE = 50;
export const PAGE_MAX = 1000;
export const CLOSURE_PAGE = 2000;
export const CLOSURE_PAGE_MAX = 10_000;
/** Repository names a search reads at most for one page. */
const SEARCH_SCAN = 100_000;
/** Config blobs are read whole up to this; a bigger one is shown without its config. */
const CONFIG_BYTES = 1024 * 1024;
/** The closure document as written (≤ 16 MiB, closure.ts), with room to spare. */
const CLOSURE_BYTES = 17 * 1024 * 1024;
/** Lists of a comparison: the rest is counted, not listed. */
const COMPARE_LIST = 1000;

interface Page<T> { items: T[]; next?: string | undefined }

export function notFound(repo: string): RegistryError {
  return new RegistryError('NAME_UNKNOWN', `repository ${repo} not known to registry`, { name: repo });
}

/** Throws NAME_UNKNOWN unless `repo` exists (or is served) and the caller may read it. */
export async function readable(ctx: Ctx, req: Request, repo: string): Promise<void> {
  if (!ctx.gate.visible(req, repo)) throw notFound(repo);
  if (!(await ctx.storage.repositoryExists(repo)) && !(await ctx.source?.serves(repo) ?? false)) throw notFound(repo);
}

export async function madeFrom(ctx: Ctx, repo: string): Promise<MadeFrom> {
  return await ctx.source?.madeFrom?.(repo) ?? 'pushed';
}

/** Repositories the caller may read, after `last`, whose name contains `q`. */
export async function repositories(ctx: Ctx, req: Request, o: { n: number; last: string; q: string }): Promise<Page<{ name: string; madeFrom: MadeFrom }>> {
  const q = o.q.toLowerCase();
  if (o.n === 0) return { items: [] };
  const names: string[] = [];
  let after = o.last;
  let scanned = 0;
  const batchSize = Math.max(o.n + 1, 100);
  // Names built here but not yet built are not in storage's catalog: merged in, in order.
  const served = ctx.source?.names?.() ?? [];
  while (names.length <= o.n && scanned < SEARCH_SCAN) {
    const batch = await ctx.storage.catalog(after, batchSize);
    const end = batch.length < batchSize ? undefined : batch[batch.length - 1]!;
    const extra = served.filter((x) => x > after && (end === undefined || x <= end) && !batch.includes(x));
    for (const r of extra.length ? [...batch, ...extra].sort() : batch) {
      scanned++;
      after = r;
      if ((q === '' || r.includes(q)) && ctx.gate.visible(req, r)) {
        names.push(r);
        if (names.length > o.n) break;
      }
    }
    if (end === undefined) { after = ''; break; }
  }
  const more = names.length > o.n;
  if (more) names.length = o.n;
  const items = await Promise.all(names.map(async (name) => ({ name, madeFrom: await madeFrom(ctx, name) })));
  if (more) return { items, next: names[names.length - 1] };
  // A search that read its fill of names without filling the page goes on from there.
  return { items, next: after !== '' && scanned >= SEARCH_SCAN ? after : undefined };
}

async function readBlob(ctx: Ctx, digest: string, max: number): Promise<Buffer | undefined> {
  const stream = await ctx.storage.openBlob(digest);
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const c of stream) {
      n += (c as Buffer).length;
      if (n > max) return undefined;
      parts.push(c as Buffer);
    }
  } finally { stream.destroy(); }
  return Buffer.concat(parts);
}

// Documents validated when they were stored; read here field by field, each checked as used.
type Json = Record<string, any>;

async function manifestJson(ctx: Ctx, d: Descriptor): Promise<Json> {
  return JSON.parse((await ctx.storage.readManifest(d)).toString('utf8')) as Json;
}

async function configJson(ctx: Ctx, m: Json): Promise<Json | undefined> {
  const digest = m.config?.digest;
  if (typeof digest !== 'string') return undefined;
  try {
    const body = await readBlob(ctx, digest, CONFIG_BYTES);
    return body && (JSON.parse(body.toString('utf8')) as Json);
  } catch { return undefined; }
}

export interface TagSummary {
  tag: string;
  digest: string | null;
  mediaType?: string;
  /** Bytes a client downloads: config and layers (an index: its manifests' own bodies). */
  size?: number;
  created?: string | null;
  platform?: string | null;
}

/** One page of `repo`'s tags, each with its size and creation time. */
export async function tags(ctx: Ctx, req: Request, repo: string, o: { n: number; last: string }): Promise<Page<TagSummary>> {
  await readable(ctx, req, repo);
  let names = (await ctx.storage.listTags(repo, o.last, o.n + 1)) ?? [];
  const standing = ctx.source && await ctx.source.serves(repo) ? (ctx.source.standingTags(repo) ?? []).filter((t) => t > o.last && !names.includes(t)) : [];
  if (standing.length) names = [...names, ...standing].sort();
  let next: string | undefined;
  if (names.length > o.n) { names = names.slice(0, o.n); next = names[names.length - 1]; }
  const items = await Promise.all(names.map(async (tag): Promise<TagSummary> => {
    const d = await ctx.storage.resolveManifest(repo, { tag });
    if (!d) return { tag, digest: null };
    const m = await manifestJson(ctx, d);
    const out: TagSummary = { tag, digest: d.digest, mediaType: d.mediaType, size: sizeOf(m) };
    if (IMAGE_TYPES.has(d.mediaType)) {
      const c = await configJson(ctx, m);
      out.created = typeof c?.created === 'string' ? c.created : null;
      out.platform = c ? platformOf(c) : null;
    } else {
      out.platform = (m.manifests as Json[] | undefined)?.map((x) => (x.platform ? platformOf(x.platform) : '?')).join(', ') ?? null;
    }
    return out;
  }));
  return { items, next };
}

function sizeOf(m: Json): number {
  const list = (xs: unknown) => (Array.isArray(xs) ? xs.reduce((n: number, x: Json) => n + (Number(x?.size) || 0), 0) : 0);
  return (Number(m.config?.size) || 0) + list(m.layers) + list(m.manifests);
}

function platformOf(c: Json): string {
  return [c.os, c.architecture, c.variant].filter((x) => typeof x === 'string' && x).join('/');
}

async function resolve(ctx: Ctx, req: Request, repo: string, reference: string): Promise<Descriptor> {
  await readable(ctx, req, repo);
  const ref = checkReference(reference);
  const d = await ctx.storage.resolveManifest(repo, ref);
  if (!d) throw new RegistryError('MANIFEST_UNKNOWN', `manifest unknown: ${repo}:${reference}`, { name: repo, reference });
  return d;
}

export interface ImageInfo {
  name: string;
  reference: string;
  digest: string;
  mediaType: string;
  size: number;
  platform: string | null;
  created: string | null;
  config: { entrypoint: unknown; cmd: unknown; env: unknown; labels: unknown; workingDir: unknown; user: unknown; exposedPorts: unknown } | null;
  /** `uncompressed`: the NAR bytes of the layer's store paths, for an image built here. */
  layers: { digest: string; mediaType: string; size: number; uncompressed: number | null; paths: number | null }[];
  manifests?: { digest: string; mediaType: string; size: number; platform: string | null }[];
  /** Whether the closure of the image is recorded (built here). */
  closure: boolean;
}

/** An image (or index) of `repo` by tag or digest: config and layers, sizes. */
export async function image(ctx: Ctx, req: Request, repo: string, reference: string): Promise<ImageInfo> {
  const d = await resolve(ctx, req, repo, reference);
  const m = await manifestJson(ctx, d);
  const info: ImageInfo = {
    name: repo, reference, digest: d.digest, mediaType: d.mediaType, size: sizeOf(m), platform: null, created: null, config: null,
    layers: [], closure: false,
  };
  if (INDEX_TYPES.has(d.mediaType)) {
    info.manifests = ((m.manifests ?? []) as Json[]).slice(0, PAGE_MAX).map((x) => ({
      digest: String(x.digest), mediaType: String(x.mediaType), size: Number(x.size) || 0, platform: x.platform ? platformOf(x.platform) : null,
    }));
    return info;
  }
  const c = await configJson(ctx, m);
  if (c) {
    const k = (c.config ?? {}) as Json;
    info.platform = platformOf(c);
    info.created = typeof c.created === 'string' ? c.created : null;
    info.config = {
      entrypoint: k.Entrypoint ?? null, cmd: k.Cmd ?? null, env: k.Env ?? null, labels: k.Labels ?? null,
      workingDir: k.WorkingDir ?? null, user: k.User ?? null, exposedPorts: k.ExposedPorts ? Object.keys(k.ExposedPorts) : null,
    };
  }
  const closure = await closureDoc(ctx, repo, d);
  info.closure = closure !== undefined;
  info.layers = ((m.layers ?? []) as Json[]).map((l, i) => ({
    digest: String(l.digest), mediaType: String(l.mediaType), size: Number(l.size) || 0,
    uncompressed: closure?.layers[i]?.narSize ?? null, paths: closure?.layers[i]?.paths ?? null,
  }));
  return info;
}

export interface ClosureDoc {
  roots: number[];
  layers: { paths: number; narSize: number }[];
  paths: { path: string; narSize: number; layer: number; references?: number[] }[];
  referencesOmitted?: boolean;
}

/** Parsed closure documents by digest: a page of a big image is read without parsing it again. */
const docs = new LRUCache<string, ClosureDoc>({ maxSize: 64 * 1024 * 1024, sizeCalculation: (d) => 100 + d.paths.length * 200 });

/** The closure document recorded for the image `d` of `repo`, if any. */
async function closureDoc(ctx: Ctx, repo: string, d: Descriptor): Promise<ClosureDoc | undefined> {
  if (d.mediaType !== MediaTypes.ociManifest) return undefined;
  const rows = await ctx.storage.referrers(repo, d.digest, { after: '', limit: 1, artifactType: MediaTypes.nixregClosure });
  const row = rows[0];
  if (!row) return undefined;
  const blob = (await manifestJson(ctx, { digest: row.digest, mediaType: row.media_type, size: row.size })).layers?.[0]?.digest;
  if (typeof blob !== 'string') return undefined;
  const hit = docs.get(blob);
  if (hit) return hit;
  const body = await readBlob(ctx, blob, CLOSURE_BYTES);
  if (!body) return undefined;
  let doc: ClosureDoc;
  // Anyone who may push may also push a referrer of this type: its blob is checked, not trusted.
  try { doc = JSON.parse(body.toString('utf8')) as ClosureDoc; } catch { return undefined; }
  if (!validDoc(doc)) return undefined;
  docs.set(blob, doc);
  return doc;
}

/** The shape closure.ts writes, indices in range: a pushed look-alike cannot make the page throw or loop. */
function validDoc(d: ClosureDoc): boolean {
  if (typeof d !== 'object' || d === null || !Array.isArray(d.paths) || !Array.isArray(d.roots) || !Array.isArray(d.layers)) return false;
  const n = d.paths.length;
  const index = (i: unknown) => Number.isInteger(i) && (i as number) >= 0 && (i as number) < n;
  return d.roots.every(index) && d.layers.every((l) => typeof l?.narSize === 'number' && typeof l.paths === 'number')
    && d.paths.every((p) => typeof p?.path === 'string' && typeof p.narSize === 'number' && Number.isInteger(p.layer)
      && (p.references === undefined || (Array.isArray(p.references) && p.references.every(index))));
}

export interface ClosureView {
  digest: string;
  total: { paths: number; narSize: number };
  layers: { digest: string; size: number; paths: number; narSize: number }[];
  /** Biggest first. */
  paths: { path: string; narSize: number; layer: number }[];
  next?: string | undefined;
  why?: { path: string; narSize: number }[];
  referencesOmitted: boolean;
}

/** A built image's store paths, biggest first (a page), and the why-chain of `why`. */
export async function closure(ctx: Ctx, req: Request, repo: string, reference: string, o: { n: number; last: string; why?: string | undefined }): Promise<ClosureView> {
  const d = await resolve(ctx, req, repo, reference);
  const doc = await closureDoc(ctx, repo, d);
  if (!doc) throw new RegistryError('MANIFEST_UNKNOWN', `no closure is recorded for ${repo}:${reference}: only images built here have one`, { name: repo, reference });
  const m = await manifestJson(ctx, d);
  const order = doc.paths.map((_, i) => i).sort((a, b) => doc.paths[b]!.narSize - doc.paths[a]!.narSize || (doc.paths[a]!.path < doc.paths[b]!.path ? -1 : 1));
  let start = 0;
  if (o.last !== '') start = order.findIndex((i) => doc.paths[i]!.path === o.last) + 1;
  const slice = order.slice(start, start + o.n);
  const view: ClosureView = {
    digest: d.digest,
    total: { paths: doc.paths.length, narSize: doc.paths.reduce((n, p) => n + p.narSize, 0) },
    layers: ((m.layers ?? []) as Json[]).map((l, i) => ({ digest: String(l.digest), size: Number(l.size) || 0, paths: doc.layers[i]?.paths ?? 0, narSize: doc.layers[i]?.narSize ?? 0 })),
    paths: slice.map((i) => ({ path: doc.paths[i]!.path, narSize: doc.paths[i]!.narSize, layer: doc.paths[i]!.layer })),
    next: start + o.n < order.length && slice.length ? doc.paths[slice[slice.length - 1]!]!.path : undefined,
    referencesOmitted: doc.referencesOmitted === true,
  };
  if (o.why !== undefined) {
    const target = doc.paths.findIndex((p) => p.path === o.why);
    if (target < 0) throw new RegistryError('MANIFEST_UNKNOWN', `${o.why.slice(0, 300)} is not in the closure of ${repo}:${reference}`, { name: repo, reference });
    view.why = whyChain(doc, target).map((i) => ({ path: doc.paths[i]!.path, narSize: doc.paths[i]!.narSize }));
  }
  return view;
}

/**
 * The shortest chain of references from the top of the closure (its roots; failing
 * those, the paths nothing references) down to `target`, as `nix why-depends` shows it.
 */
export function whyChain(doc: ClosureDoc, target: number): number[] {
  const n = doc.paths.length;
  const referenced = new Uint8Array(n);
  for (const p of doc.paths) for (const r of p.references ?? []) referenced[r] = 1;
  const tops = [...doc.roots, ...doc.paths.map((_, i) => i).filter((i) => !referenced[i])];
  const parent = new Int32Array(n).fill(-2);
  const queue: number[] = [];
  for (const t of tops) if (parent[t] === -2) { parent[t] = -1; queue.push(t); }
  for (let h = 0; h < queue.length && parent[target] === -2; h++) {
    const i = queue[h]!;
    for (const r of doc.paths[i]!.references ?? []) if (parent[r] === -2) { parent[r] = i; queue.push(r); }
  }
  if (parent[target] === -2) return [target];
  const chain: number[] = [];
  for (let i = target; i !== -1; i = parent[i]!) chain.push(i);
  return chain.reverse();
}

/**
 * A store path's name without hash or version (Nix's parseDrvName: the version starts at
 * the first dash followed by a non-letter): what stays the same across versions.
 */
const nameOf = (path: string) => path.replace(/^.*?\/[0-9a-z]{32}-/, '').replace(/-[^-a-zA-Z].*$/, '');

export interface Comparison {
  from: { reference: string; digest: string };
  to: { reference: string; digest: string };
  /** Bytes a node holding `from` downloads for `to`: its config and layers not in `from`. */
  download: number;
  layers: { shared: number; added: number; removed: number };
  /** Null when either image has no recorded closure. */
  paths: null | {
    added: { path: string; narSize: number }[];
    removed: { path: string; narSize: number }[];
    changed: { from: string; to: string; narSizeFrom: number; narSizeTo: number }[];
    counts: { added: number; removed: number; changed: number; same: number };
  };
}

/** Two images of `repo` compared: layers shared, bytes to download, store paths added, removed, changed. */
export async function compare(ctx: Ctx, req: Request, repo: string, from: string, to: string): Promise<Comparison> {
  const [a, b] = [await resolve(ctx, req, repo, from), await resolve(ctx, req, repo, to)];
  const [ma, mb] = [await manifestJson(ctx, a), await manifestJson(ctx, b)];
  const blobs = (m: Json) => [m.config, ...(m.layers ?? [])].filter((x: Json | undefined) => typeof x?.digest === 'string') as Json[];
  const have = new Set(blobs(ma).map((x) => x.digest as string));
  const la = ((ma.layers ?? []) as Json[]).map((l) => l.digest as string);
  const lb = ((mb.layers ?? []) as Json[]).map((l) => l.digest as string);
  const out: Comparison = {
    from: { reference: from, digest: a.digest }, to: { reference: to, digest: b.digest },
    download: blobs(mb).filter((x) => !have.has(x.digest)).reduce((n, x) => n + (Number(x.size) || 0), 0),
    layers: { shared: lb.filter((l) => la.includes(l)).length, added: lb.filter((l) => !la.includes(l)).length, removed: la.filter((l) => !lb.includes(l)).length },
    paths: null,
  };
  const [ca, cb] = [await closureDoc(ctx, repo, a), await closureDoc(ctx, repo, b)];
  if (!ca || !cb) return out;
  const pa = new Map(ca.paths.map((p) => [p.path, p]));
  const pb = new Map(cb.paths.map((p) => [p.path, p]));
  const byName = (ps: Map<string, { path: string }>, other: Map<string, unknown>) => {
    const m = new Map<string, string[]>();
    for (const p of ps.keys()) if (!other.has(p)) { const k = nameOf(p); m.set(k, [...(m.get(k) ?? []), p]); }
    return m;
  };
  const gone = byName(pa, pb);
  const fresh = byName(pb, pa);
  const added: { path: string; narSize: number }[] = [];
  const removed: { path: string; narSize: number }[] = [];
  const changed: { from: string; to: string; narSizeFrom: number; narSizeTo: number }[] = [];
  for (const [name, ps] of fresh) {
    const old = gone.get(name);
    // One path of a name on each side is a new version of it; anything else is added and removed.
    if (old?.length === 1 && ps.length === 1) {
      changed.push({ from: old[0]!, to: ps[0]!, narSizeFrom: pa.get(old[0]!)!.narSize, narSizeTo: pb.get(ps[0]!)!.narSize });
      gone.delete(name);
    } else for (const p of ps) added.push({ path: p, narSize: pb.get(p)!.narSize });
  }
  for (const ps of gone.values()) for (const p of ps) removed.push({ path: p, narSize: pa.get(p)!.narSize });
  const big = <T>(xs: T[], size: (x: T) => number) => xs.sort((x, y) => size(y) - size(x)).slice(0, COMPARE_LIST);
  out.paths = {
    added: big(added, (x) => x.narSize), removed: big(removed, (x) => x.narSize), changed: big(changed, (x) => x.narSizeTo),
    counts: { added: added.length, removed: removed.length, changed: changed.length, same: [...pb.keys()].filter((p) => pa.has(p)).length },
  };
  return out;
}
