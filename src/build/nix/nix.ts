// The one Nix adapter: every nix-instantiate / nix-store process nixreg starts is spawned
// here, with argv arrays only (never a shell), so request data cannot reach Nix source
// or a command line, and so the processes can be counted (tests assert that serving an
// already-built hash starts none).
//
// Sub-room nix/ owns everything nixreg asks of Nix and of the processes it starts: this
// module (nix-instantiate and nix-store), eval.nix and probe.nix (read at run time from
// beside this module's source, see nixFile()), what Nix's errors mean (nix-errors.ts),
// whether Nix can build here (nix-health.ts), the GC roots of builds (roots.ts) and
// every child process's tie to nixreg's life (child.ts). It knows no stage of the
// pipeline: what to evaluate or realise comes in as arguments.
//
// Room: build/nix, the Nix adapter. Of build, imports only the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { spawnTied } from './child.js';
import { describeError, essentialError, readJsonLog } from './nix-errors.js';
import type { StorePathInfo } from '../types.js';

/**
 * Nix files ship as source files (tsc does not copy .nix files): from dist/src/build/nix
 * they are four levels up, then src/build/nix; from src/build/nix (ts-node style runs)
 * they are beside this module. The Dockerfile copies them to the same place.
 */
function nixFile(name: string): string {
  const candidates = [new URL(`../../../../src/build/nix/${name}`, import.meta.url), new URL(`./${name}`, import.meta.url)]
    .map((u) => fileURLToPath(u));
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}

/** The helper expression that evaluates an image file (see there). */
export const EVAL_NIX = nixFile('eval.nix');
/** The derivation that checks whether Nix can build here (nix-health.ts). */
export const PROBE_NIX = nixFile('probe.nix');

let spawned = 0;
let probes = 0;
/** Nix processes started so far for images (evaluations, builds, closures). */
export function nixProcessCount(): number { return spawned; }
/** Nix processes started so far by the health probe, counted apart from the images' own. */
export function probeProcessCount(): number { return probes; }

export class NixError extends Error {
  constructor(message: string, readonly stderr: string, readonly code: number | null, readonly timedOut = false) {
    super(message);
  }
}

export interface NixRunOptions {
  env?: NodeJS.ProcessEnv | undefined;
  timeoutMs?: number | undefined;
  /** Receives stderr as it arrives (build logs, progress). */
  onStderr?: ((chunk: Buffer) => void) | undefined;
  /** Run for the health probe, not for an image (see probeProcessCount). */
  probe?: boolean | undefined;
}

interface RunNixOptions extends NixRunOptions {
  /** stderr is internal-json (nix-errors.ts): the error comes from its record, from files under `userDirs` first. */
  jsonLog?: { userDirs: string[] } | undefined;
  /** Of stderr, the tail this long is kept (default 1 MiB). */
  stderrBytes?: number | undefined;
}

/** Runs one Nix command; resolves with stdout, rejects with NixError carrying stderr. */
export function runNix(cmd: 'nix-instantiate' | 'nix-store', args: string[], opts: RunNixOptions = {}): Promise<string> {
  const keep = opts.stderrBytes ?? 1 << 20;
  if (opts.probe) probes++; else spawned++;
  return new Promise((resolve, reject) => {
    // detached: a timeout kills the whole process group. SIGTERM if nixreg dies: as for
    // a timeout's SIGINT, Nix then stops its builders and releases its locks.
    const child = spawnTied(cmd, args, {
      env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true, deathSignal: 'SIGTERM',
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let errBytes = 0;
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => {
      opts.onStderr?.(c);
      // Keep the tail only: a chatty build must not grow memory without bound.
      err.push(c);
      errBytes += c.length;
      while (errBytes > keep && err.length > 1) errBytes -= err.shift()!.length;
    });
    let timedOut = false;
    let killer: NodeJS.Timeout | undefined;
    const signal = (sig: NodeJS.Signals) => { try { process.kill(-child.pid!, sig); } catch { child.kill(sig); } };
    // SIGINT first: Nix then kills its builders (which run in sessions of their own, out
    // of reach of our process group) and releases its locks; SIGKILL if it lingers.
    const timer = opts.timeoutMs ? setTimeout(() => {
      timedOut = true;
      signal('SIGINT');
      killer = setTimeout(() => signal('SIGKILL'), 5000);
    }, opts.timeoutMs) : undefined;
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(new NixError(`cannot run ${cmd}: ${e.message}`, '', null));
    });
    child.on('close', (code) => {
      if (timer) clearTimeout(timer);
      if (killer) clearTimeout(killer);
      const { stderr, message } = failure(Buffer.concat(err).toString(), opts.jsonLog);
      if (timedOut) reject(new NixError(`${cmd} timed out after ${Math.round(opts.timeoutMs! / 1000)} s`, stderr, code, true));
      else if (code !== 0) reject(new NixError(message || `${cmd} exited with code ${code}`, stderr, code));
      else resolve(Buffer.concat(out).toString());
    });
  });
}

/**
 * Nix names nixreg's own expressions by their path in traces; that path says where
 * nixreg is installed on the host, which is no business of a client.
 */
function hideInstallPaths(text: string): string {
  return text.split(EVAL_NIX).join('<nixreg>/eval.nix').split(PROBE_NIX).join('<nixreg>/probe.nix');
}

/** Nix's stderr as readable text, and the message of its failure (nix-errors.ts). */
function failure(raw: string, json: RunNixOptions['jsonLog']): { stderr: string; message: string } {
  if (!json) {
    const stderr = hideInstallPaths(raw);
    return { stderr, message: essentialError(stderr) };
  }
  const { text, error } = readJsonLog(raw);
  const mine = (f: string) => json.userDirs.some((d) => f.startsWith(`${d}/`));
  const stderr = hideInstallPaths(text);
  return { stderr, message: error ? hideInstallPaths(describeError(error, [EVAL_NIX, PROBE_NIX], mine)) : essentialError(stderr) };
}

/** What an origin lacks (eval.nix answers this instead of an image). */
export interface EvalMissing {
  /** The flake has no such output. */
  output?: string;
  /** The package set has no such names: the part not found, and names beside it. */
  packages?: { name: string; part: string; near: string[] }[];
}

/** The raw result of eval.nix (see there). */
export interface EvalJSON {
  missing?: EvalMissing;
  /** A flake's output names (list mode). */
  outputs?: string[];
  kind: 'spec' | 'derivation' | 'list';
  keys: string[];
  config: unknown;
  configType: string;
  configRefs: string[];
  name: unknown;
  maxLayers: unknown;
  created: unknown;
  architecture: unknown;
  system: string;
  contents: { drv: string; out: string; name: string }[];
  imagePath: string;
}

/**
 * Evaluates an image with the helper expression; `args` are its `--argstr` pairs
 * (origins/origins.ts). Flakes are enabled for this one call where `flakes` says so, never
 * in the user's settings. An error is placed in the user's files, those under `userDirs`,
 * where the trace allows (nix-errors.ts).
 */
export async function evaluateImage(args: Record<string, string>, opts: NixRunOptions & { flakes?: boolean; userDirs?: string[] } = {}): Promise<EvalJSON> {
  // The error as a record, with the whole trace: its frames find the user's own line
  // where Nix gives the error none (nix-errors.ts). A trace of max-call-depth frames
  // takes a few MiB, hence the larger tail kept.
  const argv = ['--eval', '--strict', '--json', '--read-write-mode', '--log-format', 'internal-json', '--show-trace'];
  if (opts.flakes) argv.push('--extra-experimental-features', 'nix-command flakes');
  argv.push(EVAL_NIX);
  for (const [k, v] of Object.entries(args)) argv.push('--argstr', k, v);
  const run = { ...opts, jsonLog: { userDirs: opts.userDirs ?? [] }, stderrBytes: 16 << 20 };
  return JSON.parse(await runNix('nix-instantiate', argv, run)) as EvalJSON;
}

/**
 * Builds derivations, each output registered as an (indirect) GC root under `rootBase`
 * (Nix names them rootBase, rootBase-1, …) so a concurrent garbage collection cannot
 * delete the closure while it is being read.
 */
export async function realise(drvs: string[], rootBase: string, opts: NixRunOptions = {}): Promise<void> {
  if (!drvs.length) return;
  // Nix's own --timeout stops a builder that runs too long even if nix-store is killed.
  const t = opts.timeoutMs ? ['--timeout', String(Math.max(1, Math.ceil(opts.timeoutMs / 1000)))] : [];
  await runNix('nix-store', ['--realise', ...t, '--add-root', rootBase, '--indirect', ...drvs], opts);
}

/**
 * Instantiates and builds probe.nix with `nonce`, then deletes what it built: the
 * smallest real build there is. Rejects with NixError when Nix cannot build.
 */
export async function buildProbe(nonce: string, options: NixRunOptions = {}): Promise<void> {
  const opts = { ...options, probe: true };
  const drv = (await runNix('nix-instantiate', [PROBE_NIX, '--argstr', 'nonce', nonce], opts)).trim();
  const out = (await runNix('nix-store', ['--realise', drv], opts)).trim();
  // Only tidiness: a probe left behind is a few bytes that any garbage collection takes.
  await runNix('nix-store', ['--delete', out, drv], { ...opts, timeoutMs: 10_000 }).catch(() => {});
}

/** Output paths of derivations. */
export async function outputsOf(drvs: string[], opts: NixRunOptions = {}): Promise<string[]> {
  if (!drvs.length) return [];
  return lines(await runNix('nix-store', ['--query', '--outputs', ...drvs], opts));
}

/**
 * The closure of `roots` with sizes and references: two processes whatever its size
 * (`--query --requisites`, then `--dump-db` for the registration of every path).
 */
export async function closureOf(roots: string[], opts: NixRunOptions = {}): Promise<StorePathInfo[]> {
  if (!roots.length) return [];
  const paths = lines(await runNix('nix-store', ['--query', '--requisites', ...roots], opts));
  return parseDumpDb(await runNix('nix-store', ['--dump-db', ...paths], opts));
}

/** Parses the registration format: path, hash, narSize, deriver, count, references. */
export function parseDumpDb(text: string): StorePathInfo[] {
  const l = text.split('\n');
  const out: StorePathInfo[] = [];
  let i = 0;
  while (i < l.length && l[i] !== '') {
    const path = l[i++]!;
    i++; // nar hash
    const narSize = Number(l[i++]);
    i++; // deriver (may be empty)
    const n = Number(l[i++]);
    if (!path.startsWith('/') || !Number.isSafeInteger(narSize) || !Number.isSafeInteger(n)) {
      throw new Error(`unexpected nix-store --dump-db output near ${JSON.stringify(path)}`);
    }
    out.push({ path, narSize, references: l.slice(i, i + n) });
    i += n;
  }
  return out;
}

function lines(s: string): string[] {
  return s.split('\n').map((x) => x.trim()).filter(Boolean);
}

/** The 32-character base32 hash part of a store path. */
export function hashPart(storePath: string): string {
  const m = /^\/nix\/store\/([0-9a-df-np-sv-z]{32})-/.exec(storePath) ?? /\/([0-9a-df-np-sv-z]{32})-[^/]*$/.exec(storePath);
  if (!m) throw new Error(`not a store path: ${storePath}`);
  return m[1]!;
}

/** Nix base32 hash part syntax (the alphabet omits e, o, t, u). */
export const HASH_TAG = /^[0-9a-df-np-sv-z]{32}$/;

/**
 * Reads Nix's plain progress from a realisation's stderr: "these 3 derivations will be
 * built:" sets the total, each "building '…drv'" line starts one (so one fewer than
 * started are done, as far as the log tells). `report(done, total)` hears each change.
 */
export function realiseProgress(report: (done: number, total: number) => void): (chunk: Buffer) => void {
  let started = 0;
  let total = 0;
  let rest = '';
  return (chunk) => {
    const lines = (rest + chunk.toString()).split('\n');
    rest = lines.pop()!.slice(-4096);
    for (const l of lines) {
      const m = /^these (\d+) derivations will be built:/.exec(l);
      if (m) total += Number(m[1]);
      else if (l.startsWith('this derivation will be built:')) total += 1;
      else if (l.startsWith('building \'')) started++;
      else continue;
      report(Math.max(0, Math.min(started - 1, total)), total);
    }
  };
}
