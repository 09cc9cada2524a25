// Nix settings for tests: offline, no sandbox. Users' settings are never forced.
import { spawnSync } from 'node:child_process';

export const NIX_TEST_ENV = {
  ...process.env,
  NIX_CONFIG: 'substituters =\nsandbox = false',
};

/**
 * The Nix version the tests run against, [major, minor], from the nix-store on PATH. The
 * root of .ci/nix-2.26 says which it means in NIXREG_TEST_NIX; a mismatch is an error,
 * not a silent run against another Nix.
 */
export const NIX_VERSION: readonly [number, number] = (() => {
  const out = spawnSync('nix-store', ['--version'], { encoding: 'utf8' }).stdout ?? '';
  const m = /(\d+)\.(\d+)/.exec(out);
  const v = m ? [Number(m[1]), Number(m[2])] as const : [0, 0] as const;
  const want = process.env.NIXREG_TEST_NIX;
  if (want && want !== `${v[0]}.${v[1]}`) throw new Error(`NIXREG_TEST_NIX is ${want}, and nix-store on PATH is ${out.trim() || 'missing'}`);
  return v;
})();

/** Whether the Nix under test is at least `major.minor`. */
export function nixAtLeast(major: number, minor: number): boolean {
  return NIX_VERSION[0] > major || (NIX_VERSION[0] === major && NIX_VERSION[1] >= minor);
}
