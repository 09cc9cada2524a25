// The seam through which the HTTP API reaches build-on-pull. A repository that an
// ImageSource owns is read-only: its manifests come from the source (which writes them
// into the blob store), and pushes to it are refused. Every other repository is plain
// storage. Knows nothing of HTTP; imports types only.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import type { Descriptor } from '../oci/descriptor.js';
import type { Reference } from '../oci/reference.js';
import type { BuildRecord } from './logs.js';

export interface ImageSource {
  /** Whether `repo` is backed by an expression (and so read-only). */
  owns(repo: string): boolean;
  /**
   * Produces (building if needed) the manifest for `ref` in `repo`, already stored and
   * recorded in the blob store. `accepts` tells which manifest media types the client
   * takes. Throws the errors of ./errors.ts for what the user must see (evaluation or
   * build errors). Returns undefined to fall through to plain storage.
   */
  resolve(repo: string, ref: Reference, accepts: (mediaType: string) => boolean): Promise<Descriptor | undefined>;
  /** Tags `repo` always answers, built or not (listed by tags/list before any build). */
  standingTags(repo: string): string[];
  /** The recent builds, newest first. */
  builds(): BuildRecord[];
  /** The log file of a recent build, or undefined if there is no such build. */
  buildLogPath(id: string): string | undefined;
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
}

/** Nix's verdict (nix-health.ts): `checking` and `unknown` are not failures. */
export interface NixStatus { state: 'unknown' | 'checking' | 'ok' | 'failed'; problem?: string; fix?: string }
