// nixreg's own endpoints beside the distribution API: builds (start one ahead of pulls,
// see one, follow its log), counters for operators, and garbage collection on demand.
// The builds exist only where build-on-pull is enabled.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { once } from 'node:events';
import type { Request, Response } from 'express';
import type { ImageSource, JobView } from '../../build/image-source.js';
import { checkName, isTag } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import { withBody } from '../http.js';
import type { Ctx } from './context.js';

function sourceOf(ctx: Ctx, req: Request): ImageSource {
  if (!ctx.source) throw new RegistryError('NAME_UNKNOWN', `no such endpoint: ${req.path.slice(0, 300)}`, undefined, 404);
  return ctx.source;
}

/** A build the caller may see: a build of a repository it may not read is one it cannot know of. */
async function visibleBuild(ctx: Ctx, req: Request): Promise<{ source: ImageSource; build: JobView }> {
  const id = String(req.params.id);
  const source = sourceOf(ctx, req);
  const build = await source.build(id);
  if (!build || !ctx.gate.visible(req, build.repository)) {
    throw new RegistryError('NAME_UNKNOWN', `no build ${id.slice(0, 100)} among the running and recent builds`, undefined, 404);
  }
  return { source, build };
}

export function listBuilds(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    res.json({ builds: (await sourceOf(ctx, req).builds()).filter((b) => ctx.gate.visible(req, b.repository)) });
  };
}

export function getBuild(ctx: Ctx) {
  return async (req: Request, res: Response) => { res.json((await visibleBuild(ctx, req)).build); };
}

const BUILD_REQUEST_BYTES = 4096;

/** POST /nixreg/builds {"repository","tag"}: starts a build, or joins the one under way. */
export function startBuild(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const source = sourceOf(ctx, req);
    const { repository, tag } = await withBody(req, BUILD_REQUEST_BYTES, ctx.bodies.of(ctx.gate.client(req)), (body) => {
      let v: unknown;
      try { v = JSON.parse(body.toString('utf8')); } catch { v = undefined; }
      const o = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
      if (typeof o.repository !== 'string' || (o.tag !== undefined && typeof o.tag !== 'string')) {
        throw new RegistryError('UNSUPPORTED', 'the body must be JSON: {"repository": NAME, "tag": "latest" or a hash tag}', undefined, 400);
      }
      const t = o.tag ?? 'latest';
      if (!isTag(t)) throw new RegistryError('TAG_INVALID', `invalid tag ${JSON.stringify(t.slice(0, 200))}`);
      return { repository: checkName(o.repository), tag: t };
    });
    // Anyone who may pull the image may make it be built: a pull would build it too.
    ctx.gate.need(req, repository, 'read');
    if (!await source.serves(repository)) {
      throw new RegistryError('NAME_UNKNOWN', `${repository} is not built from an expression here: there is nothing to build`, { name: repository });
    }
    const build = await source.startBuild(repository, tag);
    res.status(202).set('Location', build.url).json(build);
  };
}

/** Lines a follower gets when the log has been quiet this long: where the build stands. */
const QUIET_MS = 20_000;

/**
 * GET /nixreg/builds/<id>/log[?follow=1]: the log as written so far, or (follow) as it
 * is written, ending when the build does. The log is this replica's file, or (a build
 * another replica runs) its copy in the index: read the same way, piece by piece.
 */
export function buildLog(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const { source, build } = await visibleBuild(ctx, req);
    const handle = await source.buildLog(build.id);
    if (!handle) throw new RegistryError('NAME_UNKNOWN', `no build ${build.id} among the running and recent builds`, undefined, 404);
    const flag = req.query.follow;
    const follow = flag !== undefined && flag !== '0' && flag !== 'false';
    res.status(200).type('text/plain; charset=utf-8').set('Cache-Control', 'no-store');
    let gone = false;
    res.on('close', () => { gone = true; });
    if (follow) res.flushHeaders();
    const reader = handle.reader();
    /** Writes what is there now; whether there was anything. */
    const drain = async (): Promise<boolean> => {
      let any = false;
      for (let b: Buffer; !gone && (b = await reader.read()).length > 0;) {
        any = true;
        // Respect a slow reader: the log is not held in memory for it.
        if (!res.write(b)) await once(res, 'drain').catch(() => {});
      }
      return any;
    };
    try {
      if (!follow) { await drain(); return; }
      let heard = Date.now();
      while (!gone) {
        // Read to the end of what is there; then wait for more, unless the build has ended
        // (checked before the read, so nothing written before the end is missed).
        const ended = handle.finished();
        if (await drain()) heard = Date.now();
        if (ended || gone) break;
        await handle.changed(Math.max(1, QUIET_MS - (Date.now() - heard)));
        if (await drain()) heard = Date.now();
        else if (!handle.finished() && Date.now() - heard >= QUIET_MS) { res.write(`[nixreg] ${handle.describe()}\n`); heard = Date.now(); }
      }
    } finally {
      await reader.close();
      res.end();
    }
  };
}

/** Counters of the server (always) and of build-on-pull (where enabled). */
export function stats(ctx: Ctx) {
  return async (_req: Request, res: Response) => {
    res.json({ ...ctx.source?.stats(), server: { ...ctx.counters(), ...await ctx.storage.stats() } });
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
