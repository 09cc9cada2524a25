// end-8a/8b (tags), the catalog, and end-12a/12b (referrers).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import type { ReferrerRow } from '../../blobs/index/index.js';
import { MediaTypes } from '../../oci/media-types.js';
import { checkDigest } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import { MAX_PAGE, parsePage } from '../grammar.js';
import { repoOf, type Ctx } from './context.js';

/** Answers one page of a sorted listing, with a Link header when more follow. */
function page(res: Response, path: string, n: number | undefined, items: string[], key: string, extra: object) {
  // Without n the page is MAX_PAGE long: a listing is never unbounded in memory, and
  // the Link header tells the client there is more.
  const size = n ?? MAX_PAGE;
  if (items.length > size) {
    items = items.slice(0, size);
    const last = items[items.length - 1]!;
    res.set('Link', `<${path}?n=${size}&last=${encodeURIComponent(last)}>; rel="next"`);
  }
  res.status(200).json({ ...extra, [key]: items });
}

export function listTags(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const { n, last } = parsePage(req.query);
    // Expression-backed repositories exist before their first build.
    const owned = ctx.source ? await ctx.source.serves(repo) : false;
    if (!owned && !await ctx.storage.repositoryExists(repo)) {
      throw new RegistryError('NAME_UNKNOWN', `repository ${repo} not known to registry`, { name: repo });
    }
    let tags = n === 0 ? [] : await ctx.storage.listTags(repo, last ?? '', (n ?? MAX_PAGE) + 1) ?? [];
    const standing = n === 0 || !owned ? [] : (ctx.source?.standingTags?.(repo) ?? []).filter((t) => t > (last ?? '') && !tags.includes(t));
    if (standing.length) tags = [...tags, ...standing].sort();
    page(res, `/v2/${repo}/tags/list`, n, tags, 'tags', { name: repo });
  };
}

/** Repository names a filtered catalog page reads at most before it ends the page early. */
const CATALOG_SCAN = 10 * MAX_PAGE;

export function catalog(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const { n, last } = parsePage(req.query);
    const want = (n ?? MAX_PAGE) + 1;
    if (!ctx.gate.enabled || n === 0) {
      page(res, '/v2/_catalog', n, n === 0 ? [] : await ctx.storage.catalog(last ?? '', want), 'repositories', {});
      return;
    }
    // Only what the caller may read. The scan is bounded: a caller who may read few of
    // many repositories gets a short page and a Link to go on from where it stopped.
    const repos: string[] = [];
    let after = last ?? '';
    let scanned = 0;
    while (repos.length < want && scanned < CATALOG_SCAN) {
      const batch = await ctx.storage.catalog(after, MAX_PAGE);
      for (const r of batch) if (repos.length < want && ctx.gate.visible(req, r)) repos.push(r);
      scanned += batch.length;
      if (batch.length < MAX_PAGE) break;
      after = batch[batch.length - 1]!;
    }
    if (repos.length < want && scanned >= CATALOG_SCAN) {
      res.set('Link', `</v2/_catalog?n=${n ?? MAX_PAGE}&last=${encodeURIComponent(after)}>; rel="next"`);
    }
    page(res, '/v2/_catalog', n, repos, 'repositories', {});
  };
}

/** A referrers page stops at whichever comes first (the Link header leads on). */
const REFERRERS_PAGE = 1000;
const REFERRERS_PAGE_BYTES = 4 * 1024 * 1024;

const CLOSE = Buffer.from('}');
const END = Buffer.from(']}');

/** What annotations add to a descriptor besides their own JSON. */
const ANNOTATIONS_KEY = ',"annotations":'.length;

/**
 * end-12a/12b. The page is decided from the index rows alone, by the byte size recorded
 * for each referrer's annotations, and only the annotations of the descriptors on it are
 * read: a page costs memory and event-loop time for what it holds (at most
 * REFERRERS_PAGE descriptors and REFERRERS_PAGE_BYTES, or one descriptor alone, at most
 * its manifest's size), however many referrers the subject has and however large.
 */
export function referrers(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const subject = checkDigest(String(req.params.digest));
    const filter = req.query.artifactType;
    if (filter !== undefined && typeof filter !== 'string') throw new RegistryError('MANIFEST_INVALID', 'artifactType given more than once');
    const { n, last } = parsePage(req.query);
    const limit = Math.min(n ?? REFERRERS_PAGE, REFERRERS_PAGE);
    if (filter !== undefined) res.set('OCI-Filters-Applied', 'artifactType');
    const rows = limit === 0 ? [] : await ctx.storage.referrers(repo, subject, { after: last ?? '', limit: limit + 1, artifactType: filter });
    const page: { row: ReferrerRow; head: string }[] = [];
    let bytes = 0;
    let next: string | undefined;
    for (const [i, row] of rows.entries()) {
      if (i === limit) { next = rows[i - 1]!.digest; break; }
      const head = descriptorHead(row);
      const size = Buffer.byteLength(head) + (row.annotations_bytes === null ? 0 : ANNOTATIONS_KEY + row.annotations_bytes);
      if (page.length > 0 && bytes + size > REFERRERS_PAGE_BYTES) { next = rows[i - 1]!.digest; break; }
      page.push({ row, head });
      bytes += size;
    }
    if (next !== undefined) {
      const q = new URLSearchParams({ n: String(limit), last: next, ...(filter !== undefined ? { artifactType: filter } : {}) });
      res.set('Link', `</v2/${repo}/referrers/${subject}?${q}>; rel="next"`);
    }
    // Buffers throughout: megabytes of annotations are copied once, not decoded and encoded.
    // (Not a string either way: express would append "; charset=utf-8" to a string's type,
    // and clients compare this Content-Type exactly.)
    const parts: Buffer[] = [Buffer.from(`{"schemaVersion":2,"mediaType":${JSON.stringify(MediaTypes.ociIndex)},"manifests":[`)];
    for (const [i, { row, head }] of page.entries()) {
      const annotations = row.annotations_bytes === null ? undefined : await ctx.storage.referrerAnnotations(repo, row.digest);
      const open = i > 0 ? ',' : '';
      // Spliced in as stored: JSON the index wrote.
      if (annotations === undefined) parts.push(Buffer.from(open + head));
      else parts.push(Buffer.from(`${open}${head.slice(0, -1)},"annotations":`), annotations, CLOSE);
    }
    parts.push(END);
    const body = Buffer.concat(parts);
    res.status(200).set({ 'Content-Type': MediaTypes.ociIndex, 'Content-Length': String(body.length) }).end(body);
  };
}

/** One descriptor of the index, without its annotations. */
function descriptorHead(r: ReferrerRow): string {
  return JSON.stringify({
    mediaType: r.media_type,
    digest: r.digest,
    size: r.size,
    ...(r.artifact_type ? { artifactType: r.artifact_type } : {}),
  });
}
