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
//
// Request data reaches Nix only as --argstr values (names as JSON text) and git only as
// argv after `--`, never as source or a shell line.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { resolve as resolvePath } from 'node:path';
import { spawnTied } from './child.js';
import { BuildFailed } from './errors.js';
import type { FlakeFile, ImageFile } from './resolve.js';

export interface Origin {
  kind: 'file' | 'flake' | 'packages';
  /** What is evaluated, in the user's terms: `sub/app.nix`, `flake.nix#hello`, `packages git htop`. */
  name: string;
  /** Identity of what is evaluated as cheaply observable: a new key means a new evaluation. */
  key: string;
  /** The file whose version `key` names, if any (Builder.invalidate spares its evaluation). */
  path?: string | undefined;
  /** eval.nix's --argstr pairs. */
  args: Record<string, string>;
  /** Flakes are enabled for this evaluation only. */
  flakes: boolean;
  /** Evaluation cache slot: one per repository, and per revision of a pinned package set. */
  slot: string;
}

export function fileOrigin(repo: string, file: ImageFile): Origin {
  return { kind: 'file', name: file.name, key: file.key, path: file.path, args: { file: file.path }, flakes: false, slot: repo };
}

export function flakeOrigin(repo: string, flake: FlakeFile): Origin {
  return {
    kind: 'flake', name: `${flake.name}#${flake.attr}`, key: flake.key, path: flake.path,
    args: { flake: flake.dir, attr: flake.attr }, flakes: true, slot: repo,
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
  const args: Record<string, string> = { packages: source.kind, source: source.location, names: JSON.stringify(names) };
  if (shell) args.shell = '1';
  if (rev !== undefined) args.rev = rev;
  const list = `${shell ? 'shell ' : ''}${names.join(' ')}`;
  return {
    kind: 'packages', name: `packages ${list}${rev ? ` at ${rev.slice(0, 12)}` : ''}`, key: `${source.spec}@${rev ?? ''}`,
    args, flakes: false, slot: `${repo}\0${rev ?? ''}`,
  };
}

/** A full git commit: a tag that names itself, immutable. */
export const COMMIT_TAG = /^[0-9a-f]{40}$/;

/** The package set of --packages: a path, `<nixpkgs>` from NIX_PATH, or a git repository. */
export class PackageSource {
  private constructor(readonly spec: string, readonly kind: 'path' | 'nixpath' | 'git', readonly location: string) {}

  /**
   * `<name>`: that entry of NIX_PATH; `git+file:///dir`, `git+https://…` (any `git+` URL):
   * a git repository, pinned by tags; anything else: a file or directory on this host.
   */
  static parse(spec: string): PackageSource {
    const nixPath = /^<([\w.+-]+(?:\/[\w.+-]+)*)>$/.exec(spec);
    if (nixPath) return new PackageSource(spec, 'nixpath', nixPath[1]!);
    if (spec.startsWith('git+')) {
      const url = spec.slice(4);
      if (!/^(file|https?|ssh):\/\//.test(url)) throw new Error(`--packages ${spec}: a git source is git+file:///path, git+https://… or git+ssh://…`);
      return new PackageSource(spec, 'git', url);
    }
    if (!spec) throw new Error('--packages must name a package set');
    return new PackageSource(spec, 'path', resolvePath(spec));
  }

  get pinned(): boolean { return this.kind === 'git'; }

  /**
   * The commit `tag` names: `latest` is HEAD of the default branch, a full commit is
   * itself, else a branch or a git tag of that name, as listed at most `maxAgeMs` ago.
   * Undefined for a source that is not git (only `latest` and hash tags name its
   * images). Throws BuildFailed when git cannot say, and UnknownRevision when the
   * repository has no such name.
   */
  async revision(tag: string, maxAgeMs: number): Promise<string | undefined> {
    if (!this.pinned) return undefined;
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
    this.listing ??= git(['ls-remote', '--', this.location, 'HEAD', 'refs/heads/*', 'refs/tags/*']).then((out) => {
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

function git(args: string[]): Promise<string> {
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
      else reject(new BuildFailed(`git ${args[0]} of the package set failed: ${err.trim().split('\n').slice(-3).join(' ') || `exit ${code}`}`));
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
