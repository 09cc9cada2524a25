// Reading a Prometheus text exposition (format 0.0.4) the way a scraper does: every
// sample with its name, labels and value, and the TYPE of each family.
import assert from 'node:assert/strict';

export interface Sample { name: string; labels: Record<string, string>; value: number }

export interface Exposition {
  samples: Sample[];
  types: Map<string, string>;
  /** The value of the one sample of `name` whose labels include `labels`; undefined if none. */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** Every sample of `name`. */
  all(name: string): Sample[];
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) { types.set(type[1]!, type[2]!); continue; }
    if (line.startsWith('#')) continue;
    const m = LINE.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  const all = (name: string) => samples.filter((s) => s.name === name);
  return {
    samples, types, all,
    value(name, labels = {}) {
      const hits = all(name).filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v));
      assert.ok(hits.length <= 1, `${name} ${JSON.stringify(labels)} matches ${hits.length} samples`);
      return hits[0]?.value;
    },
  };
}

/** GET /metrics; asserts a 200 in the Prometheus text format and parses it. */
export async function scrape(base: string, headers: Record<string, string> = {}): Promise<Exposition> {
  const r = await fetch(`${base}/metrics`, { headers });
  const text = await r.text();
  assert.equal(r.status, 200, text.slice(0, 300));
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parseExposition(text);
}

/**
 * Scrapes until `ready` holds (at most ~1 s): a request is counted when its response
 * ends on the server, which can come just after the client has read the last byte.
 */
export async function scrapeUntil(base: string, ready: (m: Exposition) => boolean, headers: Record<string, string> = {}): Promise<Exposition> {
  let m = await scrape(base, headers);
  for (let i = 0; i < 50 && !ready(m); i++) {
    await new Promise((r) => setTimeout(r, 20));
    m = await scrape(base, headers);
  }
  return m;
}
