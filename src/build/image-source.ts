// The seam through which the HTTP API reaches build-on-pull. A repository that an
// ImageSource owns is read-only: its manifests come from the source (which writes them
// into the blob store), and pushes to it are refused. Every other repository is plain
// storage. Knows nothing of HTTP; imports types only. With errors.ts, the only module of
// the build room that src/registry imports (the types of jobs/ it serves are re-exported
// here); source.ts implements it.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import type { BuildLogHandle, JobView } from './jobs/jobs.js';

export type { BuildLogHandle, JobView } from './jobs/jobs.js';

export interface ImageSource {
  /** Whether `repo` is backed by an expression or a flake (and so read-only). */
  owns(repo: string): boolean;
  /**
   * Whether the source answers pulls of `repo`: what it owns, and with --packages the
   * package lists (which stay open to pushes: a pushed repository is plain storage).
   */
  serves(repo: string): Promise<boolean>;
  /** What `repo` is built from (the web page says so); undefined: nothing here, plain storage. */
  madeFrom?(repo: string): Promise<'image file' | 'flake' | 'package list' | undefined>;
  /** The names it serves that can be listed (image files, the top-level flake's outputs), sorted, built or not. */
  names?(): string[];
  /**
   * Produces (building if needed) the manifest for `ref` in `repo`, already stored and
   * recorded in the blob store. `accepts` tells which manifest media types the client
   * takes. Throws the errors of ./errors.ts for what the user must see (evaluation or
   * build errors). Returns undefined to fall through to plain storage. A build that
   * takes longer than the source lets a request wait (--pull-wait) goes on as a job,
   * and the request gets StillBuilding.
   */
  resolve(repo: string, ref: Reference, accepts: (mediaType: string) => boolean): Promise<Descriptor | undefined>;
  /** Tags `repo` always answers, built or not (listed by tags/list before any build). */
  standingTags(repo: string): string[];
  /** The running and recent builds, newest first (of every replica, where the index is shared). */
  builds(): Promise<JobView[]>;
  /** A running or recent build (of any replica, where the index is shared). */
  build(id: string): Promise<JobView | undefined>;
  /**
   * Starts building `repo:tag` (latest or a hash tag) as a job, or joins the one under
   * way; returns at once. Throws as resolve() does for what cannot be built.
   */
  startBuild(repo: string, tag: string): Promise<JobView>;
  /** The log of a running or recent build: how to read it, and how to wait for it to grow. */
  buildLog(id: string): Promise<BuildLogHandle | undefined>;
  /** Counters for operators (builds, evaluations, queue, Nix processes). */
  stats(): Record<string, unknown>;
  /** Calls `listener` as each build ends, with its result and how long it took (metrics). */
  onBuildFinished(listener: (result: 'succeeded' | 'failed', seconds: number) => void): void;
  /**
   * Whether Nix can build here, for readiness probes: undefined where no expression is
   * served (a plain registry needs no Nix); else the verdict as it stands, after asking
   * for a probe if there is none yet or a failure is old enough to look again.
   */
  nixReadiness(): NixStatus | undefined;
  /** Stops watching files; builds under way are left to the process's end. */
  close(): Promise<void>;
}

/** Nix's verdict (nix/nix-health.ts): `checking` and `unknown` are not failures. */
export interface NixStatus { state: 'unknown' | 'checking' | 'ok' | 'failed'; problem?: string; fix?: string }
