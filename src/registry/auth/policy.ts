// Who may do what to which repository: zot's policy semantics over the auth file's
// `accessControl`, so a zot configuration means the same here.
//  - Of the repository patterns that match a name, the longest decides alone; a shorter
//    one (say `**`) never adds to it. That lets `team/secret/**` be narrower than `team/**`.
//  - Within it: the policies naming the user or one of their groups, then
//    `defaultPolicy` for any signed-in user, or `anonymousPolicy` for a request without
//    credentials.
//  - `adminPolicy` applies to every repository, and admins alone may use nixreg's
//    operator endpoints.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { LRUCache } from 'lru-cache';
import type { Action, AuthConfig } from './config.js';

type AccessControl = AuthConfig['accessControl'];
type RepoPolicy = NonNullable<AccessControl['repositories']>[string];

const NONE: ReadonlySet<Action> = new Set();

/** A zot (doublestar) glob as an anchored regular expression. */
export function globRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*' && pattern[i + 1] === '*') {
      // `a/**` also matches `a` itself, as in doublestar; `**/b` matches `b`.
      if (pattern[i + 2] === '/') { re += '(?:.*/)?'; i += 2; } else { re += '.*'; i += 1; }
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.\-/]/g, '\\$&');
  }
  re = re.replace(/\\\/\.\*$/, '(?:/.*)?');
  return new RegExp(`^${re}$`);
}

export class Policy {
  private readonly patterns: { pattern: string; re: RegExp; policy: RepoPolicy }[];
  private readonly groups = new Map<string, string[]>();
  private readonly admin: ReadonlySet<Action>;
  private readonly admins: Set<string>;
  private readonly adminGroups: Set<string>;
  /** Decisions are pure functions of the file: remembered until it is reloaded. */
  private readonly cache = new LRUCache<string, ReadonlySet<Action>>({ max: 10_000 });

  constructor(ac: AccessControl) {
    this.patterns = Object.entries(ac.repositories ?? {})
      .map(([pattern, policy]) => ({ pattern, re: globRegExp(pattern), policy }))
      // Longest first, so the first match is the one that decides.
      .sort((a, b) => b.pattern.length - a.pattern.length || (a.pattern < b.pattern ? -1 : 1));
    for (const [group, { users }] of Object.entries(ac.groups ?? {})) {
      for (const u of users) this.groups.set(u, [...(this.groups.get(u) ?? []), group]);
    }
    this.admin = new Set(ac.adminPolicy?.actions ?? []);
    this.admins = new Set(ac.adminPolicy?.users ?? []);
    this.adminGroups = new Set(ac.adminPolicy?.groups ?? []);
  }

  groupsOf(user: string): string[] { return this.groups.get(user) ?? []; }

  isAdmin(user: string | undefined): boolean {
    if (user === undefined) return false;
    return this.admins.has(user) || this.groupsOf(user).some((g) => this.adminGroups.has(g));
  }

  /** The actions `user` (undefined: no credentials) may take on `repo`. */
  actions(user: string | undefined, repo: string): ReadonlySet<Action> {
    const key = `${user === undefined ? '' : `u:${user}`}\0${repo}`;
    let found = this.cache.get(key);
    if (!found) {
      found = this.decide(user, repo);
      this.cache.set(key, found);
    }
    return found;
  }

  private decide(user: string | undefined, repo: string): ReadonlySet<Action> {
    const out = new Set<Action>();
    const p = this.patterns.find((x) => x.re.test(repo))?.policy;
    if (p) {
      if (user === undefined) {
        for (const a of p.anonymousPolicy ?? []) out.add(a);
      } else {
        const groups = this.groupsOf(user);
        for (const rule of p.policies ?? []) {
          if (rule.users?.includes(user) || rule.groups?.some((g) => groups.includes(g))) for (const a of rule.actions) out.add(a);
        }
        for (const a of p.defaultPolicy ?? []) out.add(a);
      }
    }
    if (this.isAdmin(user)) for (const a of this.admin) out.add(a);
    return out.size ? out : NONE;
  }
}
