// end-8a/8b (tags), the catalog, and end-12a/12b (referrers).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
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
  return (req: Request, res: Response) => {
    const repo = repoOf(req);
    const { n, last } = parsePage(req.query);
    // Expression-backed repositories exist before their first build.
    const owned = ctx.source?.owns(repo) ?? false;
    if (!owned && !ctx.storage.repositoryExists(repo)) {
      throw new RegistryError('NAME_UNKNOWN', `repository ${repo} not known to registry`, { name: repo });
    }
    let tags = n === 0 ? [] : ctx.storage.listTags(repo, last ?? '', (n ?? MAX_PAGE) + 1) ?? [];
    const standing = n === 0 || !owned ? [] : (ctx.source?.standingTags?.(repo) ?? []).filter((t) => t > (last ?? '') && !tags.includes(t));
    if (standing.length) tags = [...tags, ...standing].sort();
    page(res, `/v2/${repo}/tags/list`, n, tags, 'tags', { name: repo });
  };
}

export function catalog(ctx: Ctx) {
  return (req: Request, res: Response) => {
    const { n, last } = parsePage(req.query);
    const repos = n === 0 ? [] : ctx.storage.catalog(last ?? '', (n ?? MAX_PAGE) + 1);
    page(res, '/v2/_catalog', n, repos, 'repositories', {});
  };
}

export function referrers(ctx: Ctx) {
  return (req: Request, res: Response) => {
    const repo = repoOf(req);
    const subject = checkDigest(String(req.params.digest));
    const filter = req.query.artifactType;
    if (filter !== undefined && typeof filter !== 'string') throw new RegistryError('MANIFEST_INVALID', 'artifactType given more than once');
    let rows = ctx.storage.referrers(repo, subject);
    if (filter !== undefined) {
      rows = rows.filter((r) => r.artifact_type === filter);
      res.set('OCI-Filters-Applied', 'artifactType');
    }
    const manifests = rows.map((r) => ({
      mediaType: r.media_type,
      digest: r.digest,
      size: r.size,
      ...(r.artifact_type ? { artifactType: r.artifact_type } : {}),
      ...(r.annotations ? { annotations: JSON.parse(r.annotations) as Record<string, string> } : {}),
    }));
    // A Buffer, not a string: express would append "; charset=utf-8" to a string's type,
    // and clients compare this Content-Type exactly.
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests }));
    res.status(200).set({ 'Content-Type': MediaTypes.ociIndex, 'Content-Length': String(body.length) }).end(body);
  };
}
