// `nixreg build NAME[:TAG]`: builds an image ahead of time, the same way a pull would,
// into a data directory (or, with --remote, on a running registry), shows its progress
// and prints its hash tag and manifest digest. Exits 0 if the build succeeded, 1 if not.
//
// Composition root: may import every room; no room imports it.
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import type { Command } from 'commander';
import { pino } from 'pino';
import { Storage } from './blobs/storage.js';
import { buildConfig, type BuildFlags } from './config.js';
import { checkName } from './oci/reference.js';
import type { JobView } from './build/jobs/jobs.js';
import { NixImageSource } from './build/source.js';
import { ProgressView } from './progress-view.js';

/** The build-on-pull flags of `serve` and `build`. */
export function withBuildOptions(cmd: Command): Command {
  return cmd
    .option('--build-timeout <seconds>', 'kill a build after this long (env NIXREG_BUILD_TIMEOUT, default 600)')
    .option('--max-builds <n>', 'builds running at once; more wait (env NIXREG_MAX_BUILDS, default 2)')
    .option('--eval-ttl <seconds>', 'reuse an evaluation this long while its file is unchanged (env NIXREG_EVAL_TTL, default 10)')
    .option('--negative-ttl <seconds>', 'answer a failed evaluation or build from memory this long (env NIXREG_NEGATIVE_TTL, default 30)')
    .option('--packages <source>', 'serve package-list images (/v2/git/htop) from this package set: a path, <nixpkgs>, or git+file:///repo / git+https://… whose tags pin revisions (env NIXREG_PACKAGES)')
    .option('--layer-compression <kind>', 'gzip, zstd or none (uncompressed tar, as nix2container); images built otherwise are rebuilt when pulled (env NIXREG_LAYER_COMPRESSION, default gzip)')
    .option('--gzip-level <1-9>', 'gzip level of built layers (env NIXREG_GZIP_LEVEL, default 6)');
}

export function parseImageRef(ref: string): { name: string; tag: string } {
  const i = ref.lastIndexOf(':');
  const name = i > 0 ? ref.slice(0, i) : ref;
  const tag = i > 0 ? ref.slice(i + 1) : 'latest';
  checkName(name);
  return { name, tag };
}

const POLL_MS = 500;

/** The end of a build as `nixreg build` reports it: stdout the result, stderr the rest. */
function report(v: JobView, view: ProgressView | undefined, name: string): void {
  view?.end(v);
  if (v.status === 'done') {
    process.stdout.write(`${v.hash} ${v.digest}\n`);
    return;
  }
  throw new BuildCommandFailed(`building ${name} failed: ${v.error ?? 'no reason given'}`);
}

/** The build itself failed (exit 1); the message says why. */
export class BuildCommandFailed extends Error {}

export async function runBuild(ref: string, opts: { data: string; images: string } & BuildFlags): Promise<void> {
  // stdout carries the result only; diagnostics go to stderr.
  const log = pino({ level: process.env.NIXREG_LOG_LEVEL ?? 'warn', base: undefined }, pino.destination(2));
  const { name, tag } = parseImageRef(ref);
  const cfg = buildConfig(opts);
  // No timed collection here: a running server on the same data owns that.
  const storage = await Storage.open(opts.data, { gcIntervalMs: 0 });
  let source: NixImageSource | undefined;
  try {
    source = new NixImageSource(storage, { images: opts.images, ...cfg, log, watch: false });
    if (!await source.serves(name)) throw new Error(`no image expression for ${name} in ${opts.images} (looked for ${name}.nix and ${name}/default.nix)`);
    const view = new ProgressView(process.stderr, `${name}:${tag}`);
    const id = (await source.startBuild(name, tag)).id;
    for (;;) {
      const v = (await source.build(id))!;
      if (v.status === 'done' || v.status === 'failed') {
        if (v.status === 'failed') {
          // No server to serve the log link: show its end here.
          const tail = (await readFile(storage.layout.logPath(v.log.split('/')[3]!), 'utf8').catch(() => '')).split('\n').slice(-25).join('\n');
          if (tail.trim()) process.stderr.write(`${tail.trimEnd()}\n`);
        }
        report(v, view, `${name}:${tag}`);
        return;
      }
      view.update(v);
      await delay(POLL_MS);
    }
  } finally {
    await source?.close();
    await storage.close();
  }
}

/**
 * `nixreg build --remote URL NAME[:TAG]`: asks a running registry to build (joining a
 * build under way), follows it to the end and exits as it ended.
 */
export async function runRemoteBuild(ref: string, remote: string, user: string | undefined): Promise<void> {
  const { name, tag } = parseImageRef(ref);
  const base = remote.replace(/\/+$/, '');
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (user !== undefined) headers.authorization = `Basic ${Buffer.from(user).toString('base64')}`;
  const call = async (method: string, path: string, body?: string) => {
    const r = await fetch(`${base}${path}`, { method, headers, body });
    const text = await r.text();
    let json: unknown;
    try { json = JSON.parse(text); } catch { json = undefined; }
    if (!r.ok) {
      const msg = (json as { errors?: { message?: string }[] } | undefined)?.errors?.[0]?.message ?? text.slice(0, 300);
      throw new BuildCommandFailed(`${method} ${base}${path}: ${r.status} ${msg}`);
    }
    return json as JobView;
  };
  let v = await call('POST', '/nixreg/builds', JSON.stringify({ repository: name, tag }));
  const view = new ProgressView(process.stderr, `${name}:${tag}`);
  let failures = 0;
  while (v.status !== 'done' && v.status !== 'failed') {
    view.update(v);
    await delay(POLL_MS);
    try {
      v = await call('GET', `/nixreg/builds/${encodeURIComponent(v.id)}`);
      failures = 0;
    } catch (e) {
      // A moment's network trouble is not the build's end; a registry that forgot it is.
      if (e instanceof BuildCommandFailed || ++failures > 10) throw e;
    }
  }
  if (v.status === 'failed') process.stderr.write(`log: ${base}${v.log}\n`);
  report(v, view, `${name}:${tag}`);
}
