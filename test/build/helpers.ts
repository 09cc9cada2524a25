// Shared pieces of the build-on-pull tests: an images directory of expressions over the
// offline package set, and an in-process registry with the Nix image source.
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { NixImageSource } from '../../src/build/source.js';
import type { SourceOptions } from '../../src/build/source.js';
import type { StartOptions } from '../../src/server.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { ROOT, startTestRegistry, tempDir } from '../helpers/registry.js';

export const PKGS = join(ROOT, 'test/fixtures/pkgs');

export const OCI = 'application/vnd.oci.image.manifest.v1+json';
export const DOCKER = 'application/vnd.docker.distribution.manifest.v2+json';

/** A fresh value, so that packages built with it are new to the Nix store. */
export function nonce(): string { return randomBytes(8).toString('hex'); }

/** Nix source of a string literal (test-controlled values only). */
export function nixStr(s: string): string { return JSON.stringify(s).replace(/\$\{/g, '\\${'); }

/**
 * A derivation from host tools only: prints "NAME: started", sleeps `seconds`, then
 * builds a small fresh tree (or, with `fail`, says "NAME: giving up" and fails).
 */
export function sleeper(name: string, seconds: number, fail = false): string {
  const end = fail ? `echo "${name}: giving up" >&2; exit 3` : `echo "${name}: slept"; mkdir -p $out/share; echo ${nonce()} > $out/share/${name}`;
  return `derivation {
  name = ${nixStr(name)}; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" ${nixStr(`echo "${name}: started"; sleep ${seconds}; ${end}`)} ];
}
`;
}

export class Images {
  readonly dir = tempDir('nixreg-images-');
  write(rel: string, text: string): string {
    const p = join(this.dir, rel);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, text);
    return p;
  }
  /** An image of `pkg` from the package set whose Cmd runs `cmd`. */
  image(rel: string, o: { pkg?: string; cmd?: string[]; nonce?: string; greeting?: string; extra?: string } = {}): string {
    const args = `{ nonce = ${nixStr(o.nonce ?? '')}; greeting = ${nixStr(o.greeting ?? 'hello from nixreg')}; }`;
    return this.write(rel, `let pkgs = import ${PKGS} ${args}; in {
  contents = [ pkgs.${o.pkg ?? 'hello'} ];
  config = { Cmd = ${o.cmd ? `[ ${o.cmd.map(nixStr).join(' ')} ]` : '[ "/bin/hello" ]'}; Env = [ "PATH=/bin" ]; };
  ${o.extra ?? ''}
}
`);
  }
  cleanup() { rmSync(this.dir, { recursive: true, force: true }); }
}

export async function startNixRegistry(images: string, opts: Partial<SourceOptions> = {}, data?: string, server: Partial<StartOptions> = {}) {
  let source!: NixImageSource;
  const reg = await startTestRegistry({
    ...server,
    ...(data ? { data } : {}),
    source: (storage) => (source = new NixImageSource(storage, { images, nixEnv: NIX_TEST_ENV, ...opts })),
  });
  source.builder.publicUrl = reg.url;
  return {
    reg, source, url: reg.url,
    async stop() { await reg.close(); rmSync(reg.data, { recursive: true, force: true }); },
  };
}

export interface Fetched { status: number; headers: Headers; text: string; json: () => any }

export async function get(url: string, accept = `${OCI}, ${DOCKER}`, method = 'GET'): Promise<Fetched> {
  const r = await fetch(url, { method, headers: { accept } });
  const text = await r.text();
  return { status: r.status, headers: r.headers, text, json: () => JSON.parse(text) };
}

export function errorOf(f: Fetched): { code: string; message: string } {
  return (f.json() as { errors: { code: string; message: string }[] }).errors[0]!;
}
