// nixreg's own endpoints beside the distribution API: the recent builds, a build's
// log, counters for operators, and garbage collection on demand. The builds exist only
// where build-on-pull is enabled.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { createReadStream } from 'node:fs';
import type { Request, Response } from 'express';
import type { ImageSource } from '../../build/image-source.js';
import { RegistryError } from '../errors.js';
import type { Ctx } from './context.js';

function sourceOf(ctx: Ctx, req: Request): ImageSource {
  if (!ctx.source) throw new RegistryError('NAME_UNKNOWN', `no such endpoint: ${req.path.slice(0, 300)}`, undefined, 404);
  return ctx.source;
}

export function listBuilds(ctx: Ctx) {
  return (req: Request, res: Response) => {
    res.json({ builds: sourceOf(ctx, req).builds().filter((b) => ctx.gate.visible(req, b.repo)) });
  };
}

export function buildLog(ctx: Ctx) {
  return (req: Request, res: Response) => {
    const id = String(req.params.id);
    const source = sourceOf(ctx, req);
    const build = source.builds().find((b) => b.id === id);
    // A build of a repository the caller may not read is one it cannot know of.
    const path = build && ctx.gate.visible(req, build.repo) ? source.buildLogPath(id) : undefined;
    if (!path) throw new RegistryError('NAME_UNKNOWN', `no build ${id.slice(0, 100)} among the recent builds`, undefined, 404);
    res.status(200).type('text/plain; charset=utf-8');
    const s = createReadStream(path);
    // A log not yet written (or pruned meanwhile) reads as empty rather than failing.
    s.on('error', () => { if (!res.headersSent) res.end(''); else res.destroy(); });
    s.pipe(res);
  };
}

/** Counters of the server (always) and of build-on-pull (where enabled). */
export function stats(ctx: Ctx) {
  return (_req: Request, res: Response) => {
    res.json({ ...ctx.source?.stats(), server: { ...ctx.counters(), ...ctx.storage.stats() } });
  };
}

/** Listed in a dry run's answer at most; the totals are always whole. */
const MAX_ITEMS = 10_000;

/** POST /nixreg/gc[?dry-run=1]: collects now, or joins a collection asked for and not yet started (Storage.gc). */
export function collect(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const flag = req.query['dry-run'];
    const dryRun = flag !== undefined && flag !== '0' && flag !== 'false';
    const report = await ctx.storage.gc({ dryRun });
    const items = report.items;
    const truncated = !!items && (items.manifests.length > MAX_ITEMS || items.blobs.length > MAX_ITEMS);
    res.status(200).json({
      ...report,
      ...(items ? { items: { manifests: items.manifests.slice(0, MAX_ITEMS), blobs: items.blobs.slice(0, MAX_ITEMS) }, truncated } : {}),
    });
  };
}
