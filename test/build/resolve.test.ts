// Name → file resolution: subfolders, default.nix, and nothing outside the images dir.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { resolveImageFile } from '../../src/build/origins/resolve.js';
import { tempDir } from '../helpers/registry.js';

const top = tempDir('nixreg-resolve-');
const images = join(top, 'images');
after(() => rmSync(top, { recursive: true, force: true }));

function write(rel: string, text = '{ contents = [ ]; }\n'): string {
  const p = join(top, rel);
  mkdirSync(join(p, '..'), { recursive: true });
  writeFileSync(p, text);
  return p;
}

test('names map to <name>.nix, <name>/default.nix and subfolders', () => {
  const a = write('images/app.nix');
  const b = write('images/team/svc.nix');
  const c = write('images/tools/default.nix');
  const d = write('images/x/y/z/default.nix');
  assert.equal(resolveImageFile(images, 'app')?.path, a);
  assert.equal(resolveImageFile(images, 'team/svc')?.path, b);
  assert.equal(resolveImageFile(images, 'tools')?.path, c);
  assert.equal(resolveImageFile(images, 'x/y/z')?.path, d);
  assert.equal(resolveImageFile(images, 'team'), undefined, 'a folder without default.nix is no image');
  assert.equal(resolveImageFile(images, 'nothere'), undefined);
});

test('<name>.nix wins over <name>/default.nix', () => {
  const f = write('images/both.nix');
  write('images/both/default.nix');
  assert.equal(resolveImageFile(images, 'both')?.path, f);
});

test('traversal is refused: .., ., empty segments, absolute names', () => {
  write('secret.nix');
  write('images/sub/ok.nix');
  for (const name of ['../secret', 'sub/../../secret', './app', 'sub//ok', '/etc/passwd', 'sub/..', '..', 'APP', 'a b']) {
    assert.equal(resolveImageFile(images, name), undefined, name);
  }
});

test('symlinks out of the images dir are refused; symlinks inside it are followed', () => {
  const outside = write('outside.nix');
  write('outside-dir/default.nix');
  symlinkSync(outside, join(images, 'escape.nix'));
  symlinkSync(join(top, 'outside-dir'), join(images, 'escapedir'));
  assert.equal(resolveImageFile(images, 'escape'), undefined);
  assert.equal(resolveImageFile(images, 'escapedir'), undefined);
  const inside = write('images/real.nix');
  symlinkSync(inside, join(images, 'alias.nix'));
  assert.equal(resolveImageFile(images, 'alias')?.path, inside);
  // A directory is not a file, even when named like one.
  mkdirSync(join(images, 'dir.nix'));
  assert.equal(resolveImageFile(images, 'dir'), undefined);
});

test('the key changes when the file changes', async () => {
  const f = write('images/k.nix', 'a');
  const k1 = resolveImageFile(images, 'k')!.key;
  assert.equal(resolveImageFile(images, 'k')!.key, k1);
  await new Promise((r) => setTimeout(r, 20));
  writeFileSync(f, 'b');
  assert.notEqual(resolveImageFile(images, 'k')!.key, k1, 'same size, new mtime');
});

test('directory symlinks that loop are not followed; one to an unrelated directory inside is', () => {
  const hello = write('images/loops/hello.nix');
  const svc = write('images/loops/team/svc.nix');
  const deep = write('images/loops/other/deep/default.nix');
  write('images/loops/default.nix');
  const dir = join(images, 'loops');
  symlinkSync(dir, join(dir, 'self'));
  symlinkSync('.', join(dir, 'dot'));
  symlinkSync(top, join(dir, 'up'));
  symlinkSync('..', join(dir, 'team', 'parent'));
  symlinkSync(join(dir, 'team'), join(dir, 'team', 'again'));
  // Two links that are harmless alone and a loop together: other/to-team → team, team/to-other → other.
  symlinkSync(join(dir, 'team'), join(dir, 'other', 'to-team'));
  symlinkSync(join(dir, 'other'), join(dir, 'team', 'to-other'));
  // An images directory that is itself reached through a symlink changes nothing.
  symlinkSync(dir, join(top, 'loops-link'));

  for (const images of [dir, join(top, 'loops-link')]) {
    assert.equal(resolveImageFile(images, 'hello')?.path, hello);
    assert.equal(resolveImageFile(images, 'team/svc')?.path, svc);
    assert.equal(resolveImageFile(images, 'team/svc')?.name, 'team/svc.nix', 'named relative to the images dir');
    for (const name of ['self/hello', 'self/self/hello', 'dot/hello', 'self/team/svc', 'self', 'dot',
      'up/images/loops/hello', 'team/parent/hello', 'team/parent/team/svc', 'team/again/svc',
      'other/to-team/to-other/deep', 'team/to-other/to-team/svc']) {
      assert.equal(resolveImageFile(images, name), undefined, name);
    }
    // Into an unrelated directory inside: followed, once each way.
    assert.equal(resolveImageFile(images, 'other/to-team/svc')?.path, svc);
    assert.equal(resolveImageFile(images, 'team/to-other/deep')?.path, deep);
    assert.equal(resolveImageFile(images, 'team/to-other/deep')?.name, 'other/deep/default.nix');
  }
});
