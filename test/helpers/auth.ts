// Auth files for tests: an htpasswd of bcrypt lines (bcryptjs, cost 5, as `htpasswd -B`
// writes by default) and the auth YAML beside it.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';

/** Writes `yaml` as `<dir>/auth.yaml` and `users` as `<dir>/htpasswd`; returns the auth file's path. */
export function writeAuth(dir: string, yaml: string, users: Record<string, string>): string {
  writeFileSync(join(dir, 'htpasswd'), Object.entries(users).map(([u, p]) => `${u}:${bcrypt.hashSync(p, 5)}`).join('\n') + '\n');
  writeFileSync(join(dir, 'auth.yaml'), yaml);
  return join(dir, 'auth.yaml');
}

/** `Authorization` for Basic credentials. */
export const basicAuth = (user: string, password: string) => ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` });
