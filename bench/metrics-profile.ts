// How much of a server's CPU its metrics code took, from a `node --cpu-prof` profile.
// A sample counts as metrics when it falls in src/registry/metrics.ts or prom-client,
// or in what they call directly (hrtime, addListener, getHeader…), but not in what their
// wrappers hand on to: the middleware's next(), the route label's guard, the wrapped write.
import { readFileSync } from 'node:fs';

interface Node { id: number; callFrame: { functionName: string; url: string }; hitCount: number; children?: number[] }
interface Profile { nodes: Node[]; startTime: number; endTime: number }

const isMetrics = (n: Node) => n.callFrame.url.endsWith('/src/registry/metrics.js') || n.callFrame.url.includes('/node_modules/prom-client/');
/** Callees of metrics code that are the request's own work, not the metrics'. */
const handedOn = (n: Node) => HANDED_ON.has(n.callFrame.functionName)
  || n.callFrame.url.includes('/dist/src/') || n.callFrame.url.includes('/node_modules/express/') || n.callFrame.url.includes('/node_modules/router/');
/** next() and a wrapped write or end are the request's; the module loader's work is start-up, once. */
const HANDED_ON = new Set(['next', 'write', 'end', 'require', 'Module._load', 'Module.require', 'Module._compile', 'wrapSafe', 'compileFunction']);

export function metricsShare(file: string): { share: number; metricsMs: number; busyMs: number; top: [string, number][] } {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const total = p.nodes.reduce((a, n) => a + n.hitCount, 0);
  const msPerHit = (p.endTime - p.startTime) / 1000 / Math.max(1, total);
  const idle = p.nodes.filter((n) => /^\((idle|program|garbage collector)\)$/.test(n.callFrame.functionName)).reduce((a, n) => a + n.hitCount, 0);
  const byFunction = new Map<string, number>();
  let hits = 0;
  const walk = (n: Node, counted: boolean) => {
    const mine = isMetrics(n);
    const inside = mine || (counted && !handedOn(n));
    if (inside) {
      hits += n.hitCount;
      const where = `${n.callFrame.url.split('/').slice(-1)[0]}:${(n.callFrame as { lineNumber?: number }).lineNumber ?? '?'}`;
      const name = mine ? `${n.callFrame.functionName || '(anonymous)'} ${where}` : `(called) ${n.callFrame.functionName}`;
      byFunction.set(name, (byFunction.get(name) ?? 0) + n.hitCount);
    }
    for (const c of n.children ?? []) walk(byId.get(c)!, inside);
  };
  walk(p.nodes[0]!, false);
  const top = [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([f, h]) => [f, h * msPerHit] as [string, number]);
  // Idle, the engine's own bookkeeping and GC belong to no function: the share is of JS work.
  return { share: hits / Math.max(1, total - idle), metricsMs: hits * msPerHit, busyMs: (total - idle) * msPerHit, top };
}
