// The one layering algorithm: which store paths of a closure share an image layer.
//
// Why this shape. A registry that builds on pull serves many images made of overlapping
// closures, and clients cache layers by digest: a layer is worth something only if the
// SAME set of store paths recurs in other images and in later builds. Two forces decide
// what recurs:
//  - Size. A few big paths (glibc, a language runtime, a large application) carry most
//    of the bytes. Giving each of them a layer of its own means a rebuild or a sibling
//    image never re-uploads or re-downloads them, whatever else changed. (Nixery's
//    popularity weighting and nixpkgs' size-first auto-layer agree on this; a pure
//    popularity contest needs a global graph we do not have at pull time.)
//  - Dependency structure. A small path is pulled in BY something. Everything reachable
//    from exactly the same set of big paths is "the private dependencies of that set":
//    it changes when they change and appears wherever they appear, so bundling it with
//    its siblings costs nothing in reuse while saving layers. Paths no big path needs
//    (the roots, their wrappers, small top-level files) are what changes most between
//    builds, so they go together into one remainder layer just below the root-filesystem
//    layer, keeping a typical rebuild to two small layers.
// The layer budget is hard (overlayfs and Docker cap the depth; maxLayers counts the top
// layer too). We take as many big paths as possible while the grouping rule can still be
// applied exactly: for K big paths the layer count is K + (distinct dependent sets) +
// (remainder, if any), and we pick the largest K that fits. Output is sorted, so the
// same closure always yields the same layers, and each layer's key depends only on its
// own paths (see assemble.ts), so unchanged groups are reused byte for byte.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import type { StorePathInfo } from '../types.js';

export interface LayerGroup {
  /** Sorted store paths of this layer. */
  paths: string[];
  /** Sum of narSize: for logs and the bench. */
  narSize: number;
}

const byBytes = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Splits `closure` into at most `budget` (≥ 1) store-path layers, base layers first
 * (the paths most of the image depends on), the remainder last.
 */
export function groupStorePaths(closure: StorePathInfo[], budget: number): LayerGroup[] {
  if (!Number.isInteger(budget) || budget < 1) throw new RangeError(`layer budget must be a positive integer, not ${budget}`);
  // Deduplicate and fix an order: size first (descending), then name for ties.
  const info = new Map<string, StorePathInfo>();
  for (const p of closure) if (!info.has(p.path)) info.set(p.path, p);
  const ranked = [...info.values()].sort((a, b) => b.narSize - a.narSize || byBytes(a.path, b.path));
  const n = ranked.length;
  if (n === 0) return [];
  const rank = new Map(ranked.map((p, i) => [p.path, i]));
  const size = (paths: string[]) => paths.reduce((s, p) => s + info.get(p)!.narSize, 0);
  const group = (paths: string[]): LayerGroup => { const s = paths.sort(byBytes); return { paths: s, narSize: size(s) }; };

  if (budget === 1) return [group(ranked.map((p) => p.path))];
  if (n <= budget) {
    // Every path fits in a layer of its own: the finest grouping reuses best.
    return order(ranked.map((p) => [p.path]), ancestorsOf(ranked, rank, n), rank).map(group);
  }

  // anc[i]: ascending ranks of the paths (among the first budget-1 candidates) that
  // reach path i through references, itself excluded. Only ranks < budget can ever be
  // "big", so the lists stay short.
  const anc = ancestorsOf(ranked, rank, budget - 1);
  for (let k = budget - 1; k >= 0; k--) {
    const sets = new Map<string, string[]>();
    let remainder = false;
    for (let i = k; i < n; i++) {
      const key = prefixBelow(anc[i]!, k);
      if (key.length === 0) remainder = true;
      else sets.set(key.join(','), []);
    }
    if (k + sets.size + (remainder ? 1 : 0) > budget) continue;

    const groups: string[][] = ranked.slice(0, k).map((p) => [p.path]);
    const rest: string[] = [];
    for (let i = k; i < n; i++) {
      const key = prefixBelow(anc[i]!, k);
      if (key.length === 0) rest.push(ranked[i]!.path);
      else sets.get(key.join(','))!.push(ranked[i]!.path);
    }
    groups.push(...sets.values());
    const ordered = order(groups, anc, rank);
    if (rest.length) ordered.push(rest);
    return ordered.map(group);
  }
  /* c8 ignore next */ throw new Error('unreachable: k = 0 always fits');
}

function prefixBelow(sorted: number[], k: number): number[] {
  let j = 0;
  while (j < sorted.length && sorted[j]! < k) j++;
  return sorted.slice(0, j);
}

/** For every path, the ascending ranks < limit of the other paths that reach it. */
function ancestorsOf(ranked: StorePathInfo[], rank: Map<string, number>, limit: number): number[][] {
  const anc: number[][] = ranked.map(() => []);
  for (let a = 0; a < Math.min(limit, ranked.length); a++) {
    // Iterative DFS over references; ranks are pushed in ascending order of `a`.
    const seen = new Uint8Array(ranked.length);
    const stack = [a];
    seen[a] = 1;
    while (stack.length) {
      const i = stack.pop()!;
      if (i !== a) anc[i]!.push(a);
      for (const ref of ranked[i]!.references) {
        const j = rank.get(ref);
        if (j !== undefined && !seen[j]) { seen[j] = 1; stack.push(j); }
      }
    }
  }
  return anc;
}

/**
 * Base first: a group needed by more big paths sits lower, so images that share a base
 * also share the layer order below it (clients' layer caches key on the chain).
 */
function order(groups: string[][], anc: number[][], rank: Map<string, number>): string[][] {
  const depth = (g: string[]) => Math.max(...g.map((p) => anc[rank.get(p)!]!.length));
  const first = (g: string[]) => [...g].sort(byBytes)[0]!;
  return groups
    .map((g) => ({ g, d: depth(g), f: first(g) }))
    .sort((x, y) => y.d - x.d || byBytes(x.f, y.f))
    .map((x) => x.g);
}
