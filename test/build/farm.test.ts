// The root filesystem farm on synthetic trees: which links it follows (only into the
// closure), which it copies, and the bounds that make it end. The attacks themselves,
// built with real Nix, are in containment.test.ts.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BuildFailed } from '../../src/build/errors.js';
import { MAX_FARM_DEPTH, rootfsEntries } from '../../src/build/assembly/farm.js';
import type { TarEntry } from '../../src/build/assembly/tar.js';
import { tempDir } from '../helpers/registry.js';

const dirs: string[] = [];
const temp = () => { const d = tempDir('nixreg-farm-'); dirs.push(d); return d; };
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

/** `root/name` with `files` (relative path → content, or `-> target` for a symlink). */
function tree(root: string, name: string, files: Record<string, string>): string {
  const top = join(root, name);
  mkdirSync(top, { recursive: true });
  for (const [rel, v] of Object.entries(files)) {
    const p = join(top, rel);
    mkdirSync(join(p, '..'), { recursive: true });
    if (v.startsWith('-> ')) symlinkSync(v.slice(3), p);
    else if (v === '/') mkdirSync(p, { recursive: true });
    else writeFileSync(p, v);
  }
  return top;
}

const byName = (entries: TarEntry[]) => new Map(entries.map((e) => [e.name, e]));
const target = (e: TarEntry | undefined) => (e?.type === 'symlink' ? e.target : e?.type);

test('links out of the closure are copied or linked, never listed; links into it are merged', async () => {
  const t = temp();
  tree(t, 'outside', { 'secret': 'host', 'sub/secret2': 'host' });
  const lib = tree(t, 'lib', { 'share/doc/lib-doc': 'lib' });
  const files = (who: string) => ({
    [`share/doc/${who}-doc`]: who,
    'up': '-> ../../../../../../../etc', // relative, climbs out of the store
    'rel-out': '-> ../outside',
    'abs-out': `-> ${join(t, 'outside')}`,
    'share/sub': `-> ${join(t, 'outside', 'sub')}`,
    'via-lib': '-> ../lib/share',
    'loop1': '-> loop2',
    'loop2': '-> loop1',
    'self': '-> .',
  });
  const c1 = tree(t, 'c1', files('c1'));
  const c2 = tree(t, 'c2', files('c2'));
  const entries = byName(await rootfsEntries([c1, c2], { closure: [c1, c2, lib] }));
  const names = [...entries.keys()];
  assert.deepEqual(names.filter((n) => n.includes('secret')), [], 'nothing of the directory outside');
  assert.deepEqual(names.filter((n) => /^(up|rel-out|abs-out|loop1|loop2|self)\//.test(n) || n.startsWith('share/sub/')), []);
  assert.equal(target(entries.get('abs-out')), join(t, 'outside'), 'an absolute link out is copied as it is');
  assert.equal(target(entries.get('share/sub')), join(t, 'outside', 'sub'));
  assert.equal(target(entries.get('rel-out')), join(c1, 'rel-out'), 'a relative link out links to the content, which holds it');
  assert.equal(target(entries.get('up')), join(c1, 'up'));
  assert.equal(target(entries.get('loop1')), join(c1, 'loop1'));
  assert.equal(target(entries.get('self')), join(c1, 'self'), 'a directory being listed is not unfolded into itself');
  // A link into another store path of the closure is followed and merged, like buildEnv.
  assert.equal(entries.get('via-lib')?.type, 'directory');
  assert.equal(target(entries.get('via-lib/doc')), join(c1, 'via-lib/doc'));
  assert.equal(target(entries.get('share/doc/c1-doc')), join(c1, 'share/doc/c1-doc'));
  assert.equal(target(entries.get('share/doc/c2-doc')), join(c2, 'share/doc/c2-doc'));

  // The same contents with lib left out of the closure: via-lib is no longer followed.
  const without = byName(await rootfsEntries([c1, c2], { closure: [c1, c2] }));
  assert.equal(target(without.get('via-lib')), join(c1, 'via-lib'));
  assert.ok(![...without.keys()].some((n) => n.startsWith('via-lib/')));
});

test('a content that is a link out of the closure adds nothing', async () => {
  const t = temp();
  tree(t, 'outside', { 'secret': 'host' });
  const c = join(t, 'c');
  symlinkSync(join(t, 'outside'), c);
  assert.deepEqual((await rootfsEntries([c])).map((e) => e.name), ['tmp']);
});

test('merged directories nested deeper than the bound fail the build with a clear error', async () => {
  const t = temp();
  const deep = Array.from({ length: MAX_FARM_DEPTH + 2 }, () => 'a').join('/');
  const c1 = tree(t, 'c1', { [`${deep}/one`]: '1' });
  const c2 = tree(t, 'c2', { [`${deep}/two`]: '2' });
  await assert.rejects(rootfsEntries([c1, c2]), (e: Error) => {
    assert.ok(e instanceof BuildFailed);
    assert.match(e.message, new RegExp(`deeper than ${MAX_FARM_DEPTH} levels`));
    return true;
  });
  // A little shallower, it is merged as usual.
  const ok = tree(t, 'ok1', { [`${deep.slice(8)}/one`]: '1' });
  const ok2 = tree(t, 'ok2', { [`${deep.slice(8)}/two`]: '2' });
  const entries = byName(await rootfsEntries([ok, ok2]));
  assert.equal(target(entries.get(`${deep.slice(8)}/two`)), join(ok2, deep.slice(8), 'two'));
});

test('an aborted signal stops the walk', async () => {
  const t = temp();
  const c = tree(t, 'c', { 'bin/x': 'x' });
  await assert.rejects(rootfsEntries([c, c], { signal: AbortSignal.abort() }), { name: 'AbortError' });
});
