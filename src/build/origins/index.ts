// Name → origin, the first stage of a pull: what a repository name (and tag) is built
// from, and so whether the build room serves it at all. Sub-room origins/ owns the
// images directory and the package set of --packages:
//  - resolve.ts: name → image file or flake, never a file outside --images;
//  - origins.ts: the three kinds of Origin (image file, flake output, package list) and
//    the package set, pinned by git revisions;
//  - watch.ts: what changes under --images;
//  - this module: the order in which they are looked for, what the top-level flake has,
//    and which tags a name has.
// It knows nothing of evaluations, builds or storage: whether a name was pushed to, which
// makes a would-be package list plain storage, it asks of its caller.
//
// Room: build/origins. Of build, imports only nix/ and the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { FlakeOutputMissing, NoImageExpression, TagNotServed } from '../errors.js';
import { evaluateImage } from '../nix/nix.js';
import { PackageSource, UnknownRevision, fileOrigin, flakeOrigin, packagesOrigin, type Origin } from './origins.js';
import { resolveFlake, resolveImageFile, resolveTopFlake } from './resolve.js';
import { hasFlake, listImages } from './watch.js';

export interface OriginsOptions {
  /** Directory of image expressions (--images). */
  images: string;
  /** --packages SOURCE: names no image file or flake serves are package lists of this set. */
  packages?: string | undefined;
  /** A pinned package set's refs are listed at most this often (--eval-ttl). */
  evalTtlMs: number;
  /** Whether `repo` is plain storage: pushed to, and no image built in it here. */
  pushedTo: (repo: string) => Promise<boolean>;
  nixEnv?: NodeJS.ProcessEnv | undefined;
  log?: Logger | undefined;
}

export class Origins {
  readonly images: string;
  private readonly packages: PackageSource | undefined;
  /** Whether --images holds a flake.nix anywhere (changed() and settled() keep it current). */
  private flakes = true;
  /** One-segment names the top-level flake turned out not to have (until the next change). */
  private readonly flakeMissing = new LRUCache<string, true>({ max: 10_000 });
  /** The top-level flake's output names, as of the flake.nix version `key`. */
  private flakeNames: { key: string; names: Set<string> } | undefined;

  constructor(private readonly o: OriginsOptions) {
    this.images = o.images;
    this.packages = o.packages !== undefined ? PackageSource.parse(o.packages, o.nixEnv) : undefined;
  }

  /** What `repo` is built from under --images: its image file, else a flake's output. */
  find(repo: string): Origin | undefined {
    const file = resolveImageFile(this.images, repo);
    if (file) return fileOrigin(repo, file);
    // Most images directories hold no flake: a plain repository's pull looks for none.
    const flake = this.flakes ? resolveFlake(this.images, repo) : undefined;
    return flake && flakeOrigin(repo, flake);
  }

  /** find(), except a flake output not known to be missing. */
  of(repo: string): Origin | undefined {
    const o = this.find(repo);
    if (o?.kind !== 'flake' || o.args.attr === 'default') return o;
    if (this.flakeMissing.has(repo)) return undefined;
    const known = this.flakeNames;
    return !known || known.key !== o.key || known.names.has(repo) ? o : undefined;
  }

  /** Whether pulls of `repo` are answered here: an image file or flake, or a package list. */
  async serves(repo: string): Promise<boolean> {
    return this.of(repo) !== undefined || await this.packageList(repo);
  }

  /**
   * Whether `repo`, a name no image file or flake serves (the caller has looked), is a
   * package list: --packages is on and nobody pushed to it.
   */
  private async packageList(repo: string): Promise<boolean> {
    return this.packages !== undefined && !await this.o.pushedTo(repo);
  }

  /** What `repo:tag` is built from now (for a pinned package set, at the commit the tag names). */
  async at(repo: string, tag: string): Promise<Origin> {
    const o = this.of(repo);
    if (o) return o;
    if (!await this.packageList(repo)) throw new NoImageExpression(`no image expression for ${repo}`, { name: repo });
    return packagesOrigin(repo, this.packages!, await this.revision(tag));
  }

  /** Throws TagNotServed unless `tag` (neither a hash nor `latest`) names a revision of a pinned package set. */
  checkTag(repo: string, tag: string): void {
    if (tag === 'latest') return;
    const expression = this.of(repo) !== undefined;
    if (expression || !this.packages?.pinned) {
      // Where the package set lives is the operator's business, not the client's.
      throw new TagNotServed(expression
        ? `${repo} is built from a Nix expression: its tags are latest and the hashes of built images, not ${tag}`
        : `${repo} is a package list: its tags are latest and the hashes of built images, not ${tag} `
          + '(tags pin a package set only when it is a git repository)', { tag });
    }
  }

  /** The commit a tag names in a pinned package set (refs listed within --eval-ttl); undefined for other sets. */
  private async revision(tag: string): Promise<string | undefined> {
    try {
      return await this.packages!.revision(tag, this.o.evalTtlMs);
    } catch (e) {
      if (e instanceof UnknownRevision) {
        throw new TagNotServed(`the package set has no branch, tag or commit ${tag}`, { tag });
      }
      throw e;
    }
  }

  /**
   * Whether a pull that failed with `e` is to be asked again as a package list: a flake
   * at the top of --images without this output, once (the name is then known missing).
   */
  retryAsPackageList(repo: string, e: unknown): boolean {
    if (!(e instanceof FlakeOutputMissing) || !this.packages || this.flakeMissing.has(repo)) return false;
    this.flakeMissing.set(repo, true);
    return true;
  }

  /** The file `path` under --images changed: seen at once, so that the next pull finds a new flake. */
  changed(path: string): void {
    this.flakeMissing.clear();
    // A removed flake is noticed when the directory has settled.
    if (path.endsWith('/flake.nix')) this.flakes = true;
  }

  /** After start and after changes: whether there are flakes, and the top-level flake's outputs. */
  async settled(): Promise<void> {
    this.flakes = hasFlake(this.images);
    await this.readFlakeNames();
  }

  /** The names --prebuild builds: every image file's, and the top-level flake's outputs. */
  names(): string[] {
    return [...new Set([...listImages(this.images), ...(this.flakeNames?.names ?? [])])];
  }

  /**
   * The output names of `<images>/flake.nix`, so that a one-segment name it does not
   * have is a package list, or a plain repository one may push to. Until they are known
   * every one-segment name is the flake's.
   */
  private async readFlakeNames(): Promise<void> {
    const top = resolveTopFlake(this.images);
    if (!top) { this.flakeNames = undefined; return; }
    try {
      const r = await evaluateImage({ flake: top.dir, list: '1' }, { env: this.o.nixEnv, timeoutMs: 120_000, flakes: true });
      this.flakeNames = { key: top.key, names: new Set(r.outputs ?? []) };
    } catch (e) {
      this.o.log?.warn({ error: (e as Error).message.slice(0, 2000) }, 'cannot list the outputs of flake.nix in --images');
    }
  }
}
