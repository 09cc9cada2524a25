// `nixreg build NAME[:TAG]`: builds an image ahead of time into the data directory, the
// same way a pull would, and prints its hash tag and manifest digest.
//
// Composition root: may import every room; no room imports it.
import type { Command } from 'commander';
import { pino } from 'pino';
import { Storage } from './blobs/storage.js';
import { buildConfig, type BuildFlags } from './config.js';
import { checkName } from './oci/reference.js';
import { NixImageSource } from './build/source.js';

/** The build-on-pull flags of `serve` and `build`. */
export function withBuildOptions(cmd: Command): Command {
  return cmd
    .option('--build-timeout <seconds>', 'kill a build after this long (env NIXREG_BUILD_TIMEOUT, default 600)')
    .option('--max-builds <n>', 'builds running at once; more wait (env NIXREG_MAX_BUILDS, default 2)')
    .option('--eval-ttl <seconds>', 'reuse an evaluation this long while its file is unchanged (env NIXREG_EVAL_TTL, default 10)')
    .option('--negative-ttl <seconds>', 'answer a failed evaluation or build from memory this long (env NIXREG_NEGATIVE_TTL, default 30)');
}

export function parseImageRef(ref: string): { name: string; tag: string } {
  const i = ref.lastIndexOf(':');
  const name = i > 0 ? ref.slice(0, i) : ref;
  const tag = i > 0 ? ref.slice(i + 1) : 'latest';
  checkName(name);
  return { name, tag };
}

export async function runBuild(ref: string, opts: { data: string; images: string } & BuildFlags): Promise<void> {
  // stdout carries the result only; diagnostics go to stderr.
  const log = pino({ level: process.env.NIXREG_LOG_LEVEL ?? 'warn', base: undefined }, pino.destination(2));
  const { name, tag } = parseImageRef(ref);
  const cfg = buildConfig(opts);
  const tty = process.stderr.isTTY;
  // No timed collection here: a running server on the same data owns that.
  const storage = await Storage.open(opts.data, { gcIntervalMs: 0 });
  try {
    const source = new NixImageSource(storage, {
      images: opts.images, ...cfg, log,
      progress: tty ? (t) => { process.stderr.write(t); } : undefined,
    });
    if (!source.owns(name)) throw new Error(`no image expression for ${name} in ${opts.images} (looked for ${name}.nix and ${name}/default.nix)`);
    const built = await source.image(name, tag);
    process.stdout.write(`${built.hash} ${built.manifest.digest}\n`);
    if (tty) process.stderr.write(`${name}:${built.hash} ${built.manifest.mediaType} ${built.manifest.size} bytes\n`);
  } finally {
    storage.close();
  }
}
