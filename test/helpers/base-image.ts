// A Node base image made on this machine, for building the repository's Dockerfile where
// no image can be downloaded: Debian minbase from Debian's archive (mmdebstrap) plus the
// Node that runs the tests, with its npm and headers. node-gyp then compiles
// better-sqlite3 against those headers instead of fetching them from nodejs.org.
import { existsSync, mkdtempSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { removeTree } from './daemon.js';
import type { Dockerd } from './dockerd.js';
import { requireTool, run } from './exec.js';

export const DEBIAN_MIRROR = 'http://deb.debian.org/debian';

// What Debian's official slim images leave out too: smaller layers make every build
// step cheaper, most of all on vfs, which copies the whole image for each step.
const SLIM = [
  'path-exclude=/usr/share/doc/*', 'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/man/*', 'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/locale/*', 'path-include=/usr/share/locale/locale.alias',
];

/** Imports the base image into `dockerd` as `tag`. */
export async function makeNodeBaseImage(dockerd: Dockerd, tag: string, suite = 'bookworm'): Promise<void> {
  await requireTool('mmdebstrap');
  // The image gets Node at the same prefix as here, so npm's own links and its global
  // npmrc ($prefix/etc/npmrc) work unchanged.
  const prefix = resolve(dirname(process.execPath), '..');
  if (!/^[\w/.-]+$/.test(prefix)) throw new Error(`cannot put Node from ${prefix} in a hook command line`);
  for (const need of [join(prefix, 'lib/node_modules/npm/bin/npm-cli.js'), join(prefix, 'include/node/common.gypi')]) {
    if (!existsSync(need)) throw new Error(`${need} is missing: the base image needs this machine's npm and Node headers`);
  }
  const hooks = [
    `mkdir -p "$1${prefix}/bin" "$1${prefix}/lib/node_modules" "$1${prefix}/include" "$1${prefix}/etc"`,
    `copy-in ${process.execPath} ${prefix}/bin`,
    `copy-in ${prefix}/lib/node_modules/npm ${prefix}/lib/node_modules`,
    `copy-in ${prefix}/include/node ${prefix}/include`,
    `ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$1${prefix}/bin/npm"`,
    `ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$1${prefix}/bin/npx"`,
    `echo nodedir=${prefix} > "$1${prefix}/etc/npmrc"`,
  ];
  const changes = ['CMD ["node"]'];
  // Where TLS to the npm registry passes through a proxy with its own CA, this machine's
  // Node trusts it through NODE_EXTRA_CA_CERTS; so must the image's.
  const ca = process.env.NODE_EXTRA_CA_CERTS;
  if (ca && existsSync(ca)) {
    hooks.push('mkdir -p "$1/usr/local/share/nixreg-test"', `upload ${ca} /usr/local/share/nixreg-test/extra-ca.crt`);
    changes.push('ENV NODE_EXTRA_CA_CERTS=/usr/local/share/nixreg-test/extra-ca.crt');
  }

  // mmdebstrap's chroot lives here, so that nothing is left behind even if it is killed.
  const tmp = mkdtempSync('/tmp/nxb-');
  try {
    const tarball = join(tmp, 'rootfs.tar');
    await run('mmdebstrap', [
      '--quiet', '--variant=minbase', ...SLIM.map((o) => `--dpkgopt=${o}`),
      ...hooks.map((h) => `--customize-hook=${h}`),
      suite, tarball, DEBIAN_MIRROR,
    ], { env: { ...process.env, TMPDIR: tmp } });
    await dockerd.docker(['import', ...changes.flatMap((c) => ['--change', c]), tarball, tag]);
  } finally {
    await removeTree(tmp);
  }
}
