// Watching the images directory. Any change there may change what an image evaluates
// to: an image file may import any file beside it (a shared `lib.nix`, a pinned
// package set), and Nix 2.8 does not say cheaply which files an evaluation read. So
// every change drops every cached evaluation (Evaluator.invalidate) the moment it is
// seen, and the next pull of `latest` evaluates again instead of waiting out
// --eval-ttl. Changes also feed --prebuild, once the directory has been quiet a moment
// (a `git pull` is many changes).
//
// Dot-files and dot-directories (.git above all) are not watched: a `git pull` changes
// them by the thousand and no image may import them by the repository grammar's names.
//
// Room: build/origins. Of build, imports only nix/ and the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { readdirSync, statSync, type Dirent } from 'node:fs';
import { join } from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import type { Logger } from 'pino';
import { fileKey, resolveFlake, resolveImageFile, safeSegments } from './resolve.js';

/** Quiet time after the last change before --prebuild starts. */
export const SETTLE_MS = 1000;
/** Directory levels watched and searched for images; far deeper than any real layout. */
const MAX_DEPTH = 16;
/** Image files --prebuild looks at, at most. */
const MAX_IMAGES = 10_000;

export interface WatchOptions {
  /** Each change, at once: the file's real path, and its ImageFile.key unless it is gone. */
  onChange: (path: string, key: string | undefined) => void;
  /** After changes, once the directory has been quiet for SETTLE_MS. */
  onSettled?: (() => void) | undefined;
  log?: Logger | undefined;
}

export class ImagesWatcher {
  private readonly watcher: FSWatcher;
  private settle: NodeJS.Timeout | undefined;
  /** Changes seen; /nixreg/stats shows it, and tests wait on it. */
  changes = 0;
  ready: Promise<void>;

  constructor(readonly dir: string, private readonly o: WatchOptions) {
    this.watcher = watch(dir, {
      ignoreInitial: true,
      depth: MAX_DEPTH,
      // Not followed: a link out of the images directory is never read either (resolve.ts).
      followSymlinks: false,
      ignored: (path: string) => path.slice(dir.length).split('/').some((s) => s.startsWith('.')),
    });
    this.ready = new Promise((r) => this.watcher.once('ready', () => r()));
    this.watcher.on('all', (_event, path) => this.changed(path));
    // Out of inotify watches, say: pulls still see edits, after --eval-ttl.
    this.watcher.on('error', (err) => o.log?.warn({ err, dir }, 'watching the images directory failed; edits to imported files wait for --eval-ttl'));
  }

  private changed(path: string): void {
    this.changes++;
    let key: string | undefined;
    try { key = fileKey(statSync(path, { bigint: true })); } catch { key = undefined; }
    this.o.onChange(path, key);
    if (!this.o.onSettled) return;
    if (this.settle) clearTimeout(this.settle);
    this.settle = setTimeout(() => { this.settle = undefined; this.o.onSettled!(); }, SETTLE_MS);
    this.settle.unref();
  }

  async close(): Promise<void> {
    if (this.settle) clearTimeout(this.settle);
    await this.watcher.close();
  }
}

/**
 * Visits the entries under `dir` as the watcher sees them (no dot-names, MAX_DEPTH
 * levels) until `visit` returns true or `limit` entries have been seen; says whether
 * the limit cut the walk short.
 */
function walkImages(dir: string, limit: number, visit: (rel: string[], e: Dirent) => boolean): boolean {
  let seen = 0;
  let stop = false;
  const walk = (rel: string[], depth: number) => {
    let entries: Dirent[];
    try { entries = readdirSync(join(dir, ...rel), { withFileTypes: true }); } catch { return; }
    for (const e of entries) {
      if (stop || e.name.startsWith('.')) continue;
      if (++seen > limit || visit(rel, e)) { stop = true; continue; }
      if (e.isDirectory() && depth < MAX_DEPTH) walk([...rel, e.name], depth + 1);
    }
  };
  walk([], 0);
  return seen > limit;
}

/** Whether a flake.nix lies anywhere under `dir` (where listImages would look). */
export function hasFlake(dir: string): boolean {
  let found = false;
  const cut = walkImages(dir, MAX_IMAGES * 10, (_rel, e) => (found = e.name === 'flake.nix'));
  // Too large to tell: look for flakes at every pull rather than miss one.
  return found || cut;
}

/**
 * The repository names that image files and subfolder flakes in `dir` give (`a/b.nix`,
 * `a/b/default.nix` and `a/b/flake.nix` are `a/b`), each as resolve.ts would find it:
 * what --prebuild evaluates, with the top-level flake's outputs.
 */
export function listImages(dir: string): string[] {
  const names = new Set<string>();
  walkImages(dir, Infinity, (rel, e) => {
    if (e.isDirectory()) return false;
    if (e.name === 'flake.nix') {
      // A flake in a subfolder serves the subfolder's name (the top one: its outputs, listed by the caller).
      const name = rel.join('/');
      if (rel.length && safeSegments(name) && resolveFlake(dir, name)?.attr === 'default') names.add(name);
    } else if (e.name.endsWith('.nix')) {
      const base = e.name.slice(0, -4);
      const parts = base === 'default' ? rel : [...rel, base];
      const name = parts.join('/');
      if (parts.length && safeSegments(name) && resolveImageFile(dir, name)) names.add(name);
    }
    return names.size >= MAX_IMAGES;
  });
  return [...names].sort();
}
