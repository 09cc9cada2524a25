// The operator page of the web page (admins only: routes.ts gives it the `admin` access of
// /nixreg/stats): storage used, the cache of built images, garbage collection so far, and
// every counter of /nixreg/stats, flattened into one table per group.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request } from 'express';
import type { Ctx } from '../handlers/context.js';
import { bytes, html, type Raw } from './html.js';

/** `{a: {b: 1}}` → `[['a.b', 1]]`, arrays shown whole. */
function flatten(o: unknown, prefix = ''): [string, unknown][] {
  if (o === undefined) return [];
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return [[prefix, o]];
  return Object.entries(o as Record<string, unknown>).flatMap(([k, v]) => flatten(v, prefix ? `${prefix}.${k}` : k));
}

function table(title: string, o: unknown): Raw {
  const rows = flatten(o);
  return html`<h2>${title}</h2><table class="facts counters">${rows.map(([k, v]) => html`<tr><th><code>${k}</code></th><td class="num">${
    typeof v === 'object' ? JSON.stringify(v) : String(v)}</td></tr>`)}</table>`;
}

export async function operatorPage(ctx: Ctx, _req: Request): Promise<{ title: string; body: Raw }> {
  const totals = await ctx.storage.index.totals();
  const cache = await ctx.storage.cacheUsage();
  const storage = await ctx.storage.stats();
  return {
    title: 'Operator',
    body: html`<nav><a href="/">Repositories</a> / operator</nav><h1>Operator</h1>
<table class="facts"><tr><th>Blobs stored</th><td>${totals.blobs} (${bytes(totals.bytes)})</td></tr>
<tr><th>Built images' blobs</th><td>${bytes(cache)} (what <code>--cache-max-bytes</code> bounds)</td></tr></table>
${table('Garbage collection', storage.gc)}
${table('Server', { ...ctx.counters(), ...storage, gc: undefined })}
${ctx.source ? table('Build on pull', ctx.source.stats()) : ''}`,
  };
}
