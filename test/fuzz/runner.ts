// Runs the HTTP fuzzer against a registry: cases from gen.ts on a few concurrent
// workers until the request budget is spent, every answer checked (no 5xx, no request
// left unanswered), and every offending request kept with what is needed to replay it.
import { createHash } from 'node:crypto';
import { Client, type Answer, type Req } from './client.js';
import { makeCase } from './gen.js';
import { Rng } from './prng.js';

/** What the cases learn from answers and share: live upload sessions, build ids. */
export class World {
  readonly uploads: { repo: string; location: string }[] = [];
  readonly builds: string[] = [];

  learn(req: Req, a: Answer): void {
    const loc = a.headers?.location;
    if (typeof loc === 'string') {
      const m = /^\/v2\/(.+)\/blobs\/uploads\/[^/]+$/.exec(loc);
      if (m) {
        this.uploads.push({ repo: m[1]!, location: loc });
        if (this.uploads.length > 64) this.uploads.splice(0, this.uploads.length - 64);
      }
    }
    if (req.path.startsWith('/nixreg/builds') && a.statuses[0] === 200 && a.body) {
      try {
        for (const b of (JSON.parse(a.body.toString()) as { builds?: { id: string }[] }).builds ?? []) {
          if (!this.builds.includes(b.id)) this.builds.push(b.id);
        }
      } catch { /* a log, not the list */ }
    }
  }
}

export interface Ctx {
  rng: Rng;
  world: World;
  send(req: Req): Promise<Answer>;
}

export interface Failure {
  index: number;
  step: number;
  label: string;
  request: string;
  answer: string;
}

export interface FuzzOptions {
  url: string;
  seed: string;
  requests: number;
  concurrency: number;
  /** Run only these case indices, one after another (to replay a failure). */
  only?: number[] | undefined;
  timeoutMs?: number;
  /** Requests on their way, kept up to date (the RSS watch names them when memory jumps). */
  inFlight?: Set<Req> | undefined;
  /** Called after every request (the bench measures throughput with it). */
  onAnswer?: ((a: Answer, req: Req) => void) | undefined;
}

export interface FuzzResult {
  requests: number;
  cases: number;
  ms: number;
  statuses: Record<string, number>;
  byLabel: Record<string, number>;
  failures: Failure[];
}

/** Kept in full; past this (a server that died answers nothing) only the statuses count. */
const MAX_FAILURES = 2000;

export async function runFuzz(o: FuzzOptions): Promise<FuzzResult> {
  const client = new Client(o.url, o.concurrency * 3, o.timeoutMs);
  const world = new World();
  const statuses: Record<string, number> = {};
  const byLabel: Record<string, number> = {};
  const failures: Failure[] = [];
  let sent = 0;
  let next = 0;
  let cases = 0;
  const t0 = Date.now();

  const runCase = async (index: number) => {
    const rng = new Rng(`${o.seed}/${index}`);
    const c = makeCase(rng);
    cases++;
    byLabel[c.label] = (byLabel[c.label] ?? 0) + 1;
    let step = 0;
    const ctx: Ctx = {
      rng,
      world,
      send: async (req) => {
        const s = step++;
        o.inFlight?.add(req);
        const a = await client.send(req).finally(() => o.inFlight?.delete(req));
        sent++;
        for (const st of a.statuses) statuses[st] = (statuses[st] ?? 0) + 1;
        if (a.error) statuses[a.statuses.length ? 'cut short' : 'no answer'] = (statuses[a.statuses.length ? 'cut short' : 'no answer'] ?? 0) + 1;
        if ((a.statuses.some((st) => st >= 500) || a.error) && failures.length < MAX_FAILURES) {
          failures.push({ index, step: s, label: c.label, request: describe(req), answer: describeAnswer(a) });
        }
        world.learn(req, a);
        o.onAnswer?.(a, req);
        return a;
      },
    };
    try {
      await c.run(ctx);
    } catch (e) {
      failures.push({ index, step, label: c.label, request: '(the case itself threw)', answer: String((e as Error).stack ?? e) });
    }
  };

  try {
    if (o.only) {
      for (const i of o.only) await runCase(i);
    } else {
      await Promise.all(Array.from({ length: o.concurrency }, async () => {
        while (sent < o.requests) await runCase(next++);
      }));
    }
  } finally {
    client.close();
  }
  return { requests: sent, cases, ms: Date.now() - t0, statuses, byLabel, failures };
}

const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n)}…(${s.length} chars)` : s);

function bodySummary(b: Buffer | undefined): string {
  if (!b) return 'none';
  const sha = createHash('sha256').update(b).digest('hex').slice(0, 16);
  return `${b.length} bytes, sha256 ${sha}…, starts ${JSON.stringify(clip(b.subarray(0, 160).toString('latin1'), 160))}`;
}

/** A request as a failure report shows it: enough to send it again by hand. */
export function describe(r: Req): string {
  if (r.raw) return `raw bytes on a new connection (${r.raw.length}): ${JSON.stringify(clip(r.raw.subarray(0, 600).toString('latin1'), 600))}`;
  const headers = Object.entries(r.headers ?? {}).map(([k, v]) => `${k}: ${clip(JSON.stringify(v), 200)}`).join('; ');
  return `${r.method} ${JSON.stringify(clip(r.path, 700))} headers {${headers}} body ${bodySummary(r.body)}${r.chunked ? ` chunked by ${r.chunked}` : ''}`;
}

function describeAnswer(a: Answer): string {
  const body = a.body?.length ? ` body ${JSON.stringify(clip(a.body.toString('utf8'), 300))}` : '';
  return `statuses [${a.statuses.join(', ')}]${a.error ? ` error ${a.error}` : ''}${body} after ${a.ms.toFixed(0)} ms`;
}

/** A failure's kind: its case kind, method, route shape and outcome, without ids and digests. */
function signature(f: Failure): string {
  const shape = f.request
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, '<id>')
    .replace(/sha(256|512):[0-9a-f]{64,128}/g, '<digest>')
    .replace(/"\/v2\/.+\/(blobs\/uploads|blobs|manifests|tags|referrers)\//, '"/v2/<name>/$1/')
    .replace(/\?.*?" headers/, '" headers')
    .replace(/ headers \{.*$/, '');
  const outcome = f.answer.replace(/ body .*$/, '').replace(/ after \d+ ms$/, '').replace(/\d+ ms/g, 'N ms');
  return `${f.label}: ${shape.slice(0, 160)} → ${outcome.slice(0, 200)}`;
}

/** The failure report: each kind of failure, how often, and examples with the seed and case that replay them. */
export function report(seed: string, r: FuzzResult, examples = 2): string {
  const groups = new Map<string, Failure[]>();
  for (const f of r.failures) {
    const k = signature(f);
    groups.set(k, [...(groups.get(k) ?? []), f]);
  }
  const lines: string[] = [];
  for (const [k, fs] of [...groups].sort((a, b) => b[1].length - a[1].length)) {
    lines.push(`${fs.length} × ${k}`);
    for (const f of fs.slice(0, examples)) {
      lines.push(`    case ${f.index} step ${f.step}\n      request: ${f.request}\n      answer:  ${f.answer}`);
    }
  }
  const replay = [...new Set(r.failures.map((f) => f.index))].slice(0, 10).join(',');
  return `${r.failures.length} failing requests in ${groups.size} kinds (seed ${JSON.stringify(seed)}; replay cases alone with `
    + `NIXREG_FUZZ_SEED=${seed} NIXREG_FUZZ_CASES=${replay}):\n${lines.join('\n')}`;
}
