// Where an image comes from: repository name (and tag) → what eval.nix evaluates. Three
// origins, looked for in this order:
//  1. an image file, `<images>/NAME.nix` or `<images>/NAME/default.nix` (resolve.ts);
//  2. a flake output: `<images>/NAME/flake.nix`'s packages.<system>.default, or, for a
//     one-segment NAME, `<images>/flake.nix`'s packages.<system>.NAME (else
//     legacyPackages.<system>.NAME);
//  3. with --packages, a package list, as in Nixery: `git/htop` is the image whose
//     contents are the attributes `git` and `htop` of the package set; a dot selects a
//     nested attribute; the list is sorted and deduplicated, so `htop/git` is the same
//     image; a first `shell` adds bashInteractive, coreutils, moreutils and nano.
// A package set from a git repository is pinned by the tag: `latest` is HEAD of the
// default branch, a branch or git tag is resolved on each pull, a full commit is itself.
// A directory that is a git work tree is pinned too, but its `latest` is the directory
// as it is, uncommitted edits and all, as before it was one: any other tag is resolved
// in its repository and fetched from there.
//
// What a client is told never shows where the package set lives (a directory, a git
// URL that may hold credentials): it is `the package set`, its files `<packages>/…`,
// also in Nix's and git's messages (hide()).
//
// Request data reaches Nix only as --argstr values (names as JSON text) and git only as
// argv after `--`, never as source or a shell line.
//
// Room: build/origins. Of build, imports only nix/ and the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { existsSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';
import { spawnTied } from '../nix/child.js';
import { BuildFailed } from '../errors.js';
import { hidePaths, hostForms, type FlakeFile, type ImageFile } from './resolve.js';

export interface Origin {
  kind: 'file' | 'flake' | 'packages';
  /** What is evaluated, in the user's terms: `sub/app.nix`, `flake.nix#hello`, `packages git htop`. */
  name: string;
  /** Identity of what is evaluated as cheaply observable: a new key means a new evaluation. */
  key: string;
  /** The file whose version `key` names, if any (Evaluator.invalidate spares its evaluation). */
  path?: string | undefined;
  /** eval.nix's --argstr pairs. */
  args: Record<string, string>;
  /** Flakes are enabled for this evaluation only. */
  flakes: boolean;
  /** Evaluation cache slot: one per repository, and per revision of a pinned package set. */
  slot: string;
  /** Takes this origin's host paths out of a message a client will read (a package set's; hideImagesDir does the images directory's). */
  hide: (text: string) => string;
}

/** Images under --images: hideImagesDir is all they need. */
const same = (text: string) => text;

export function fileOrigin(repo: string, file: ImageFile): Origin {
  return { kind: 'file', name: file.name, key: file.key, path: file.path, args: { file: file.path }, flakes: false, slot: repo, hide: same };
}

export function flakeOrigin(repo: string, flake: FlakeFile): Origin {
  return {
    kind: 'flake', name: `${flake.name}#${flake.attr}`, key: flake.key, path: flake.path,
    args: { flake: flake.dir, attr: flake.attr }, flakes: true, slot: repo, hide: same,
  };
}

/** A repository name as a package list: attribute paths sorted and deduplicated, and whether `shell` leads. */
export function packageList(repo: string): { names: string[]; shell: boolean } {
  const parts = repo.split('/');
  const shell = parts[0] === 'shell';
  return { names: [...new Set(shell ? parts.slice(1) : parts)].sort(), shell };
}

export function packagesOrigin(repo: string, source: PackageSource, rev: string | undefined): Origin {
  const { names, shell } = packageList(repo);
  // A work tree's commits come from its repository; its `latest` is the directory.
  const git = rev !== undefined && source.repository !== undefined;
  const args: Record<string, string> = { packages: git ? 'git' : source.kind, source: git ? source.repository! : source.location, names: JSON.stringify(names) };
  if (shell) args.shell = '1';
  if (rev !== undefined) args.rev = rev;
  const list = `${shell ? 'shell ' : ''}${names.join(' ')}`;
  return {
    kind: 'packages', name: `packages ${list}${rev ? ` at ${rev.slice(0, 12)}` : ''}`, key: `${source.spec}@${rev ?? ''}`,
    args, flakes: false, slot: `${repo}\0${rev ?? ''}`, hide: (text) => source.hide(text),
  };
}

/** A full git commit: a tag that names itself, immutable. */
export const COMMIT_TAG = /^[0-9a-f]{40}$/;

/** What a client's messages call the package set's location. */
export const PACKAGES_LABEL = '<packages>';

/** The package set of --packages: a path, `<nixpkgs>` from NIX_PATH, or a git repository. */
export class PackageSource {
  private constructor(
    readonly spec: string, readonly kind: 'path' | 'nixpath' | 'git', readonly location: string,
    /** Of a directory that is a git work tree: its repository's `file://` URL, whence its commits. */
    readonly repository: string | undefined,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  /**
   * `<name>`: that entry of NIX_PATH; `git+file:///dir`, `git+https://…` (any `git+` URL):
   * a git repository, pinned by tags; anything else: a file or directory on this host,
   * pinned by tags too if it holds `.git`. `env` is the environment Nix runs with (its
   * NIX_PATH, for hide()).
   */
  static parse(spec: string, env: NodeJS.ProcessEnv = process.env): PackageSource {
    const nixPath = /^<([\w.+-]+(?:\/[\w.+-]+)*)>$/.exec(spec);
    if (nixPath) return new PackageSource(spec, 'nixpath', nixPath[1]!, undefined, env);
    if (spec.startsWith('git+')) {
      const url = spec.slice(4);
      if (!/^(file|https?|ssh):\/\//.test(url)) throw new Error(`--packages ${spec}: a git source is git+file:///path, git+https://… or git+ssh://…`);
      return new PackageSource(spec, 'git', url, undefined, env);
    }
    if (!spec) throw new Error('--packages must name a package set');
    const location = resolvePath(spec);
    // `.git` is a directory, or a file in a linked work tree or a submodule.
    const repository = existsSync(join(location, '.git')) ? pathToFileURL(location).href : undefined;
    return new PackageSource(spec, 'path', location, repository, env);
  }

  /** Whether tags other than `latest` and hash tags name revisions of it. */
  get pinned(): boolean { return this.kind === 'git' || this.repository !== undefined; }

  /** `text` with every form of the package set's location named PACKAGES_LABEL instead. */
  hide(text: string): string {
    return hidePaths(text, this.forms(), PACKAGES_LABEL);
  }

  /** The ways Nix and git may quote the location: as given, resolved, real, as a URL. */
  private forms(): string[] {
    if (this.kind === 'path') {
      const paths = hostForms(this.location);
      return [...paths, ...paths.map((p) => pathToFileURL(p).href)];
    }
    if (this.kind === 'nixpath') {
      const found = nixPathEntry(this.location, this.env.NIX_PATH ?? '');
      return found ? hostForms(found) : [];
    }
    const url = this.location;
    if (!url.startsWith('file://')) return [url];
    let path: string;
    try { path = decodeURIComponent(new URL(url).pathname); } catch { return [url]; }
    return [url, ...hostForms(path)];
  }

  /**
   * The commit `tag` names: `latest` is HEAD of the default branch, a full commit is
   * itself, else a branch or a git tag of that name, as listed at most `maxAgeMs` ago.
   * Undefined for a source that is not git (only `latest` and hash tags name its
   * images). Throws BuildFailed when git cannot say, and UnknownRevision when the
   * repository has no such name.
   */
  async revision(tag: string, maxAgeMs: number): Promise<string | undefined> {
    if (!this.pinned || (this.kind === 'path' && tag === 'latest')) return undefined;
    if (COMMIT_TAG.test(tag)) return tag;
    const found = await this.refs(maxAgeMs);
    // A branch wins over a tag of the same name; an annotated tag is its commit (^{}).
    const sha = tag === 'latest' ? found.get('HEAD') : found.get(`refs/heads/${tag}`) ?? found.get(`refs/tags/${tag}^{}`) ?? found.get(`refs/tags/${tag}`);
    if (!sha) throw new UnknownRevision(tag);
    return sha;
  }

  private listed: { refs: Map<string, string>; expires: number } | undefined;
  private listing: Promise<Map<string, string>> | undefined;

  /**
   * HEAD, the branches and the tags, from one `git ls-remote` that every tag asked for
   * within `maxAgeMs` shares, concurrent callers included: pulls of made-up tags cost
   * one git process per --eval-ttl, not one each.
   */
  private refs(maxAgeMs: number): Promise<Map<string, string>> {
    if (this.listed && Date.now() < this.listed.expires) return Promise.resolve(this.listed.refs);
    this.listing ??= git(['ls-remote', '--', this.location, 'HEAD', 'refs/heads/*', 'refs/tags/*'], (t) => this.hide(t)).then((out) => {
      const refs = new Map(out.split('\n').filter(Boolean).map((l) => { const [sha, ref] = l.split('\t'); return [ref!, sha!] as const; }));
      this.listed = { refs, expires: Date.now() + maxAgeMs };
      return refs;
    }).finally(() => { this.listing = undefined; });
    return this.listing;
  }
}

/** A tag that names no branch, git tag or commit of the package set's repository. */
export class UnknownRevision extends Error {
  constructor(readonly tag: string) { super(tag); }
}

const GIT_TIMEOUT_MS = 60_000;

/** `nixpkgs` → where NIX_PATH (`nixpkgs=/p:/q`) finds it, as Nix's findFile does; undefined if nowhere. */
function nixPathEntry(name: string, nixPath: string): string | undefined {
  // `:` separates entries, except in a URL's `://` (URL entries are downloads, not host paths).
  for (const entry of nixPath.split(/:(?!\/\/)/)) {
    const eq = entry.indexOf('=');
    const prefix = eq < 0 ? '' : entry.slice(0, eq);
    const dir = eq < 0 ? entry : entry.slice(eq + 1);
    if (!dir.startsWith('/')) continue;
    let candidate: string | undefined;
    if (prefix === '') candidate = join(dir, name);
    else if (name === prefix) candidate = dir;
    else if (name.startsWith(`${prefix}/`)) candidate = join(dir, name.slice(prefix.length + 1));
    if (candidate !== undefined && existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** Runs git; a failure's message passes through `hide` (it quotes the repository's location). */
function git(args: string[], hide: (text: string) => string): Promise<string> {
  return new Promise((resolve, reject) => {
    // No prompt for credentials: a server has nobody to answer it.
    const child = spawnTied('git', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GIT_TERMINAL_PROMPT: '0' }, deathSignal: 'SIGKILL' });
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => { if (out.length < 1 << 20) out += c.toString(); });
    child.stderr!.on('data', (c: Buffer) => { if (err.length < 8192) err += c.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), GIT_TIMEOUT_MS);
    child.on('error', (e) => { clearTimeout(timer); reject(new BuildFailed(`cannot run git: ${e.message}`)); });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      // The first lines say what went wrong (`fatal: … does not appear to be a git repository`), the rest advise.
      else reject(new BuildFailed(`git ${args[0]} of the package set failed: ${hide(err.split('\n').filter((l) => l.trim()).slice(0, 3).join(' ').trim()) || `exit ${code}`}`));
    });
  });
}

/**
 * Up to three of `names` closest to `part` by edit distance (at most a third of its
 * length, and 3): the "did you mean" of an unknown package. Lower case compares.
 */
export function closest(part: string, names: string[]): string[] {
  const p = part.toLowerCase();
  const max = Math.min(3, Math.max(1, Math.floor(p.length / 3)));
  const scored: [number, string][] = [];
  for (const n of names.slice(0, 50_000)) {
    const d = distance(p, n.toLowerCase(), max);
    if (d <= max) scored.push([d, n]);
  }
  return scored.sort((a, b) => a[0] - b[0] || a[1].localeCompare(b[1])).slice(0, 3).map(([, n]) => n);
}

/** Levenshtein distance of a and b, or max + 1 once it is sure to exceed max. */
function distance(a: string, b: string, max: number): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let best = i;
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      best = Math.min(best, cur[j]!);
    }
    if (best > max) return max + 1;
    prev = cur;
  }
  return prev[b.length]!;
}
