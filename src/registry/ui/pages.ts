// The web page (--ui): server-rendered pages over ui/data.ts, the same reads the JSON API
// makes, so a page shows exactly what the API would show its caller. Repositories, a
// repository's tags and pull commands, an image (config, layers, and for an image built
// here the picture of its closure, its biggest store paths and the why-chain of one),
// and two tags compared. Every page works without the script (ui/assets.ts), which only
// copies commands and fetches a why-chain in place.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import { RegistryError, registryErrorOf } from '../errors.js';
import { pageOf } from '../handlers/api.js';
import type { Ctx } from '../handlers/context.js';
import { checkName } from '../../oci/reference.js';
import { ICON, SCRIPT, STYLE } from './assets.js';
import { buildButton, buildPage as renderBuild, buildsPage as renderBuilds } from './builds.js';
import { operatorPage as renderOperator } from './operator.js';
import * as data from './data.js';
import { bytes, href, html, sendPage, type Raw } from './html.js';

type Page = (ctx: Ctx, req: Request) => Promise<{ title: string; body: Raw }>;

/** A page handler: data errors (a repository unknown or not readable, a bad tag) become an HTML page with their status. */
function page(render: Page) {
  return (ctx: Ctx) => async (req: Request, res: Response) => {
    const who = { user: ctx.gate.user(req), auth: ctx.gate.enabled };
    try {
      sendPage(res, 200, { ...who, ...(await render(ctx, req)) });
    } catch (e) {
      const r = registryErrorOf(e);
      if (!r || r.status >= 500) throw e;
      sendPage(res, r.status, { ...who, title: 'Not found', body: html`<h1>${r.status === 404 ? 'Not found' : 'Error'}</h1><p class="error">${r.message}</p><p><a href="/">All repositories</a></p>` });
    }
  };
}

function param(req: Request, key: string, max = 300): string {
  const v = req.query[key];
  if (typeof v !== 'string' || v.length > max) throw new RegistryError('UNSUPPORTED', `the page needs ${key}=…`, undefined, 400);
  return v;
}

const opt = (req: Request, key: string) => (typeof req.query[key] === 'string' ? req.query[key] : undefined);

export const homePage = page(async (ctx, req) => {
  const q = (opt(req, 'q') ?? '').slice(0, 255);
  const p = pageOf(req, data.REPOS_PAGE, data.PAGE_MAX);
  const r = await data.repositories(ctx, req, { ...p, q });
  return {
    title: 'Repositories',
    body: html`<h1>Repositories</h1>
<form class="search" method="get" action="/"><input type="search" name="q" value="${q}" placeholder="search names" aria-label="search"><button>Search</button></form>
${r.items.length ? html`<table class="list"><thead><tr><th>Repository</th><th>Made from</th></tr></thead><tbody>${r.items.map((x) => html`
<tr><td><a href="${href('/repository', { name: x.name })}">${x.name}</a></td><td><span class="kind">${x.madeFrom}</span></td></tr>`)}</tbody></table>`
    : html`<p class="empty">No repositories${q ? html` matching <b>${q}</b>` : ''}.</p>`}
${r.next !== undefined ? html`<p><a class="next" href="${href('/', { q, n: p.n, last: r.next })}">Next page →</a></p>` : ''}`,
  };
});

function pullCommands(req: Request, repo: string, tag: string): Raw {
  const host = (req.headers.host ?? 'localhost:5000').slice(0, 300);
  const ref = `${host}/${repo}:${tag}`;
  const rows = [['docker', `docker pull ${ref}`], ['podman', `podman pull ${ref}`], ['nerdctl', `nerdctl pull ${ref}`], ['Kubernetes', `image: ${ref}`]];
  return html`<table class="pull">${rows.map(([k, v]) => html`<tr><th>${k}</th><td><code>${v}</code></td><td><button type="button" class="copy" data-copy="${v}">Copy</button></td></tr>`)}</table>`;
}

export const repositoryPage = page(async (ctx, req) => {
  const repo = checkName(param(req, 'name'));
  const p = pageOf(req, data.TAGS_PAGE, data.PAGE_MAX);
  const r = await data.tags(ctx, req, repo, p);
  const names = r.items.map((t) => t.tag);
  const shown = names.includes('latest') ? 'latest' : names[0];
  const [a, b] = names.filter((t) => t !== 'latest');
  const [made, button] = await Promise.all([data.madeFrom(ctx, repo), buildButton(ctx, repo)]);
  return {
    title: repo,
    body: html`<nav><a href="/">Repositories</a> / ${repo}</nav><h1>${repo} <span class="kind">${made}</span></h1>
${button}
${shown !== undefined ? html`<h2>Pull</h2>${pullCommands(req, repo, shown)}` : ''}
<h2>Tags</h2>
${r.items.length ? html`<table class="list tags"><thead><tr><th>Tag</th><th>Digest</th><th>Size</th><th>Created</th><th>Platform</th></tr></thead><tbody>${r.items.map((t) => html`
<tr><td>${t.digest ? html`<a href="${href('/image', { name: repo, ref: t.tag })}">${t.tag}</a>` : html`${t.tag} <span class="note">not built yet</span>`}</td>
<td><code>${t.digest ? t.digest.slice(7, 19) : ''}</code></td><td class="num">${t.size !== undefined ? bytes(t.size) : ''}</td><td>${t.created ?? ''}</td><td>${t.platform ?? ''}</td></tr>`)}</tbody></table>`
    : html`<p class="empty">No tags.</p>`}
${r.next !== undefined ? html`<p><a class="next" href="${href('/repository', { name: repo, n: p.n, last: r.next })}">Next page →</a></p>` : ''}
<h2>Compare two tags</h2>
<form class="compare" method="get" action="/compare"><input type="hidden" name="name" value="${repo}">
<input name="from" value="${b ?? ''}" placeholder="older tag" aria-label="from"> → <input name="to" value="${a ?? ''}" placeholder="newer tag" aria-label="to"><button>Compare</button></form>`,
  };
});

function configRows(c: NonNullable<data.ImageInfo['config']>): Raw {
  const show = (v: unknown) => (v === null || v === undefined ? '' : Array.isArray(v) ? v.map(String).join(' ') : String(v));
  const labels = c.labels && typeof c.labels === 'object' ? Object.entries(c.labels as Record<string, unknown>) : [];
  const env = Array.isArray(c.env) ? c.env.map(String) : [];
  return html`<table class="config">
${c.entrypoint ? html`<tr><th>Entrypoint</th><td><code>${show(c.entrypoint)}</code></td></tr>` : ''}
${c.cmd ? html`<tr><th>Command</th><td><code>${show(c.cmd)}</code></td></tr>` : ''}
${c.workingDir ? html`<tr><th>Working dir</th><td><code>${show(c.workingDir)}</code></td></tr>` : ''}
${c.user ? html`<tr><th>User</th><td><code>${show(c.user)}</code></td></tr>` : ''}
${c.exposedPorts ? html`<tr><th>Ports</th><td><code>${show(c.exposedPorts)}</code></td></tr>` : ''}
${env.length ? html`<tr><th>Env</th><td>${env.map((e) => html`<code class="line">${e}</code>`)}</td></tr>` : ''}
${labels.length ? html`<tr><th>Labels</th><td>${labels.map(([k, v]) => html`<code class="line">${k}=${String(v)}</code>`)}</td></tr>` : ''}</table>`;
}

/** Stacked bars: a row per layer, a box per store path, width by NAR size on one scale for all rows. */
function picture(repo: string, ref: string, v: data.ClosureView): Raw {
  const W = 960;
  const ROW = 28;
  const rows = v.layers.map((l, i) => ({ i, l })).filter((x) => x.l.narSize > 0);
  const max = Math.max(1, ...rows.map((x) => x.l.narSize));
  const LABEL = 150;
  const scale = (W - LABEL) / max;
  const at = new Map(rows.map((x, k) => [x.i, k]));
  const x = new Map<number, number>();
  const boxes = v.paths.map((p, n) => {
    const row = at.get(p.layer);
    if (row === undefined) return html``;
    const x0 = x.get(p.layer) ?? LABEL;
    const w = Math.max(p.narSize * scale, 0.5);
    x.set(p.layer, x0 + w);
    return html`<a href="${href('/image', { name: repo, ref, why: p.path })}#why" data-why="${p.path}"><rect class="${n === 0 ? 'path biggest' : 'path'}" x="${x0.toFixed(1)}" y="${row * ROW + 2}" width="${w.toFixed(1)}" height="${ROW - 6}" data-path="${p.path}" data-size="${p.narSize}"><title>${p.path} (${bytes(p.narSize)})</title></rect></a>`;
  });
  const labels = rows.map((r, k) => html`<text x="0" y="${k * ROW + ROW / 2 + 4}">layer ${r.i + 1} · ${bytes(r.l.narSize)}</text>`);
  return html`<svg class="closure" viewBox="0 0 ${W} ${Math.max(rows.length, 1) * ROW}" width="${W}" height="${Math.max(rows.length, 1) * ROW}" role="img" aria-label="store paths by layer, sized by NAR size">${labels}${boxes}</svg>`;
}

function whyList(chain: { path: string; narSize: number }[]): Raw {
  return html`<ol class="why">${chain.map((c) => html`<li><code>${c.path}</code> <span class="num">${bytes(c.narSize)}</span></li>`)}</ol>`;
}

export const imagePage = page(async (ctx, req) => {
  const repo = checkName(param(req, 'name'));
  const ref = param(req, 'ref', 200);
  const why = opt(req, 'why');
  const img = await data.image(ctx, req, repo, ref);
  const v = img.closure ? await data.closure(ctx, req, repo, ref, { n: data.CLOSURE_PAGE_MAX, last: '', why: why?.slice(0, 4096) }) : undefined;
  const layers = html`<table class="list layers"><thead><tr><th>#</th><th>Digest</th><th>Compressed</th><th>Uncompressed</th><th>Store paths</th></tr></thead><tbody>${img.layers.map((l, i) => html`
<tr><td>${i + 1}</td><td><code>${l.digest.slice(7, 19)}</code></td><td class="num">${bytes(l.size)}</td><td class="num">${bytes(l.uncompressed)}</td><td class="num">${l.paths ?? ''}</td></tr>`)}</tbody></table>`;
  return {
    title: `${repo}:${ref}`,
    body: html`<nav><a href="/">Repositories</a> / <a href="${href('/repository', { name: repo })}">${repo}</a> / ${ref}</nav>
<h1>${repo}:${ref}</h1>
<table class="facts"><tr><th>Digest</th><td><code>${img.digest}</code></td></tr><tr><th>Media type</th><td>${img.mediaType}</td></tr>
<tr><th>Platform</th><td>${img.platform ?? ''}</td></tr><tr><th>Created</th><td>${img.created ?? ''}</td></tr><tr><th>Size</th><td>${bytes(img.size)}</td></tr></table>
${img.manifests ? html`<h2>Images</h2><ul>${img.manifests.map((m) => html`<li><a href="${href('/image', { name: repo, ref: m.digest })}">${m.platform ?? m.digest}</a> <code>${m.digest.slice(7, 19)}</code> ${bytes(m.size)}</li>`)}</ul>` : ''}
${img.config ? html`<h2>Config</h2>${configRows(img.config)}` : ''}
${img.layers.length ? html`<h2>Layers</h2>${layers}` : ''}
${v ? html`<h2>Where the bytes go</h2><p class="note">${v.total.paths} store paths, ${bytes(v.total.narSize)} (NAR). Click a path for why it is there.</p>
<div class="scroll">${picture(repo, ref, v)}</div>
<div id="why">${v.why ? html`<h2>Why <code>${v.why[v.why.length - 1]!.path}</code> is there</h2>${whyList(v.why)}` : ''}</div>
<h2>Biggest store paths</h2><table class="list biggest"><thead><tr><th>Store path</th><th>NAR size</th><th>Layer</th><th></th></tr></thead><tbody>${v.paths.slice(0, 25).map((p) => html`
<tr><td><code>${p.path}</code></td><td class="num">${bytes(p.narSize)}</td><td class="num">${p.layer + 1}</td><td><a href="${href('/image', { name: repo, ref, why: p.path })}#why" data-why="${p.path}">why?</a></td></tr>`)}</tbody></table>` : ''}`,
  };
});

export const comparePage = page(async (ctx, req) => {
  const repo = checkName(param(req, 'name'));
  const from = param(req, 'from', 200);
  const to = param(req, 'to', 200);
  const c = await data.compare(ctx, req, repo, from, to);
  const list = (xs: { path: string; narSize: number }[]) => html`<ul class="paths">${xs.map((x) => html`<li><code>${x.path}</code> <span class="num">${bytes(x.narSize)}</span></li>`)}</ul>`;
  return {
    title: `${repo}: ${from} → ${to}`,
    body: html`<nav><a href="/">Repositories</a> / <a href="${href('/repository', { name: repo })}">${repo}</a> / compare</nav>
<h1>${repo}: <a href="${href('/image', { name: repo, ref: from })}">${from}</a> → <a href="${href('/image', { name: repo, ref: to })}">${to}</a></h1>
<p class="download">A node that has <b>${from}</b> downloads <b id="download">${bytes(c.download)}</b> for <b>${to}</b>
(layers: ${c.layers.shared} shared, ${c.layers.added} new, ${c.layers.removed} gone).</p>
${c.paths ? html`<h2>Changed (${c.paths.counts.changed})</h2><ul class="paths changed">${c.paths.changed.map((x) => html`<li><code>${x.from}</code> → <code>${x.to}</code> <span class="num">${bytes(x.narSizeFrom)} → ${bytes(x.narSizeTo)}</span></li>`)}</ul>
<h2>Added (${c.paths.counts.added})</h2>${list(c.paths.added)}<h2>Removed (${c.paths.counts.removed})</h2>${list(c.paths.removed)}
<p class="note">${c.paths.counts.same} store paths are the same in both.</p>` : html`<p class="note">Store paths are compared only between images built here.</p>`}`,
  };
});

export const buildsPage = page(renderBuilds);
export const buildPage = page(renderBuild);
export const operatorPage = page(renderOperator);

/** Asks the browser for Basic credentials (the auth file's users), then goes home. */
export function login(ctx: Ctx) {
  return (req: Request, res: Response) => {
    if (!ctx.gate.enabled || ctx.gate.user(req) !== undefined) { res.redirect(303, '/'); return; }
    res.set('WWW-Authenticate', 'Basic realm="nixreg", charset="UTF-8"');
    sendPage(res, 401, { title: 'Sign in', user: undefined, auth: true, body: html`<h1>Sign in</h1><p>Sign in with a user of this registry.</p><p><a href="/">Back</a></p>` });
  };
}

const ASSETS: Record<string, { type: string; body: string }> = {
  'app.js': { type: 'text/javascript; charset=utf-8', body: SCRIPT },
  'app.css': { type: 'text/css; charset=utf-8', body: STYLE },
  'icon.svg': { type: 'image/svg+xml', body: ICON },
};

export function asset(_ctx: Ctx) {
  return (req: Request, res: Response) => {
    const a = ASSETS[String(req.params.file)]!;
    res.status(200).set({ 'Content-Type': a.type, 'X-Content-Type-Options': 'nosniff', 'Cache-Control': 'public, max-age=300' }).end(req.method === 'HEAD' ? undefined : a.body);
  };
}
