// The house rules of src/ (ARCHITECTURE.md), checked on the source itself so that a
// change that breaks them fails here rather than in review: arrows between the rooms
// point down only (registry → build → blobs → oci, and registry → blobs), the shared
// model uses no HTTP, SQLite or Nix library, every module says which room it is in, and
// no file outgrows what one reader can hold.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { ROOT } from './helpers/registry.js';

const SRC = join(ROOT, 'src');
type Room = 'oci' | 'blobs' | 'build' | 'registry' | 'root';
const MAY_IMPORT: Record<Room, Room[]> = {
  oci: [],
  blobs: ['oci'],
  build: ['blobs', 'oci'],
  registry: ['build', 'blobs', 'oci'],
  root: ['registry', 'build', 'blobs', 'oci', 'root'],
};
/** npm packages a room must not reach for: each belongs to a room above it. */
const FORBIDDEN_PACKAGES: Record<Room, string[]> = {
  oci: ['express', 'better-sqlite3', 'tar-stream', 'lru-cache', 'pino'],
  blobs: ['express'],
  build: ['express'],
  registry: [],
  root: [],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.c?ts$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

function roomOf(file: string): Room {
  const parts = relative(SRC, file).split('/');
  return parts.length === 1 ? 'root' : parts[0] as Room;
}

function importsOf(text: string): string[] {
  return [...text.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)].map((m) => m[1]!);
}

const files = sources(SRC);

test('the rooms exist and hold the code', () => {
  for (const room of ['oci', 'blobs', 'build', 'registry'] as const) {
    assert.ok(files.some((f) => roomOf(f) === room), `src/${room} has modules`);
  }
});

test('imports between rooms point down only', () => {
  const wrong: string[] = [];
  for (const f of files) {
    const from = roomOf(f);
    for (const spec of importsOf(readFileSync(f, 'utf8'))) {
      if (spec.startsWith('.')) {
        const to = roomOf(resolve(dirname(f), spec));
        if (to !== from && !MAY_IMPORT[from].includes(to)) wrong.push(`${relative(SRC, f)} (${from}) imports ${spec} (${to})`);
      } else if (FORBIDDEN_PACKAGES[from].some((p) => spec === p || spec.startsWith(`${p}/`))) {
        wrong.push(`${relative(SRC, f)} (${from}) imports the package ${spec}`);
      }
    }
  }
  assert.deepEqual(wrong, []);
});

test('every module says which room it is in', () => {
  const silent = files.filter((f) => !/\/\/ (Room: |Composition root)/.test(readFileSync(f, 'utf8')));
  assert.deepEqual(silent.map((f) => relative(SRC, f)), []);
});

test('no source file is over 400 lines', () => {
  const long = files.map((f) => ({ f: relative(SRC, f), n: readFileSync(f, 'utf8').split('\n').length }))
    .filter((x) => x.n > 400);
  assert.deepEqual(long, []);
});
