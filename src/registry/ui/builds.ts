// The builds pages of the web page: the running and recent builds the caller may see,
// and one build with its stage, a progress bar and its log. The page is rendered as the
// build stands; the script (assets.ts) then follows it live through the existing
// endpoints (/nixreg/builds/<id>, and its log with ?follow=1) and starts builds with
// POST /nixreg/builds, which app.ts guards against other sites' pages (CSRF).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request } from 'express';
import type { JobView } from '../../build/image-source.js';
import { RegistryError } from '../errors.js';
import type { Ctx } from '../handlers/context.js';
import { href, html, type Raw } from './html.js';

/** What a build is doing, in words (as the 429 of a waiting pull says it). */
export function stageOf(b: JobView): string {
  const p = b.progress;
  if (b.status === 'done') return 'done';
  if (b.status === 'failed') return 'failed';
  switch (p.stage) {
    case 'queued': return 'waiting for a free build slot';
    case 'evaluating': return 'evaluating its expression';
    case 'building': return p.paths.total ? `building derivation ${Math.min(p.paths.done + 1, p.paths.total)} of ${p.paths.total}` : 'building with Nix';
    case 'assembling': return `assembling layer ${Math.min(p.layers.done + 1, p.layers.total)} of ${p.layers.total}`;
    default: return String(p.stage);
  }
}

/** Done of total for the bar: store paths while building, NAR bytes while assembling. */
function fraction(b: JobView): { value: number; max: number } {
  if (b.status === 'done') return { value: 1, max: 1 };
  const p = b.progress;
  if (p.stage === 'assembling' && p.bytes.total) return { value: p.bytes.done, max: p.bytes.total };
  if (p.stage === 'building' && p.paths.total) return { value: p.paths.done, max: p.paths.total };
  return { value: 0, max: 1 };
}

const visible = async (ctx: Ctx, req: Request) => (await ctx.source?.builds() ?? []).filter((b) => ctx.gate.visible(req, b.repository));

export async function buildsPage(ctx: Ctx, req: Request): Promise<{ title: string; body: Raw }> {
  if (!ctx.source) return { title: 'Builds', body: html`<h1>Builds</h1><p class="empty">Build on pull is off on this registry.</p>` };
  const builds = await visible(ctx, req);
  return {
    title: 'Builds',
    body: html`<nav><a href="/">Repositories</a> / builds</nav><h1>Builds</h1>
${builds.length ? html`<table class="list builds"><thead><tr><th>Build</th><th>Image</th><th>Status</th><th>Started</th><th class="num">Seconds</th></tr></thead><tbody>${builds.map((b) => html`
<tr><td><a href="${href('/build', { id: b.id })}"><code>${b.id.slice(0, 8)}</code></a></td><td><a href="${href('/repository', { name: b.repository })}">${b.repository}</a>:${b.tag}</td>
<td class="${`status ${b.status}`}">${stageOf(b)}</td><td>${b.created}</td><td class="num">${b.seconds}</td></tr>`)}</tbody></table>`
    : html`<p class="empty">No running or recent builds.</p>`}`,
  };
}

export async function buildPage(ctx: Ctx, req: Request): Promise<{ title: string; body: Raw }> {
  const id = typeof req.query.id === 'string' ? req.query.id.slice(0, 100) : '';
  const b = await ctx.source?.build(id);
  // As /nixreg/builds/<id> answers: a build of a repository one may not read is unknown.
  if (!b || !ctx.gate.visible(req, b.repository)) throw new RegistryError('NAME_UNKNOWN', `no build ${id} among the running and recent builds`, undefined, 404);
  const f = fraction(b);
  return {
    title: `Build ${b.repository}:${b.tag}`,
    body: html`<nav><a href="/">Repositories</a> / <a href="/builds">builds</a> / <code>${b.id.slice(0, 8)}</code></nav>
<h1>${b.repository}:${b.tag}</h1>
<div id="build" data-id="${b.id}" data-status="${b.status}">
<p><span class="stage">${stageOf(b)}</span> · <span class="seconds">${b.seconds}</span> s</p>
<progress max="${f.max}" value="${f.value}"></progress>
<p class="error">${b.error ?? ''}</p>
<p class="result">${b.hash ? html`Built: <a href="${href('/image', { name: b.repository, ref: b.hash })}">${b.repository}:${b.hash}</a>` : ''}</p>
</div>
<h2>Log</h2><p class="note"><a href="${b.log}">plain text</a></p><pre id="log" data-src="${b.log}"></pre>`,
  };
}

/** The button that builds `repo`'s latest now, for a repository built here (the script posts it). */
export async function buildButton(ctx: Ctx, repo: string): Promise<Raw> {
  if (!ctx.source || !await ctx.source.serves(repo)) return html``;
  return html`<p><button type="button" class="build" data-repository="${repo}">Build latest now</button> <span class="note build-note"></span></p>`;
}
