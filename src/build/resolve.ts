// Repository name → image file. `a/b` is `<images>/a/b.nix` or `<images>/a/b/default.nix`.
// Only files inside the images directory are ever read: the candidate's real path (all
// symlinks followed) must lie under the images directory's real path.
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

/** Finds the image file of `name`, or undefined when there is none (or it escapes). */
export function resolveImageFile(imagesDir: string, name: string): ImageFile | undefined {
  const parts = safeSegments(name);
  if (!parts) return undefined;
  let root: string;
  try { root = realpathSync(imagesDir); } catch { return undefined; }
  const base = join(root, ...parts);
  for (const candidate of [`${base}.nix`, join(base, 'default.nix')]) {
    let real: string;
    try { real = realpathSync(candidate); } catch { continue; }
    if (!real.startsWith(root + sep)) continue;
    let st;
    try { st = statSync(real, { bigint: true }); } catch { continue; }
    if (!st.isFile()) continue;
    return { path: real, key: `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}` };
  }
  return undefined;
}
