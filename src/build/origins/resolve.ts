// Repository name → image file. `a/b` is `<images>/a/b.nix` or `<images>/a/b/default.nix`.
// Only files inside the images directory are ever read: the candidate's real path (all
// symlinks followed) must lie under the images directory's real path, and so must every
// directory on the way to it. A directory symlink back to where the walk has already
// been (the images directory, an ancestor, a directory the name passed through) is not
// followed: it would make endless alias repositories (`self/hello`, `self/self/hello`, …),
// each evaluated and built on its own.
//
// Room: build/origins. Of build, imports only nix/ and the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { realpathSync, statSync, type BigIntStats } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';

export interface ImageFile {
  /** Real absolute path of the expression file. */
  path: string;
  /** The same file relative to the images directory (`sub/app.nix`): what clients are shown. */
  name: string;
  /**
   * Identity of the file's current content as cheaply observable: device, inode, size
   * and mtime. Any edit (in place or by rename) changes it.
   */
  key: string;
}

const SEGMENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;

/** Syntax check, independent of the registry's grammar: no empty, `.` or `..` segments. */
export function safeSegments(name: string): string[] | undefined {
  const parts = name.split('/');
  return parts.every((p) => SEGMENT.test(p)) ? parts : undefined;
}

/**
 * The real directory `segment` leads to from `visited`'s last one, unless it leaves the
 * images directory `root` or returns to (or above) a directory already visited.
 */
function step(root: string, visited: string[], segment: string): string | undefined {
  let real: string;
  try { real = realpathSync(join(visited[visited.length - 1]!, segment)); } catch { return undefined; }
  if (!real.startsWith(root + sep)) return undefined;
  if (visited.some((v) => v === real || v.startsWith(real + sep))) return undefined;
  return real;
}

/**
 * The real directories `parts` lead through from the images directory `root` (root
 * first), or undefined where one of them does not exist, escapes or loops (step()).
 */
function walk(root: string, parts: string[]): string[] | undefined {
  const visited = [root];
  for (const p of parts) {
    const next = step(root, visited, p);
    if (!next) return undefined;
    visited.push(next);
  }
  return visited;
}

/** Finds the image file of `name`, or undefined when there is none (or it escapes). */
export function resolveImageFile(imagesDir: string, name: string): ImageFile | undefined {
  const parts = safeSegments(name);
  if (!parts) return undefined;
  let root: string;
  try { root = realpathSync(imagesDir); } catch { return undefined; }
  const visited = walk(root, parts.slice(0, -1));
  if (!visited) return undefined;
  const last = parts[parts.length - 1]!;
  const dir = visited[visited.length - 1]!;
  // flake.nix is a flake (origins.ts), never an image file of its own.
  const candidates = [() => (last === 'flake' ? undefined : join(dir, `${last}.nix`)), () => {
    const sub = step(root, visited, last);
    return sub && join(sub, 'default.nix');
  }];
  for (const candidate of candidates) {
    const file = candidate();
    const found = file && fileInside(root, file);
    if (found) return found;
  }
  return undefined;
}

/** `file` as an ImageFile, if its real path is a regular file under the real images directory `root`. */
function fileInside(root: string, file: string): ImageFile | undefined {
  try {
    const real = realpathSync(file);
    if (!real.startsWith(root + sep)) return undefined;
    const st = statSync(real, { bigint: true });
    return st.isFile() ? { path: real, name: relative(root, real), key: fileKey(st) } : undefined;
  } catch { return undefined; }
}

/** ImageFile.key of stat results (bigint, for the mtime's nanoseconds). */
export function fileKey(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
}

/** A flake that serves a repository (origins.ts): its directory and the output's name. */
export interface FlakeFile extends ImageFile {
  /** The flake's real directory. */
  dir: string;
  /** packages.<system>.ATTR (else legacyPackages.<system>.ATTR). */
  attr: string;
}

/**
 * The flake that serves `name`: `<images>/NAME/flake.nix` (its `default` output), else,
 * for a one-segment name, `<images>/flake.nix` (its output NAME). Under the same rules
 * as image files: nothing outside the images directory is ever read.
 */
export function resolveFlake(imagesDir: string, name: string): FlakeFile | undefined {
  const parts = safeSegments(name);
  if (!parts) return undefined;
  let root: string;
  try { root = realpathSync(imagesDir); } catch { return undefined; }
  const found = (dir: string, attr: string): FlakeFile | undefined => {
    const f = fileInside(root, join(dir, 'flake.nix'));
    return f && { ...f, dir, attr };
  };
  const visited = walk(root, parts);
  const own = visited && found(visited[visited.length - 1]!, 'default');
  if (own) return own;
  return parts.length === 1 ? found(root, parts[0]!) : undefined;
}

/** `<images>/flake.nix`, whose outputs serve one-segment names (resolveFlake's top-level case). */
export function resolveTopFlake(imagesDir: string): FlakeFile | undefined {
  let root: string;
  try { root = realpathSync(imagesDir); } catch { return undefined; }
  const f = fileInside(root, join(root, 'flake.nix'));
  return f && { ...f, dir: root, attr: '' };
}

const PATH_CHAR = String.raw`[\w+@%~-]`;

/** The images directory as given (absolute) and as it really is, longest first: one may be a prefix of the other. */
export function imagesDirForms(imagesDir: string): string[] {
  return hostForms(imagesDir).filter((f) => f !== sep).sort((a, b) => b.length - a.length);
}

/**
 * `text` with the images directory's absolute path taken out, so that the files in it
 * are named as they are relative to it (`at sub/app.nix:3:5`), the directory itself as
 * `.`: Nix's messages would otherwise show a client where the images live on the host.
 */
export function hideImagesDir(text: string, imagesDir: string): string {
  return hidePaths(text, hostForms(imagesDir));
}

/** `path` resolved, and its real path if it exists: the forms Nix may quote it in. */
export function hostForms(path: string): string[] {
  const forms = new Set([resolve(path)]);
  try { forms.add(realpathSync(path)); } catch { /* gone: the given form is all there is */ }
  return [...forms];
}

/**
 * `text` with each of `paths` (absolute paths or URLs, whole path components only)
 * replaced by `label`, the files under one named `label/file`; without a label, the
 * files are named relative to it and it itself is `.`.
 */
export function hidePaths(text: string, paths: readonly string[], label?: string): string {
  let out = text;
  // Longest first: one form may be a prefix of the other.
  for (const dir of paths.filter((f) => f !== sep && f !== '').sort((a, b) => b.length - a.length)) {
    const escaped = dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    // Whole path components only: not `/x/images2`, `/y/x/images`; a sentence's full stop may follow.
    out = out.replace(new RegExp(`(?<!${PATH_CHAR}|/)${escaped}(/+|(?!${PATH_CHAR}|\\.\\w))`, 'g'),
      (_m, slash: string) => (label === undefined ? (slash ? '' : '.') : slash ? `${label}/` : label));
  }
  return out;
}
