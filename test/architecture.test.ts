// The house rules of src/ (ARCHITECTURE.md), checked on the source itself so that a
// change that breaks them fails here rather than in review: arrows between the rooms
// point down only (registry → build → blobs → oci, and registry → blobs), the shared
// model uses no HTTP, SQLite or Nix library, every module says which room it is in, and
// no file outgrows what one reader can hold. Inside the build room, the arrows between
// its sub-rooms (nix/, origins/, assembly/, ingest/, jobs/) and its pipeline's top.
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

/**
 * The parts of src/build: each sub-folder, the modules all of it shares, and the top
 * (the pipeline's stages and the seam, which may import any part). A sub-room imports
 * only what it is built on, never the pipeline above it.
 */
type Part = 'top' | 'shared' | 'nix' | 'jobs' | 'origins' | 'assembly' | 'ingest';
const SHARED = ['errors.ts', 'types.ts', 'semaphore.ts'];
const BUILD_MAY_IMPORT: Record<Part, Part[]> = {
  shared: [],
  nix: ['shared'],
  jobs: ['shared'],
  origins: ['nix', 'shared'],
  assembly: ['jobs', 'shared'],
  ingest: ['nix', 'assembly', 'shared'],
  top: ['top', 'shared', 'nix', 'jobs', 'origins', 'assembly', 'ingest'],
};
const BUILD = join(SRC, 'build');
/** What src/registry may import of src/build: the seam and the errors it answers for. */
const REGISTRY_SEES_OF_BUILD = ['build/image-source.ts', 'build/errors.ts'];
/** What src/build must not import of src/blobs: the index (its room, blobs/index/) and the layout are behind Storage's facade. */
const BEHIND_STORAGE = ['blobs/index/', 'blobs/layout.ts'];
/** The index's room: the one place that knows SQL, its engines' packages and their handles. */
const INDEX_ROOM = 'blobs/index/';
const DATABASE_PACKAGES = ['better-sqlite3', 'pg', 'postgres'];

function partOf(file: string): Part {
  const parts = relative(BUILD, file).split('/');
  if (parts.length > 1) return parts[0] as Part;
  return SHARED.includes(parts[0]!) ? 'shared' : 'top';
}

/** The source file an import names (`./x.js` is `x.ts`). */
function target(from: string, spec: string): string {
  return resolve(dirname(from), spec).replace(/\.js$/, '.ts');
}

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

test('the build room: its sub-rooms import only what they are built on', () => {
  const dirs = readdirSync(BUILD, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name).sort();
  assert.deepEqual(dirs, Object.keys(BUILD_MAY_IMPORT).filter((p) => p !== 'top' && p !== 'shared').sort(),
    'every sub-folder of src/build has its row in BUILD_MAY_IMPORT');
  const wrong: string[] = [];
  for (const f of files.filter((x) => roomOf(x) === 'build')) {
    const from = partOf(f);
    for (const spec of importsOf(readFileSync(f, 'utf8')).filter((x) => x.startsWith('.'))) {
      const to = target(f, spec);
      if (roomOf(to) !== 'build') continue;
      const part = partOf(to);
      if (part !== from && !BUILD_MAY_IMPORT[from].includes(part)) wrong.push(`${relative(SRC, f)} (${from}) imports ${spec} (${part})`);
      // The pipeline's top is imported by nobody in the room: a pull walks down from it.
      if (relative(BUILD, to) === 'source.ts') wrong.push(`${relative(SRC, f)} imports the pipeline's top, ${spec}`);
    }
  }
  assert.deepEqual(wrong, []);
});

test('the registry sees the build room through its seam; the build room sees storage through Storage', () => {
  const wrong: string[] = [];
  for (const f of files) {
    const room = roomOf(f);
    if (room !== 'registry' && room !== 'build') continue;
    for (const spec of importsOf(readFileSync(f, 'utf8')).filter((x) => x.startsWith('.'))) {
      const to = relative(SRC, target(f, spec));
      if (room === 'registry' && to.startsWith('build/') && !REGISTRY_SEES_OF_BUILD.includes(to)) wrong.push(`${relative(SRC, f)} imports ${to}`);
      if (room === 'build' && BEHIND_STORAGE.some((b) => to === b || (b.endsWith('/') && to.startsWith(b)))) wrong.push(`${relative(SRC, f)} imports ${to}`);
    }
    if (room === 'build' && /\bstorage\.(index|layout)\b/.test(readFileSync(f, 'utf8'))) wrong.push(`${relative(SRC, f)} reaches past Storage's facade`);
  }
  assert.deepEqual(wrong, []);
});

test('only the index room (src/blobs/index/) knows SQL and the database engines', () => {
  const wrong: string[] = [];
  for (const f of files) {
    const rel = relative(SRC, f);
    if (rel.startsWith(INDEX_ROOM)) continue;
    const text = readFileSync(f, 'utf8');
    for (const spec of importsOf(text)) {
      if (DATABASE_PACKAGES.some((p) => spec === p || spec.startsWith(`${p}/`))) wrong.push(`${rel} imports ${spec}`);
    }
    const sql = /\b(SELECT\s+[\w*(]|INSERT\s+(OR\s+\w+\s+)?INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|CREATE\s+(TABLE|INDEX))/.exec(text);
    if (sql) wrong.push(`${rel} holds SQL (${sql[0]})`);
    if (/\.index\.db\b/.test(text)) wrong.push(`${rel} reaches for the index's database handle`);
  }
  assert.deepEqual(wrong, []);
});

test("a module of a build sub-room says which; Nix's own files live with the Nix adapter", () => {
  const wrong = files.filter((f) => roomOf(f) === 'build').filter((f) => {
    const part = partOf(f);
    const line = /\/\/ Room: (build(?:\/[a-z]+)?)\b/.exec(readFileSync(f, 'utf8'))?.[1];
    return line !== (part === 'top' || part === 'shared' ? 'build' : `build/${part}`);
  });
  assert.deepEqual(wrong.map((f) => relative(SRC, f)), []);
  // nix/nix.ts reads them beside its source at run time; the image must copy them there.
  const nixFiles = readdirSync(SRC, { withFileTypes: true, recursive: true }).filter((e) => e.isFile() && e.name.endsWith('.nix'))
    .map((e) => relative(SRC, join(e.parentPath, e.name))).sort();
  assert.deepEqual(nixFiles, ['build/nix/eval.nix', 'build/nix/probe.nix']);
  assert.match(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'), /^COPY src\/build\/nix\/\*\.nix \.\/src\/build\/nix\/$/m);
});

test('the web page (src/registry/ui) reads through the handlers\' Ctx only, and makes HTML only in html.ts', () => {
  const UI = join(SRC, 'registry/ui');
  const wrong: string[] = [];
  for (const f of files.filter((x) => x.startsWith(`${UI}/`))) {
    const text = readFileSync(f, 'utf8');
    for (const spec of importsOf(text).filter((x) => x.startsWith('.'))) {
      // Storage and the build room only as the Ctx the JSON API's handlers get (and the
      // seam's types): one view of what a caller may see.
      const to = relative(SRC, target(f, spec));
      if (to.startsWith('blobs/') || (to.startsWith('build/') && to !== 'build/image-source.ts')) wrong.push(`${relative(SRC, f)} imports ${spec}`);
    }
    // Markup is made by the escaping template alone; nothing writes a raw string to a response.
    if (!f.endsWith('/html.ts') && /new Raw\(|\.send\(|res\.end\(\s*[`'"]/.test(text)) wrong.push(`${relative(SRC, f)} makes HTML outside html.ts`);
  }
  assert.deepEqual(wrong, []);
});
