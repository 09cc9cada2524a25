// HTML for the web page: one tagged template, `html`, that escapes every value put into
// it unless the value is itself made by `html` (Raw). Names, tags, labels, env values and
// store paths are user data; a page is assembled only through this, so no value can
// become markup. With the Content-Security-Policy of `sendPage` (no inline script or
// style, nothing from elsewhere) even a mistake here could not run a script.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Response } from 'express';

export class Raw {
  constructor(readonly text: string) {}
  toString(): string { return this.text; }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

type Value = Raw | string | number | boolean | null | undefined | Value[];

function render(v: Value): string {
  if (v instanceof Raw) return v.text;
  if (Array.isArray(v)) return v.map(render).join('');
  if (v === null || v === undefined || v === false) return '';
  return escape(String(v));
}

/** `html\`<p>${name}</p>\``: every value escaped (attribute-safe: quotes too), Raw and arrays of Raw kept. */
export function html(strings: TemplateStringsArray, ...values: Value[]): Raw {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]!) + strings[i + 1]!;
  return new Raw(out);
}

/** A query string from pairs, each part encoded (then escaped as any value when put in html). */
export function href(path: string, params: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
  + "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/** Sends a whole page: the layout around `body`, with the headers that keep it in its lane. */
export function sendPage(res: Response, status: number, o: { title: string; user: string | undefined; auth: boolean; body: Raw }): void {
  const page = html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${o.title} · nixreg</title><link rel="icon" href="/static/icon.svg"><link rel="stylesheet" href="/static/app.css"><script src="/static/app.js" defer></script></head>
<body><header><span><a class="brand" href="/">nixreg</a> <a href="/builds">Builds</a>${
    !o.auth || o.user !== undefined ? html` <a href="/operator">Operator</a>` : ''}</span><span class="who">${o.auth
    ? (o.user !== undefined ? html`signed in as <b>${o.user}</b>` : html`<a href="/login">sign in</a>`) : ''}</span></header>
<main>${o.body}</main></body></html>`;
  res.status(status).set({
    'Content-Type': 'text/html; charset=utf-8', 'Content-Security-Policy': CSP, 'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer', 'X-Frame-Options': 'DENY', 'Cache-Control': 'no-store',
  }).end(page.text);
}
