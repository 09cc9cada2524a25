// The endpoints of whoever watches the registry: /healthz (the process answers),
// /readyz (it can do its work: readiness.ts) and /metrics (Prometheus: metrics.ts). Who
// may call each is the endpoint table's business (routes.ts), not theirs.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import { RegistryError } from '../errors.js';
import type { Ctx } from './context.js';

export function healthz(_ctx: Ctx) {
  return (_req: Request, res: Response) => {
    res.set('Cache-Control', 'no-store').status(200).json({ status: 'ok' });
  };
}

export function readyz(ctx: Ctx) {
  return async (_req: Request, res: Response) => {
    const report = await ctx.readiness.check();
    res.set('Cache-Control', 'no-store').status(report.status === 'ready' ? 200 : 503).json(report);
  };
}

export function metrics(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    if (!ctx.metrics) throw new RegistryError('NAME_UNKNOWN', `no such endpoint: ${req.path}: metrics are turned off (NIXREG_METRICS=off)`, undefined, 404);
    const { contentType, body } = await ctx.metrics.scrape();
    res.set({ 'Content-Type': contentType, 'Cache-Control': 'no-store' }).status(200).send(body);
  };
}
