// The JSON API of the web page under /nixreg/api, for the page's script and for anyone's:
// repositories, tags, images, a built image's closure and why-chains, comparisons.
// Pages follow the OCI listings: `n` and `last`, a Link header and `next` when more follow.
// What a caller may see is decided in ui/data.ts, shared with the pages.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import { checkName } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import { parsePage } from '../grammar.js';
import * as data from '../ui/data.js';
import type { Ctx } from './context.js';

/** `n` (default `size`, at most `max`) and `last`. */
export function pageOf(req: Request, size: number, max: number): { n: number; last: string } {
  const { n, last } = parsePage(req.query);
  return { n: Math.min(n ?? size, max), last: last ?? '' };
}

function query(req: Request, key: string, max = 4096): string | undefined {
  const v = req.query[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length > max) throw new RegistryError('UNSUPPORTED', `${key} must be given once, at most ${max} characters`, undefined, 400);
  return v;
}

function send(req: Request, res: Response, body: object, next: string | undefined, n: number): void {
  if (next !== undefined) {
    const q = new URLSearchParams({ ...(req.query as Record<string, string>), n: String(n), last: next });
    res.set('Link', `<${req.path}?${q}>; rel="next"`);
  }
  res.set('Cache-Control', 'no-store').status(200).json({ ...body, ...(next !== undefined ? { next } : {}) });
}

const name = (req: Request) => checkName(String(req.params.name));

/** GET /nixreg/api/repositories[?q=&n=&last=] */
export function apiRepositories(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const page = pageOf(req, data.REPOS_PAGE, data.PAGE_MAX);
    const r = await data.repositories(ctx, req, { ...page, q: query(req, 'q', 255) ?? '' });
    send(req, res, { repositories: r.items }, r.next, page.n);
  };
}

/** GET /nixreg/api/repositories/<name>/tags[?n=&last=] */
export function apiTags(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = name(req);
    const page = pageOf(req, data.TAGS_PAGE, data.PAGE_MAX);
    const r = await data.tags(ctx, req, repo, page);
    send(req, res, { name: repo, madeFrom: await data.madeFrom(ctx, repo), tags: r.items }, r.next, page.n);
  };
}

/** GET /nixreg/api/repositories/<name>/images/<tag or digest> */
export function apiImage(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    send(req, res, await data.image(ctx, req, name(req), String(req.params.reference)), undefined, 0);
  };
}

/** GET /nixreg/api/repositories/<name>/images/<ref>/closure[?n=&last=&why=<store path>] */
export function apiClosure(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const page = pageOf(req, data.CLOSURE_PAGE, data.CLOSURE_PAGE_MAX);
    const v = await data.closure(ctx, req, name(req), String(req.params.reference), { ...page, why: query(req, 'why') });
    const { next, ...body } = v;
    send(req, res, body, next, page.n);
  };
}

/** GET /nixreg/api/repositories/<name>/compare?from=<ref>&to=<ref> */
export function apiCompare(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const from = query(req, 'from', 200);
    const to = query(req, 'to', 200);
    if (from === undefined || to === undefined) throw new RegistryError('UNSUPPORTED', 'compare needs from=<tag or digest>&to=<tag or digest>', undefined, 400);
    send(req, res, await data.compare(ctx, req, name(req), from, to), undefined, 0);
  };
}
