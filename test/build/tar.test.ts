// Layer tars, checked by unpacking them with the real `tar` and comparing with the source.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync, readFileSync, rmSync, statSync, lstatSync, readlinkSync, writeFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { after, test } from 'node:test';
import { looksRandom, ParallelGzip } from '../../src/build/assembly/gzip.js';
import { rootfsEntries } from '../../src/build/assembly/farm.js';
import * as tar from 'tar-stream';
import { storePathEntries, tarStream, type TarEntry } from '../../src/build/assembly/tar.js';
import { requireTool, run } from '../helpers/exec.js';
import { tempDir } from '../helpers/registry.js';
import { assertSameTree, makeOddTree } from './trees.js';

const dirs: string[] = [];
const temp = () => { const d = tempDir('nixreg-tar-'); dirs.push(d); return d; };
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

async function writeTar(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>, file: string, gzip: boolean): Promise<string> {
  const h = createHash('sha256');
  const tee = async function* (src: AsyncIterable<Buffer>) { for await (const c of src) { h.update(c); yield c; } };
  if (gzip) await pipeline(tarStream(entries), new ParallelGzip(), tee, createWriteStream(file));
  else await pipeline(tarStream(entries), tee, createWriteStream(file));
  return h.digest('hex');
}

test('a store-path layer unpacks with tar to exactly the source tree (modes, links, hard links, odd names)', async () => {
  await requireTool('tar');
  const src = join(temp(), 'store', 'abc-pkg');
  makeOddTree(src);
  const out = temp();
  for (const gzip of [false, true]) {
    const file = join(temp(), gzip ? 'l.tar.gz' : 'l.tar');
    await writeTar(storePathEntries([src]), file, gzip);
    const dest = join(out, gzip ? 'gz' : 'plain');
    mkdirSync(dest);
    await run('tar', ['-x', ...(gzip ? ['-z'] : []), '-p', '-f', file, '-C', dest]);
    assertSameTree(src, join(dest, src.slice(1)));
    // Parent directories are in the archive, read-only like /nix/store in dockerTools.
    assert.equal(statSync(join(dest, src.slice(1), '..')).mode & 0o7777, 0o555);
  }
});

test('tar headers: mtime 1, owner root, sorted entries, hard link entry, PAX for long and unicode names', async () => {
  await requireTool('tar');
  const src = join(temp(), 'p');
  makeOddTree(src);
  const file = join(temp(), 'l.tar');
  await writeTar(storePathEntries([src]), file, false);
  const list = (await run('tar', ['--utc', '--numeric-owner', '-tvf', file])).stdout.trim().split('\n');
  for (const line of list) assert.match(line, / 0\/0 .* 1970-01-01 00:00 /, line);
  const names = (await run('tar', ['-tf', file])).stdout.trim().split('\n');
  assert.ok(names.some((n) => n.endsWith('/' + 'x'.repeat(150))), 'a 150-character name survives');
  assert.ok(names.some((n) => n.endsWith('/ünïcödé-ファイル.txt')), 'a unicode name survives');
  assert.ok(list.some((l) => /hardlink-to-data\.bin link to .*data\.bin$/.test(l) || /data\.bin link to .*hardlink-to-data\.bin$/.test(l)), 'hard link entry');
  const pax = readFileSync(file).includes('path=');
  assert.ok(pax, 'PAX extended headers are used where ustar cannot hold a name');
  // Depth first, children sorted by UTF-8 bytes.
  const rel = names.map((n) => n.replace(/\/$/, ''));
  for (let i = 1; i < rel.length; i++) {
    const [a, b] = [rel[i - 1]!, rel[i]!];
    const parentA = a.slice(0, a.lastIndexOf('/'));
    const parentB = b.slice(0, b.lastIndexOf('/'));
    if (parentA === parentB) assert.ok(Buffer.compare(Buffer.from(a), Buffer.from(b)) < 0, `${a} before ${b}`);
  }
});

test('same input twice gives identical bytes; different content gives different bytes', async () => {
  const a = join(temp(), 'a');
  makeOddTree(a, 'a');
  const t = temp();
  const d1 = await writeTar(storePathEntries([a]), join(t, '1'), true);
  const d2 = await writeTar(storePathEntries([a]), join(t, '2'), true);
  assert.equal(d1, d2);
  writeFileSync(join(a, 'empty-file'), 'changed');
  const d3 = await writeTar(storePathEntries([a]), join(t, '3'), true);
  assert.notEqual(d3, d1);
});

test('parallel gzip is one valid gzip stream, independent of how the input is chunked', async () => {
  await requireTool('gzip');
  const text = Buffer.from(Array.from({ length: 150_000 }, (_, i) => `line ${i} ${i % 89}\n`).join(''));
  const random = createHash('sha512');
  const noise = Buffer.concat(Array.from({ length: 40_000 }, (_, i) => random.copy().update(String(i)).digest()));
  const input = Buffer.concat([text, noise, text]);
  const gz = async (step: number) => {
    const parts: Buffer[] = [];
    for (let i = 0; i < input.length; i += step) parts.push(input.subarray(i, i + step));
    const out: Buffer[] = [];
    const g = new ParallelGzip();
    const done = (async () => { for await (const c of g) out.push(c as Buffer); })();
    for (const p of parts) if (!g.write(p)) await new Promise((r) => g.once('drain', r));
    g.end();
    await done;
    return Buffer.concat(out);
  };
  const a = await gz(65536);
  const b = await gz(999_983);
  assert.ok(a.equals(b), 'output does not depend on input chunking');
  const file = join(temp(), 'x.gz');
  writeFileSync(file, a);
  await run('gzip', ['-t', file]);
  const back = await run('sh', ['-c', 'gzip -dc "$1" | sha256sum', 'sh', file]);
  assert.equal(back.stdout.split(' ')[0], createHash('sha256').update(input).digest('hex'));
  // Ratio close to plain gzip -6 (the dictionary carries across blocks).
  const one = (await gz(1 << 30)).length;
  assert.ok(a.length <= one * 1.01, `${a.length} vs ${one}`);
});

test('root filesystem: buildEnv-like farm, merged directories, first content wins, /tmp 1777', async () => {
  await requireTool('tar');
  const t = temp();
  const c1 = join(t, 'store', 'c1');
  const c2 = join(t, 'store', 'c2');
  for (const [c, who] of [[c1, 'one'], [c2, 'two']] as const) {
    mkdirSync(join(c, 'bin'), { recursive: true });
    writeFileSync(join(c, 'bin', `only-${who}`), who);
    writeFileSync(join(c, 'bin', 'both'), who);
    mkdirSync(join(c, 'share', 'doc', who), { recursive: true });
    writeFileSync(join(c, 'share', 'doc', who, 'README'), who);
    mkdirSync(join(c, 'share', who), { recursive: true });
  }
  mkdirSync(join(c2, 'etc'));
  writeFileSync(join(c2, 'etc', 'passwd'), 'root:x:0:0::/:/bin/sh\n');
  symlinkSync('bin', join(c2, 'sbin'));
  const entries = await rootfsEntries([c1, c2]);
  const file = join(t, 'root.tar');
  await writeTar(entries, file, false);
  const dest = join(t, 'root');
  mkdirSync(dest);
  await run('tar', ['-xpf', file, '-C', dest]);
  const link = (p: string) => readlinkSync(join(dest, p));
  assert.equal(link('bin/only-one'), join(c1, 'bin/only-one'));
  assert.equal(link('bin/only-two'), join(c2, 'bin/only-two'));
  assert.equal(link('bin/both'), join(c1, 'bin/both'), 'first content wins');
  assert.ok(lstatSync(join(dest, 'share/doc')).isDirectory(), 'shared directories are merged');
  assert.equal(link('share/doc/one'), join(c1, 'share/doc/one'), 'unshared directories are linked whole');
  assert.equal(link('share/two'), join(c2, 'share/two'));
  assert.ok(lstatSync(join(dest, 'etc')).isDirectory(), 'top-level directories are real');
  assert.equal(link('etc/passwd'), join(c2, 'etc/passwd'));
  assert.ok(lstatSync(join(dest, 'sbin')).isDirectory(), 'a top-level link to a directory becomes a real directory');
  assert.equal(readFileSync(join(dest, 'sbin/both'), 'utf8'), 'two');
  assert.equal(link('sbin/both'), join(c2, 'sbin/both'));
  assert.equal(statSync(join(dest, 'tmp')).mode & 0o7777, 0o1777);
  assert.equal(statSync(join(dest, 'bin')).mode & 0o7777, 0o755);
  // Deterministic: the same contents give the same entries.
  assert.deepEqual(await rootfsEntries([c1, c2]), entries);
});

test('a file name that is not UTF-8 is refused with a clear error, not mangled', async () => {
  const src = join(temp(), 'p');
  mkdirSync(src);
  writeFileSync(Buffer.from(`${src}/bad-\xff-name`, 'latin1'), 'x');
  await assert.rejects(writeTar(storePathEntries([src]), join(temp(), 'l.tar'), false), /not valid UTF-8/);
});

/** The layer writer before tarStream read files into its own chunks: tar-stream's packer. */
async function tarStreamPack(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => { for await (const c of pack) chunks.push(c as Buffer); })();
  const base = { mtime: new Date(1000), uid: 0, gid: 0, uname: 'root', gname: 'root' };
  for await (const e of entries) {
    const h = { ...base, name: e.name };
    await new Promise<void>((res, rej) => {
      const cb = (err?: Error | null) => (err ? rej(err) : res());
      if (e.type === 'directory') pack.entry({ ...h, type: 'directory', mode: e.mode }, cb);
      else if (e.type === 'symlink') pack.entry({ ...h, type: 'symlink', linkname: e.target, mode: 0o777 }, cb);
      else if (e.type === 'link') pack.entry({ ...h, type: 'link', linkname: e.target, mode: 0o644 }, cb);
      else pack.entry({ ...h, type: 'file', mode: e.mode, size: e.size }, readFileSync(e.source), cb);
    });
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

test('the chunked tar writer gives the bytes tar-stream gave, so layers built before it are still reused', async () => {
  const src = join(temp(), 'store', 'abc-odd');
  makeOddTree(src);
  // Sizes around the writer's 1 MiB chunks and the 512-byte records, and long link targets.
  for (const n of [0, 1, 511, 512, 513, (1 << 20) - 100, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 777]) {
    writeFileSync(join(src, `size-${n}`), Buffer.alloc(n, n % 251));
  }
  symlinkSync('t/'.repeat(80) + 'target', join(src, 'long-link'));
  symlinkSync('ü'.repeat(40), join(src, 'unicode-link'));
  mkdirSync(join(src, 'd'.repeat(120)));
  const file = join(temp(), 'new.tar');
  const digest = await writeTar(storePathEntries([src]), file, false);
  const old = await tarStreamPack(storePathEntries([src]));
  assert.equal(readFileSync(file).length, old.length);
  assert.ok(readFileSync(file).equals(old), 'same bytes');
  assert.equal(digest, createHash('sha256').update(old).digest('hex'));
});

test('parallel gzip stores blocks of random bytes instead of deflating them, and loses nothing by it', async () => {
  await requireTool('gzip');
  const noise = (n: number, seed: string) => {
    const h = createHash('sha512').update(seed);
    return Buffer.concat(Array.from({ length: Math.ceil(n / 64) }, (_, i) => h.copy().update(String(i)).digest())).subarray(0, n);
  };
  const MiB = 1 << 20;
  const text = Buffer.from(Array.from({ length: 120_000 }, (_, i) => `row ${i} ${(i * 7919) % 1000}\n`).join('')).subarray(0, MiB);
  // Block by block: random, text, random with a text tail (mixed: deflated), random (last).
  const input = Buffer.concat([noise(MiB, 'a'), text, noise(MiB - 4096, 'b'), text.subarray(0, 4096), noise(MiB / 2, 'c')]);
  assert.equal(looksRandom(noise(MiB, 'd')), true);
  assert.equal(looksRandom(text), false);
  assert.equal(looksRandom(Buffer.concat([noise(MiB / 2, 'e'), Buffer.alloc(MiB / 2)])), false, 'half zeros is not random');
  const out: Buffer[] = [];
  const g = new ParallelGzip(6);
  const done = (async () => { for await (const c of g) out.push(c as Buffer); })();
  g.end(input);
  await done;
  const gz = Buffer.concat(out);
  const file = join(temp(), 'r.gz');
  writeFileSync(file, gz);
  const back = await run('sh', ['-c', 'gzip -dc "$1" | sha256sum', 'sh', file]);
  assert.equal(back.stdout.split(' ')[0], createHash('sha256').update(input).digest('hex'));
  const raw = join(temp(), 'r.raw');
  writeFileSync(raw, input);
  const gzip6 = Number((await run('sh', ['-c', 'gzip -6 -c "$1" | wc -c', 'sh', raw])).stdout.trim());
  assert.ok(gz.length <= gzip6 * 1.01, `${gz.length} bytes against gzip -6's ${gzip6}`);
  // The random blocks cost their size plus 5 bytes per 64 KiB stored block, nothing more.
  assert.ok(gz.length < input.length - text.length / 2, 'the text blocks were deflated');
});
