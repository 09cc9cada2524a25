// Test helpers for layer tests: odd source trees, and file-by-file tree comparison.
import assert from 'node:assert/strict';
import { chmodSync, linkSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const ODD_NAMES = [
  'with space.txt',
  'ünïcödé-ファイル.txt',
  'x'.repeat(150),
  'emoji-😀',
];

/** A tree with every kind of entry a store path can hold, and awkward names. */
export function makeOddTree(root: string, seed = 'a'): void {
  mkdirSync(join(root, 'bin'), { recursive: true });
  writeFileSync(join(root, 'bin/tool'), `#!/bin/sh\necho ${seed}\n`);
  chmodSync(join(root, 'bin/tool'), 0o555);
  writeFileSync(join(root, 'data.bin'), Buffer.alloc(300_000, seed.charCodeAt(0)));
  chmodSync(join(root, 'data.bin'), 0o444);
  linkSync(join(root, 'data.bin'), join(root, 'hardlink-to-data.bin'));
  mkdirSync(join(root, 'empty-dir'));
  const deep = join(root, 'd'.repeat(60), 'e'.repeat(60), 'f'.repeat(60));
  mkdirSync(deep, { recursive: true });
  writeFileSync(join(deep, 'g'.repeat(120)), 'deep and long\n');
  for (const n of ODD_NAMES) writeFileSync(join(root, n), `name ${n}\n`);
  mkdirSync(join(root, 'dir with space', 'ñ'), { recursive: true });
  writeFileSync(join(root, 'dir with space', 'ñ', 'file'), seed);
  symlinkSync('bin/tool', join(root, 'relative-link'));
  symlinkSync('/' + 'l'.repeat(140), join(root, 'long-dangling-link'));
  symlinkSync('ünïcödé-ファイル.txt', join(root, 'link-ü'));
  writeFileSync(join(root, 'empty-file'), '');
}

/**
 * Asserts that `actual` has exactly the entries of `expected` with the same type,
 * permission bits, content and symlink targets; and that files hard-linked together in
 * `expected` are hard-linked together in `actual`.
 */
export function assertSameTree(expected: string, actual: string, opts: { modes?: boolean } = {}): void {
  const walk = (rel: string) => {
    const e = lstatSync(join(expected, rel));
    const a = lstatSync(join(actual, rel));
    const where = rel || '.';
    assert.equal(a.isDirectory(), e.isDirectory(), `${where}: directory?`);
    assert.equal(a.isSymbolicLink(), e.isSymbolicLink(), `${where}: symlink?`);
    assert.equal(a.isFile(), e.isFile(), `${where}: file?`);
    if (!e.isSymbolicLink() && opts.modes !== false) {
      assert.equal((a.mode & 0o7777).toString(8), (e.mode & 0o7777).toString(8), `${where}: mode`);
    }
    if (e.isSymbolicLink()) assert.equal(readlinkSync(join(actual, rel)), readlinkSync(join(expected, rel)), `${where}: link target`);
    else if (e.isFile()) assert.ok(readFileSync(join(actual, rel)).equals(readFileSync(join(expected, rel))), `${where}: content`);
    else {
      const en = readdirSync(join(expected, rel)).sort();
      const an = readdirSync(join(actual, rel)).sort();
      assert.deepEqual(an, en, `${where}: entries`);
      for (const n of en) walk(rel ? join(rel, n) : n);
    }
  };
  walk('');
  // Hard links: group by inode on both sides.
  const groups = (root: string) => {
    const m = new Map<string, string[]>();
    const go = (rel: string) => {
      const s = lstatSync(join(root, rel));
      if (s.isDirectory()) for (const n of readdirSync(join(root, rel))) go(rel ? join(rel, n) : n);
      else if (s.isFile() && s.nlink > 1) {
        const k = `${s.dev}:${s.ino}`;
        m.set(k, [...(m.get(k) ?? []), rel]);
      }
    };
    go('');
    return [...m.values()].map((g) => g.sort().join('|')).filter((g) => g.includes('|')).sort();
  };
  assert.deepEqual(groups(actual), groups(expected), 'hard-link groups');
}
