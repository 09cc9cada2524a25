// Throw-away TLS and auth material for end-to-end tests: a CA and a server certificate
// it signs (made with the openssl CLI, as an operator would), an htpasswd file written
// by `htpasswd -B` (apache2-utils), and an auth file in zot's schema. Real tools, so
// that what the tests feed nixreg is what users feed it, not what our code would make.
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { AuthFile } from '../../src/registry/auth/config.js';
import { requireTool, run } from './exec.js';
import { tempDir } from './registry.js';

export interface TlsFiles {
  dir: string;
  /** PEM of the CA, the one file clients are given to trust. */
  caCert: string;
  /** A directory holding only ca.crt: skopeo's --cert-dir, the layout of /etc/docker/certs.d. */
  caDir: string;
  cert: string;
  key: string;
  cleanup(): void;
}

/**
 * A CA and a server certificate for `names` (DNS names and IP addresses, all in
 * subjectAltName: Go clients ignore the CN). P-256 keys: quick to make, and every
 * client here speaks ECDSA.
 */
export async function makeTls(names: string[]): Promise<TlsFiles> {
  await requireTool('openssl');
  const dir = tempDir('nixreg-tls-');
  const p = (f: string) => join(dir, f);
  const openssl = (args: string[]) => run('openssl', args, { cwd: dir });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  // Go refuses a CA without CA:TRUE and keyCertSign, so say both rather than rely on defaults.
  await openssl(['req', '-x509', ...ec, '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '2',
    '-subj', '/CN=nixreg test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await openssl(['req', ...ec, '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', `/CN=${names[0]}`]);
  const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
  writeFileSync(p('server.ext'), [
    `subjectAltName=${san}`,
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    '',
  ].join('\n'));
  await openssl(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'),
    '-CAcreateserial', '-days', '2', '-extfile', p('server.ext'), '-out', p('server.crt')]);
  const caDir = p('ca');
  mkdirSync(caDir);
  copyFileSync(p('ca.crt'), join(caDir, 'ca.crt'));
  return {
    dir, caCert: p('ca.crt'), caDir, cert: p('server.crt'), key: p('server.key'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Writes `users` (name → password) with `htpasswd -B`; the password goes in on stdin, not argv. */
export async function writeHtpasswd(path: string, users: Record<string, string>): Promise<void> {
  await requireTool('htpasswd');
  let first = true;
  for (const [user, password] of Object.entries(users)) {
    await run('htpasswd', [...(first ? ['-c'] : []), '-B', '-i', path, user], { input: password });
    first = false;
  }
}

/** Writes an auth file as YAML (the format operators write). */
export function writeAuthFile(path: string, auth: AuthFile): void {
  writeFileSync(path, stringify(auth));
}
