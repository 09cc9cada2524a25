// Repository name → image file. `a/b` is `<images>/a/b.nix` or `<images>/a/b/default.nix`.
// Only files inside the images directory are ever read: the candidate's real path (all
// symlinks followed) must lie under the images directory's real path, and so must every
// directory on the way to it. A directory symlink back to where the walk has already
// been (the images directory, an ancestor, a directory the name passed through) is not
// followed: it would make endless alias repositories (`self/hello`, `self/self/hello`, …),
// each evaluated and built on its own.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { realpathSync, statSync } from 'node:fs';
import { join, sep } from 'node:path';

export interface ImageFile {
  /** Real absolute path of the expression file. */
  path: string;
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

/** Finds the image file of `name`, or undefined when there is none (or it escapes). */
export function resolveImageFile(imagesDir: string, name: string): ImageFile | undefined {
  const parts = safeSegments(name);
  if (!parts) return undefined;
  let root: string;
  try { root = realpathSync(imagesDir); } catch { return undefined; }
  const visited = [root];
  for (const p of parts.slice(0, -1)) {
    const next = step(root, visited, p);
    if (!next) return undefined;
    visited.push(next);
  }
  const last = parts[parts.length - 1]!;
  const dir = visited[visited.length - 1]!;
  const candidates = [() => join(dir, `${last}.nix`), () => {
    const sub = step(root, visited, last);
    return sub && join(sub, 'default.nix');
  }];
  for (const candidate of candidates) {
    const file = candidate();
    if (!file) continue;
    let real: string;
    try { real = realpathSync(file); } catch { continue; }
    if (!real.startsWith(root + sep)) continue;
    let st;
    try { st = statSync(real, { bigint: true }); } catch { continue; }
    if (!st.isFile()) continue;
    return { path: real, key: `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}` };
  }
  return undefined;
}
