// The gate every request passes: who is asking (no credentials, Basic, or a Bearer
// token this server issued), and whether the policy lets them do what the endpoint
// does. It also serves GET /token, the token endpoint of the Docker token flow:
//  1. a client without credentials gets 401 with `WWW-Authenticate: Bearer realm=…/token,
//     service="nixreg",scope="repository:NAME:pull"`;
//  2. it asks /token for that scope, with Basic credentials or none, and gets a short
//     JWT granting what the policy allows of it;
//  3. it repeats the request with `Authorization: Bearer <token>`.
// Basic credentials sent straight to /v2 work too, for curl and scripts.
//
// A token is a claim about the past: each request is also checked against the policy
// and the users as they are now, so a reload (SIGHUP) that removes a user, changes a
// password (the token names the credential it was issued under, tokens.ts) or narrows a
// policy takes effect at once, without waiting for tokens to expire.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { NextFunction, Request, Response } from 'express';
import { addressOf } from '../client-address.js';
import type { Logger } from 'pino';
import { checkName } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import { ACTIONS, type Action, type AuthConfig } from './config.js';
import { Logins } from './logins.js';
import { Policy } from './policy.js';
import { InvalidToken, MAX_TOKEN_CHARS, SERVICE, Tokens, credentialTag, type Grant } from './tokens.js';

const NONE: ReadonlySet<Action> = new Set();
const READ: ReadonlySet<Action> = new Set(['read']);

/** What an endpoint requires (routes.ts names one per endpoint). */
export type Access =
  | 'open' // anyone, credentials unread: the token endpoint, health probes (kubelet sends none)
  | 'signed-in' // any valid credentials: GET /v2/, which clients use to learn how to log in
  | 'listing' // anyone; the handler shows only what the caller may read
  | 'pull' | 'push' | 'delete' // that action on the request's repository
  | 'admin' // nixreg's operator endpoints
  | 'metrics'; // /metrics: an admin, or the scraper's token (metrics-token.ts); anyone with neither configured

export interface Identity {
  /** Undefined: no credentials (or an anonymous token). */
  user: string | undefined;
  via: 'none' | 'basic' | 'bearer';
  /** A token's grants by repository (tokens.ts). */
  grants?: ReadonlyMap<string, ReadonlySet<string>>;
}

/** The access checks the handlers rely on; with no --auth, everything is allowed. */
export interface Gate {
  readonly enabled: boolean;
  guard(access: Access): (req: Request, res: Response, next: NextFunction) => unknown;
  /** Whether the caller may take `action` on `repo` with the credentials of this request. */
  may(req: Request, repo: string, action: Action): boolean;
  /**
   * Whether the caller's user may read `repo`, whatever its token was issued for: what
   * listings (catalog, builds) show. A token names the repositories of one operation,
   * not all that its user may see.
   */
  visible(req: Request, repo: string): boolean;
  /** The signed-in user of the request, for the log. */
  user(req: Request): string | undefined;
  /** Throws 401 (with a challenge) or 403 unless the caller may take `action` on `repo`. */
  need(req: Request, repo: string, action: Action): void;
  /** The key of the caller for per-client bounds: the user if signed in, else the address. */
  client(req: Request): string;
  /** The token endpoint: GET with Basic credentials or none, or POST with an OAuth2 password-grant `form`. */
  token(req: Request, res: Response, form?: URLSearchParams): Promise<void>;
}

export { addressOf };

export const openGate: Gate = {
  enabled: false,
  guard: () => (_req, _res, next) => next(),
  may: () => true,
  visible: () => true,
  user: () => undefined,
  need: () => {},
  client: addressOf,
  token: async (req) => { throw new RegistryError('NAME_UNKNOWN', `no such endpoint: ${req.path.slice(0, 300)}: authentication is not configured`, undefined, 404); },
};

/** Docker scope actions for each policy action. */
const SCOPE_ACTION: Record<Action, string> = { read: 'pull', create: 'push', update: 'push', delete: 'delete' };
const MAX_SCOPES = 32;

export class AuthGate implements Gate {
  readonly enabled = true;
  private state: { config: AuthConfig; policy: Policy; logins: Logins; credentials: ReadonlyMap<string, string> };
  private readonly identities = new WeakMap<Request, Identity>();

  constructor(config: AuthConfig, private readonly tokens: Tokens, private readonly baseUrl: (req: Request) => string, private readonly log: Logger) {
    this.state = AuthGate.stateOf(config);
  }

  private static stateOf(config: AuthConfig) {
    return {
      config, policy: new Policy(config.accessControl), logins: new Logins(config.users, config.failedLogins),
      credentials: new Map([...config.users].map(([user, hash]) => [user, credentialTag(user, hash)])),
    };
  }

  /** Swaps in a new auth file's users and policies; requests from now on see them. */
  replace(config: AuthConfig): void { this.state = AuthGate.stateOf(config); }

  guard(access: Access) {
    return async (req: Request, _res: Response, next: NextFunction) => {
      // The token endpoint reads its own credentials (Basic only, answered differently).
      if (access === 'open') { next(); return; }
      const id = await this.identify(req);
      if (access === 'signed-in' && id.via === 'none') throw this.challenge(req, 'authentication required');
      if ((access === 'admin' || access === 'metrics') && !this.state.policy.isAdmin(id.user)) {
        if (id.via === 'none') throw this.challenge(req, 'authentication required');
        throw new RegistryError('DENIED', `${who(id)} is not an administrator of this registry`);
      }
      if (access === 'pull' || access === 'push' || access === 'delete') {
        this.need(req, checkName(String(req.params.name)), access === 'pull' ? 'read' : access === 'push' ? 'create' : 'delete');
      }
      next();
    };
  }

  may(req: Request, repo: string, action: Action): boolean {
    return this.allowed(this.identityOf(req), repo).has(action);
  }

  visible(req: Request, repo: string): boolean {
    return this.state.policy.actions(this.identityOf(req).user, repo).has('read');
  }

  user(req: Request): string | undefined { return this.identities.get(req)?.user; }

  need(req: Request, repo: string, action: Action): void {
    const id = this.identityOf(req);
    if (this.allowed(id, repo).has(action)) return;
    const scope = `repository:${repo}:${action === 'read' ? 'pull' : action === 'delete' ? 'delete' : 'pull,push'}`;
    // No user (no credentials, or an anonymous token): signing in may help, so a challenge.
    if (id.user === undefined) throw this.challenge(req, `authentication required to ${SCOPE_ACTION[action]} ${repo}`, scope);
    // The policy allows it but the token was issued for less: the client asks for another.
    if (id.via === 'bearer' && this.state.policy.actions(id.user, repo).has(action)) {
      throw this.challenge(req, `the token does not grant ${SCOPE_ACTION[action]} on ${repo}`, scope, 'insufficient_scope');
    }
    throw new RegistryError('DENIED', `${who(id)} may not ${action} ${repo}`, { repository: repo, action });
  }

  client(req: Request): string {
    const user = this.identities.get(req)?.user;
    return user !== undefined ? `user:${user}` : addressOf(req);
  }

  async token(req: Request, res: Response, form?: URLSearchParams): Promise<void> {
    let id: Identity;
    let scopes: string[];
    if (form) {
      // OAuth2's password grant, which containerd (and so kubelet) tries before GET.
      if (form.get('grant_type') !== 'password') {
        throw new RegistryError('UNSUPPORTED', `grant_type ${JSON.stringify((form.get('grant_type') ?? '').slice(0, 40))} is not supported; use password`, undefined, 400);
      }
      id = await this.login(req, form.get('username') ?? '', form.get('password') ?? '', true);
      scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
    } else {
      id = await this.identify(req, true);
      scopes = [req.query.scope ?? []].flat().flatMap((s) => String(s).split(' ')).filter(Boolean);
    }
    if (scopes.length > MAX_SCOPES) throw new RegistryError('UNSUPPORTED', `at most ${MAX_SCOPES} scopes per token`, undefined, 400);
    const access: Grant[] = [];
    for (const scope of scopes) {
      const first = scope.indexOf(':');
      const last = scope.lastIndexOf(':');
      if (first < 1 || last === first) throw new RegistryError('UNSUPPORTED', `malformed scope ${JSON.stringify(scope.slice(0, 300))}`, undefined, 400);
      const type = scope.slice(0, first);
      const name = scope.slice(first + 1, last);
      const wanted = scope.slice(last + 1).split(',');
      if (type === 'repository') {
        const allowed = this.state.policy.actions(id.user, checkName(name));
        const actions = wanted.flatMap((a) => (a === '*' ? ['pull', 'push', 'delete'] : [a]))
          .filter((a, i, all) => all.indexOf(a) === i && ACTIONS.some((p) => SCOPE_ACTION[p] === a && allowed.has(p)));
        if (actions.length) access.push({ type, name, actions });
      } else if (type === 'registry' && name === 'catalog') {
        // Anyone may list; the catalog shows each caller only what it may read.
        access.push({ type, name, actions: ['*'] });
      }
    }
    const cred = id.user === undefined ? undefined : this.state.credentials.get(id.user);
    const t = await this.tokens.issue(id.user, cred, access, this.state.config.tokenTtlSeconds);
    res.set('Cache-Control', 'no-store').status(200).json({
      token: t.token, access_token: t.token, expires_in: t.expiresIn, issued_at: t.issuedAt,
      ...(form ? { scope: access.map((g) => `${g.type}:${g.name}:${g.actions.join(',')}`).join(' ') } : {}),
    });
  }

  private identityOf(req: Request): Identity {
    // The guard of every endpoint resolves the identity before its handler runs.
    return this.identities.get(req) ?? { user: undefined, via: 'none' };
  }

  /** Actions allowed now: the policy for the user, narrowed to the token's grants. */
  private allowed(id: Identity, repo: string): ReadonlySet<Action> {
    const actions = this.state.policy.actions(id.user, repo);
    if (id.via !== 'bearer') return actions;
    const granted = id.grants!.get(repo);
    if (!granted) return NONE;
    // The common cases without building a set: a token for everything the policy allows.
    if (granted.has('*') || (granted.has('pull') && granted.has('push') && granted.has('delete'))) return actions;
    if (granted.size === 1 && granted.has('pull')) return actions.has('read') ? READ : NONE;
    const out = new Set<Action>();
    for (const a of actions) if (granted.has(SCOPE_ACTION[a])) out.add(a);
    return out;
  }

  private async identify(req: Request, forToken = false): Promise<Identity> {
    const known = this.identities.get(req);
    if (known) return known;
    const id = await this.credentials(req, forToken);
    this.identities.set(req, id);
    return id;
  }

  private async credentials(req: Request, forToken: boolean): Promise<Identity> {
    let count = 0;
    for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === 'authorization') count++;
    // Node keeps only the first of repeated Authorization headers; which one a proxy
    // in front would honour is anyone's guess, so neither is.
    if (count > 1) throw new RegistryError('UNAUTHORIZED', 'send one Authorization header: Basic or Bearer credentials, not both', undefined, 400);
    const header = req.headers.authorization;
    if (header === undefined) return { user: undefined, via: 'none' };
    const space = header.indexOf(' ');
    const scheme = header.slice(0, space < 0 ? header.length : space).toLowerCase();
    const value = space < 0 ? '' : header.slice(space + 1).trim();
    if (scheme === 'basic') {
      const decoded = /^[A-Za-z0-9+/]{1,2048}={0,2}$/.test(value) ? Buffer.from(value, 'base64').toString('utf8') : '';
      const colon = decoded.indexOf(':');
      if (colon < 1) throw this.challenge(req, 'malformed Basic credentials', undefined, undefined, forToken);
      return this.login(req, decoded.slice(0, colon), decoded.slice(colon + 1), forToken);
    }
    if (scheme === 'bearer' && !forToken) {
      if (value.length > MAX_TOKEN_CHARS) throw this.challenge(req, 'token invalid', undefined, 'invalid_token');
      let claims;
      try {
        claims = await this.tokens.verify(value);
      } catch (e) {
        if (!(e instanceof InvalidToken)) throw e;
        throw this.challenge(req, e.message, undefined, 'invalid_token');
      }
      // A user removed, or whose password changed, since the token was issued has no
      // access left by it. (A token without `cred` is from before tokens had it: refused
      // too, and the client asks for a new one.)
      if (claims.sub !== undefined && (claims.cred === undefined || claims.cred !== this.state.credentials.get(claims.sub))) {
        throw this.challenge(req, 'token invalid', undefined, 'invalid_token');
      }
      return { user: claims.sub, via: 'bearer', grants: claims.repositories };
    }
    throw this.challenge(req, `unsupported authorization scheme ${JSON.stringify(scheme.slice(0, 20))}`, undefined, undefined, forToken);
  }

  private async login(req: Request, user: string, password: string, forToken: boolean): Promise<Identity> {
    const client = addressOf(req);
    const result = user === '' ? { ok: false as const } : await this.state.logins.check(user, password, client);
    if (result.ok) return { user, via: 'basic' };
    // For the operator (and fail2ban): who tried, from where. Never what they sent.
    this.log.warn({ user: user.slice(0, 100), client, throttled: result.retryAfterSeconds !== undefined, ...(result.locked ? { locked: result.locked } : {}) }, 'failed login');
    if (result.retryAfterSeconds !== undefined) {
      const e = new RegistryError('TOOMANYREQUESTS', result.locked === 'user'
        ? 'too many failed logins of this user from this address; wait before trying again'
        : result.locked === 'address' ? 'too many failed logins from this address; wait before trying again'
        : 'too many logins being checked; try again shortly');
      e.headers['Retry-After'] = String(result.retryAfterSeconds);
      throw e;
    }
    throw this.challenge(req, 'wrong user name or password', undefined, undefined, forToken);
  }

  /** 401 with the challenge that tells a client where to get a token for `scope`. */
  private challenge(req: Request, message: string, scope?: string, error?: string, forToken = false): RegistryError {
    const e = new RegistryError('UNAUTHORIZED', message);
    e.headers['WWW-Authenticate'] = forToken
      ? `Basic realm="${SERVICE}"`
      : `Bearer realm="${this.baseUrl(req)}/token",service="${SERVICE}"${scope ? `,scope="${scope}"` : ''}${error ? `,error="${error}"` : ''}`;
    return e;
  }
}

function who(id: Identity): string {
  return id.user === undefined ? 'an anonymous client' : `user ${JSON.stringify(id.user)}`;
}
