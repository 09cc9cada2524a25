// The layering algorithm: budgets, determinism and the sharing rule.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { groupStorePaths } from '../../src/build/assembly/layers.js';
import type { StorePathInfo } from '../../src/build/types.js';

const P = (name: string) => `/nix/store/${name.padEnd(32, '0').slice(0, 32)}-${name}`;
const node = (name: string, narSize: number, refs: string[] = []): StorePathInfo =>
  ({ path: P(name), narSize, references: [P(name), ...refs.map(P)] });

/** root → app → {libA, libB} → libc; libA, libB also need small helpers. */
function closure(): StorePathInfo[] {
  return [
    node('root', 10, ['app', 'cfg']),
    node('cfg', 5),
    node('app', 5000, ['libA', 'libB', 'appdata']),
    node('appdata', 30),
    node('libA', 4000, ['libc', 'helperA', 'shared']),
    node('libB', 3000, ['libc', 'helperB', 'shared']),
    node('helperA', 20),
    node('helperB', 21),
    node('shared', 22, ['libc']),
    node('libc', 9000),
  ];
}

const all = (groups: { paths: string[] }[]) => groups.flatMap((g) => g.paths).sort();

test('every path is in exactly one layer, within the budget, for every budget', () => {
  const c = closure();
  for (let budget = 1; budget <= 14; budget++) {
    const g = groupStorePaths(c, budget);
    assert.ok(g.length <= budget, `budget ${budget}: ${g.length} layers`);
    assert.ok(g.length >= 1);
    assert.deepEqual(all(g), c.map((p) => p.path).sort(), `budget ${budget}`);
    for (const l of g) assert.deepEqual(l.paths, [...l.paths].sort(), 'paths sorted in a layer');
  }
});

test('budget 1: one layer with everything; budget 2: the biggest path alone plus the rest', () => {
  const c = closure();
  assert.equal(groupStorePaths(c, 1).length, 1);
  const two = groupStorePaths(c, 2);
  assert.equal(two.length, 2);
  assert.deepEqual(two[0]!.paths, [P('libc')]);
  assert.equal(two[1]!.paths.length, c.length - 1);
  assert.throws(() => groupStorePaths(c, 0), RangeError);
  assert.deepEqual(groupStorePaths([], 5), []);
});

test('a generous budget gives every path its own layer, base first', () => {
  const g = groupStorePaths(closure(), 100);
  assert.equal(g.length, 10);
  for (const l of g) assert.equal(l.paths.length, 1);
  assert.deepEqual(g[0]!.paths, [P('libc')], 'the most depended-on path is at the bottom');
});

test('sharing rule: small paths group by the set of big paths that need them; the rest is one remainder on top', () => {
  // Budget 6: big = libc, app, libA, libB (4) + {app,libA}:helperA, {app,libB}:helperB,
  // {app,libA,libB}:shared, {app}:appdata → too many; the algorithm must choose K so
  // the rule holds exactly.
  for (const budget of [4, 5, 6, 7, 8, 9]) {
    const c = closure();
    const g = groupStorePaths(c, budget);
    const info = new Map(c.map((p) => [p.path, p]));
    const singles = new Set(g.filter((l) => l.paths.length === 1).map((l) => l.paths[0]!));
    // Recompute for each path the set of "big" (own-layer, non-remainder) paths reaching it.
    const remainder = g[g.length - 1]!;
    const big = [...singles].filter((p) => !(remainder.paths.length === 1 && remainder.paths[0] === p));
    const reach = (from: string, seen = new Set<string>()): Set<string> => {
      for (const r of info.get(from)!.references) if (!seen.has(r)) { seen.add(r); reach(r, seen); }
      return seen;
    };
    const setOf = (p: string) => big.filter((b) => b !== p && reach(b).has(p)).sort().join(',');
    for (const l of g) {
      if (l.paths.length === 1 && big.includes(l.paths[0]!)) continue;
      const keys = new Set(l.paths.map(setOf));
      assert.equal(keys.size, 1, `budget ${budget}: layer ${l.paths.join(' ')} mixes dependent sets ${[...keys].join(' | ')}`);
    }
    // Big paths are the largest ones.
    const sizes = c.map((p) => p.narSize).sort((a, b) => b - a);
    const bigSizes = big.map((p) => info.get(p)!.narSize).sort((a, b) => b - a);
    assert.deepEqual(bigSizes, sizes.slice(0, bigSizes.length), `budget ${budget}: big paths are the largest`);
    // Paths that no big path needs (here root and cfg) are together, in the last layer.
    if (!big.includes(P('root'))) assert.ok(remainder.paths.includes(P('root')) && remainder.paths.includes(P('cfg')));
  }
  // Budget 8: isolating more than libc, app and libA would need more than 8 layers
  // (every small path would have its own dependent set), so K = 3: libB, appdata and
  // helperB are needed by {app} only, shared and helperA by {app, libA}.
  const g8 = groupStorePaths(closure(), 8);
  const layerOf = (n: string) => g8.findIndex((l) => l.paths.includes(P(n)));
  assert.equal(g8.length, 6);
  for (const n of ['libc', 'app', 'libA']) assert.equal(g8[layerOf(n)]!.paths.length, 1, n);
  assert.deepEqual(g8[layerOf('libB')]!.paths, [P('appdata'), P('helperB'), P('libB')].sort());
  assert.deepEqual(g8[layerOf('shared')]!.paths, [P('helperA'), P('shared')].sort());
  assert.deepEqual(g8[g8.length - 1]!.paths, [P('cfg'), P('root')].sort());
  assert.equal(layerOf('libc'), 0, 'the base is at the bottom');
});

test('deterministic: input order and duplicates do not matter', () => {
  const c = closure();
  const shuffled = [...c].reverse().concat(c.slice(0, 3));
  for (const budget of [1, 2, 3, 5, 8, 100]) {
    assert.deepEqual(groupStorePaths(shuffled, budget), groupStorePaths(c, budget));
  }
});

test('changing a small top-level path changes only the remainder layer', () => {
  const a = closure();
  const b = closure().map((p) => p.path === P('root') ? node('root2', 11, ['app', 'cfg']) : p);
  for (const budget of [3, 5, 8]) {
    const ga = groupStorePaths(a, budget).map((l) => l.paths.join(' '));
    const gb = groupStorePaths(b, budget).map((l) => l.paths.join(' '));
    const same = ga.filter((l) => gb.includes(l));
    assert.equal(same.length, ga.length - 1, `budget ${budget}: only one layer differs`);
  }
});

test('a long reference chain of many paths stays within budget and is fast', () => {
  const n = 3000;
  const c: StorePathInfo[] = [];
  for (let i = 0; i < n; i++) c.push(node(`p${i}`, ((i * 7919) % 1000) * 1000 + i, i ? [`p${i - 1}`] : []));
  const t0 = Date.now();
  const g = groupStorePaths(c, 99);
  assert.ok(g.length <= 99 && g.length > 10, `${g.length} layers`);
  assert.equal(all(g).length, n);
  assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
});
