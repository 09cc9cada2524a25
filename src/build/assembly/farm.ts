// The root filesystem of a built image: a symlink farm of its contents, like nixpkgs'
// buildEnv, made only of what is inside the image's closure.
//
// The contents are written by whoever packages them, so they are untrusted input: a
// symlink in a content may point anywhere on the registry host (`ln -s /etc $out/h`),
// loop (`ln -s .. $out/up`), or be one of many paths to the same directories, which
// merging would unfold without end. So the farm never asks the host to resolve a
// path: it follows symlinks itself, one component at a time, and only while every step
// stays inside the closure's store paths (immutable, and under the build's GC roots, so
// what was checked cannot change). A link that leaves the closure is copied, never
// followed. A directory already being listed further up is not unfolded again, and
// the farm's size and depth are bounded, so assembly ends whatever the contents hold.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import { promises as fs, type Stats } from 'node:fs';
import { join, posix } from 'node:path';
import { BuildFailed } from '../errors.js';
import { byUtf8, sortedDir, type TarEntry } from './tar.js';

/** Names what decides the farm's entries: part of the root filesystem layer's key. */
export const FARM_FORMAT = 'farm-v2(closure-only,no-loops)';

/** Bounds the work merges can make; far beyond any real image's root filesystem. */
export const MAX_FARM_ENTRIES = 1_000_000;
export const MAX_FARM_DEPTH = 64;
/** As Linux's MAXSYMLINKS: more links than this while resolving one path is a loop. */
const MAX_LINK_HOPS = 40;
const ROOT_DIR_MODE = 0o755;

interface FarmDir { kind: 'dir'; mode: number; children: Map<string, FarmNode>; /** real directories merged here */ from: string[] }
interface FarmLink {
  kind: 'link';
  target: string;
  /** The real directory the link leads to inside the closure, if it may be merged. */
  dir?: string | undefined;
}
type FarmNode = FarmDir | FarmLink;

export interface FarmOptions {
  /** Store paths the farm may read and follow links into (default: the contents). */
  closure?: Iterable<string> | undefined;
  signal?: AbortSignal | undefined;
}

/**
 * The root filesystem as a symlink farm of `contents`, like nixpkgs' buildEnv: each
 * entry of a content links to its store path; where several contents provide the same
 * directory it becomes a real directory and their entries are merged into it, at any
 * depth; for any other clash the earlier content wins. Top-level directories (/bin,
 * /etc, …) are always real, so that a container can add files next to the links (Docker
 * bind-mounts /etc/hosts). /tmp is a real directory with mode 1777.
 */
export async function rootfsEntries(contents: string[], opts: FarmOptions = {}): Promise<TarEntry[]> {
  const farm = new Farm(opts.closure ?? contents, opts.signal);
  const root: FarmDir = newDir(ROOT_DIR_MODE);
  root.children.set('tmp', newDir(0o1777));
  for (const c of contents) {
    const abs = posix.normalize(c);
    if (!farm.inside(abs)) throw new Error(`content ${c} is not in the image's closure`);
    try { await fs.lstat(abs); } catch { throw new Error(`content ${c} does not exist`); }
    // A content that is a single file, or a link out of the closure, has nothing to
    // link into /: it is in the store layers as it is.
    const real = await farm.resolve(abs);
    if (real === undefined || !(await farm.stat(real)).isDirectory()) continue;
    farm.stack.add(real);
    for (const name of await farm.list(real)) {
      if (name === 'nix') continue; // never shadow the store's parents
      await farm.add(root, name, join(abs, name), join(real, name), true, 1);
    }
    farm.stack.delete(real);
  }
  const out: TarEntry[] = [];
  const emit = (dir: FarmDir, prefix: string) => {
    for (const name of [...dir.children.keys()].sort(byUtf8)) {
      const node = dir.children.get(name)!;
      const rel = prefix ? `${prefix}/${name}` : name;
      if (node.kind === 'dir') { out.push({ type: 'directory', name: rel, mode: node.mode }); emit(node, rel); }
      else out.push({ type: 'symlink', name: rel, target: node.target });
    }
  };
  emit(root, '');
  return out;
}

const newDir = (mode: number): FarmDir => ({ kind: 'dir', mode, children: new Map(), from: [] });

/** What an entry of the closure is to the farm: a directory to merge, or a link's target. */
interface Kind {
  /** The real directory it is or leads to, inside the closure. */
  dir?: string | undefined;
  /** An absolute link target out of the closure, copied as it is. */
  out?: string | undefined;
}

class Farm {
  private readonly roots: Set<string>;
  /** Directories above the store paths (/, /nix, /nix/store): passed through, never read. */
  private readonly above = new Set<string>();
  /** What was read already: the store is immutable, and merges revisit the same directories. */
  private readonly stats = new Map<string, Stats>();
  private readonly links = new Map<string, string>();
  private readonly listings = new Map<string, string[]>();
  private readonly kinds = new Map<string, Kind>();
  /** Real directories being listed by the calls in progress: unfolding one again loops. */
  readonly stack = new Set<string>();
  private entries = 0;

  constructor(closure: Iterable<string>, private readonly signal: AbortSignal | undefined) {
    this.roots = new Set([...closure].map((p) => posix.normalize(p)));
    for (const r of this.roots) for (let p = posix.dirname(r); ; p = posix.dirname(p)) { this.above.add(p); if (p === '/') break; }
  }

  /** Whether the normalised absolute path `p` is a store path of the closure or below one. */
  inside(p: string): boolean {
    for (let i = p.indexOf('/', 1); i !== -1; i = p.indexOf('/', i + 1)) if (this.roots.has(p.slice(0, i))) return true;
    return this.roots.has(p);
  }

  async stat(p: string): Promise<Stats> {
    const hit = this.stats.get(p);
    if (hit) return hit;
    const st = await fs.lstat(p);
    if (!st.isFile()) this.stats.set(p, st);
    return st;
  }

  async list(real: string): Promise<string[]> {
    let names = this.listings.get(real);
    if (!names) { names = await sortedDir(real); this.listings.set(real, names); }
    return names;
  }

  private async readlink(p: string): Promise<string> {
    let t = this.links.get(p);
    if (t === undefined) { t = await fs.readlink(p); this.links.set(p, t); }
    return t;
  }

  /**
   * The real path `p` leads to with every symlink followed, or undefined if that leaves
   * the closure, loops, or leads nowhere. Only paths inside the closure are ever read;
   * the directories above the store are taken as they are named.
   */
  async resolve(p: string): Promise<string | undefined> {
    const todo = p.split('/').filter(Boolean).reverse();
    let done = '';
    let hops = 0;
    while (todo.length) {
      const part = todo.pop()!;
      if (part === '.') continue;
      if (part === '..') { done = posix.dirname(done || '/'); if (done === '/') done = ''; continue; }
      const next = `${done}/${part}`;
      if (!this.inside(next)) {
        if (!this.above.has(next)) return undefined;
        done = next;
        continue;
      }
      let st: Stats;
      try { st = await this.stat(next); } catch { return undefined; }
      if (st.isSymbolicLink()) {
        if (++hops > MAX_LINK_HOPS) return undefined;
        const target = await this.readlink(next);
        todo.push(...target.split('/').filter(Boolean).reverse());
        if (target.startsWith('/')) done = '';
      } else if (todo.length && !st.isDirectory()) {
        return undefined;
      } else {
        done = next;
      }
    }
    return done && this.inside(done) ? done : undefined;
  }

  /**
   * Adds `source` (a content's entry as named, whose real location is `real`) to
   * `parent` as `name`: a new link, a new or merged directory, or nothing (first wins).
   */
  async add(parent: FarmDir, name: string, source: string, real: string, forceDir: boolean, depth: number): Promise<void> {
    this.signal?.throwIfAborted();
    if (++this.entries > MAX_FARM_ENTRIES) {
      throw new BuildFailed(`the image's root filesystem would hold more than ${MAX_FARM_ENTRIES.toLocaleString('en')} entries: `
        + 'its contents link the same directories into each other without end, and merging them never stops');
    }
    // Cached kinds are taken without an await: the farm of a large image makes millions of these calls.
    const { dir, out } = this.kinds.get(real) ?? await this.kind(real);
    const target = out ?? source;
    const existing = parent.children.get(name);
    if (!existing) {
      if (dir !== undefined && forceDir && !this.stack.has(dir)) {
        const d = newDir(ROOT_DIR_MODE);
        parent.children.set(name, d);
        await this.fill(d, source, dir, depth);
      } else {
        parent.children.set(name, { kind: 'link', target, dir });
      }
      return;
    }
    // First wins over anything that is not a directory, and over a directory being
    // listed further up (merging it here would list it inside itself).
    if (dir === undefined || this.stack.has(dir)) return;
    let d: FarmDir;
    if (existing.kind === 'dir') d = existing;
    else if (existing.dir !== undefined && existing.dir !== dir && !this.stack.has(existing.dir)) {
      // Unfold the earlier content's directory link so both can be merged.
      d = newDir(ROOT_DIR_MODE);
      parent.children.set(name, d);
      await this.fill(d, existing.target, existing.dir, depth);
    } else return; // a file came first, or the same directory, or one being listed: it wins
    await this.fill(d, source, dir, depth);
  }

  /** `real` (an entry of the closure, not followed yet) as the farm sees it. */
  private async kind(real: string): Promise<Kind> {
    const st = await this.stat(real);
    const k: Kind = {};
    if (st.isDirectory()) k.dir = real;
    else if (st.isSymbolicLink()) {
      const to = await this.resolve(real);
      if (to !== undefined && (await this.stat(to)).isDirectory()) k.dir = to;
      else if (to === undefined) {
        // Copied as it is: an absolute link means the same anywhere in the image, and
        // the farm then names no host path the image does not hold.
        const raw = await this.readlink(real);
        if (raw.startsWith('/')) k.out = raw;
      }
    }
    this.kinds.set(real, k);
    return k;
  }

  /** Merges the entries of the real directory `real` (named `source`) into `d`. */
  private async fill(d: FarmDir, source: string, real: string, depth: number): Promise<void> {
    if (d.from.includes(real)) return;
    if (depth >= MAX_FARM_DEPTH) {
      throw new BuildFailed(`the image's root filesystem would nest merged directories deeper than ${MAX_FARM_DEPTH} levels (at ${source})`);
    }
    d.from.push(real);
    this.stack.add(real);
    for (const n of this.listings.get(real) ?? await this.list(real)) await this.add(d, n, `${source}/${n}`, `${real}/${n}`, false, depth + 1);
    this.stack.delete(real);
  }
}
