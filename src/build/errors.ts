// What can go wrong between a repository name and a built image, in the builder's own
// terms. Each error's message is what the user is shown, and `detail` the facts behind
// it; src/registry/errors.ts alone decides the OCI code and status they are answered with.
//
// Room: build, shared by all of it: imports nothing else of build. May import src/blobs and src/oci;
// never src/registry.

export abstract class BuildError extends Error {
  constructor(message: string, readonly detail: Record<string, unknown> = {}) { super(message); }
}

/** No image expression backs this repository name. */
export class NoImageExpression extends BuildError {}

/** A flake has no output of this name (origins/): a package list may serve it instead. */
export class FlakeOutputMissing extends NoImageExpression {}

/** A package list names attributes the package set does not have. */
export class UnknownPackages extends NoImageExpression {}

/** The expression did not evaluate (Nix's essential error lines are the message). */
export class EvaluationFailed extends BuildError {}

/** The expression evaluated to something that is not a valid image spec. */
export class InvalidImageSpec extends BuildError {}

/** A tag that the expression does not (or no longer) yield. */
export class TagNotServed extends BuildError {}

/** Realisation, assembly or ingestion failed; the message links the build log. */
export class BuildFailed extends BuildError {}

/** An image archive that a derivation produced cannot be ingested. */
export class ArchiveError extends BuildError {
  constructor(message: string) { super(message); }
}

/**
 * Nix cannot build on this machine at all (not installed, no build users, sandbox
 * impossible, …): `problem` says what is wrong and `fix` what to do about it.
 */
export class NixUnavailable extends BuildError {
  constructor(readonly problem: string, readonly fix: string) {
    super(`this server cannot build images: ${problem}. To fix it: ${fix}`, { problem, fix });
  }
}

/**
 * A pull waited --pull-wait for a build that goes on: ask again in `retryAfterSeconds`.
 * Not a failure of the build, which the next request joins or finds done.
 */
export class StillBuilding extends BuildError {
  constructor(message: string, readonly retryAfterSeconds: number, detail: Record<string, unknown> = {}) { super(message, detail); }
}

/** Too many builds are running or queued to take another one now. */
export class BuildQueueFull extends BuildError {
  readonly retryAfterSeconds = 10;
}
