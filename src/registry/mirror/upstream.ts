// The HTTP client of one upstream registry: its connections (keep-alive, its own CA),
// its credentials (Basic, or Docker token auth: the upstream's `Bearer realm=…` challenge
// is followed and the token cached until it expires), redirects (a blob GET of Docker
// Hub ends on a CDN: followed without the credentials), and bounded time. Credentials
// never leave this module: errors and logs name the upstream by prefix and origin only.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { rootCertificates } from 'node:tls';
import { LRUCache } from 'lru-cache';
import type { Upstream } from './config.js';

/** An upstream that did not answer usefully: what the client is told names it and its answer. */
export class UpstreamError extends Error {
  constructor(
    readonly upstream: string,
    /** The upstream's status, or how it failed to give one. */
    readonly answer: number | 'unreachable' | 'timeout',
    message: string,
    readonly retryAfter?: string | undefined,
  ) { super(message); }
}

export interface UpstreamResponse { status: number; headers: IncomingHttpHeaders; body: IncomingMessage }

/** Redirects followed per request (Docker Hub: one, to its CDN). */
const MAX_REDIRECTS = 5;
/** A token answer larger than this is not one. */
const MAX_TOKEN_BYTES = 64 * 1024;
/** Tokens are renewed this long before they expire, so that none expires in flight. */
const TOKEN_MARGIN_MS = 10_000;

interface Token { value: string; until: number }

export class UpstreamClient {
  /** How messages and logs name the upstream: never with credentials. */
  readonly label: string;
  private readonly agent: HttpAgent;
  /** For other hosts (a token realm, a CDN): the system's CAs, and the upstream's own if it has one. */
  private readonly elsewhere: HttpsAgent;
  /** By scope; a bounded number, each only until it expires. */
  private readonly tokens = new LRUCache<string, Token>({ max: 10_000 });
  private readonly fetching = new Map<string, Promise<Token>>();
  /** The upstream challenged with Basic once: send it at once from then on. */
  private basic = false;

  constructor(readonly up: Upstream) {
    this.label = `${up.prefix} (${up.origin})`;
    const opts = { keepAlive: true, maxSockets: 64, ...(up.ca ? { ca: up.ca } : {}) };
    this.agent = up.origin.startsWith('https:') ? new HttpsAgent(opts) : new HttpAgent(opts);
    this.elsewhere = new HttpsAgent({ keepAlive: true, maxSockets: 64, ...(up.ca ? { ca: [...rootCertificates, up.ca.toString()] } : {}) });
  }

  close(): void { this.agent.destroy(); this.elsewhere.destroy(); }

  /**
   * `method` on `path` (under /v2) of the upstream, authenticated for pulling `repo`.
   * Any status is returned (the caller knows what a 404 means); a failure to answer
   * at all, or within the timeout, is an UpstreamError.
   */
  async request(method: 'GET' | 'HEAD', path: string, repo: string, accept?: string): Promise<UpstreamResponse> {
    const scope = `repository:${repo}:pull`;
    const headers: Record<string, string> = { 'User-Agent': 'nixreg-mirror' };
    if (accept) headers.Accept = accept;
    let auth = this.authFor(scope);
    let res = await this.follow(method, `${this.up.origin}${path}`, headers, auth);
    if (res.status !== 401) return res;
    const challenge = parseChallenge(res.headers['www-authenticate']);
    res.body.resume();
    if (challenge?.scheme === 'bearer' && challenge.params.realm) {
      const token = await this.token(challenge.params, scope);
      auth = `Bearer ${token.value}`;
    } else if (challenge?.scheme === 'basic' && this.up.credentials) {
      this.basic = true;
      auth = this.basicAuth();
    } else {
      throw new UpstreamError(this.label, 401, `upstream ${this.label} answered 401 and no credentials for it are configured`);
    }
    res = await this.follow(method, `${this.up.origin}${path}`, headers, auth);
    if (res.status === 401) {
      res.body.resume();
      throw new UpstreamError(this.label, 401, `upstream ${this.label} refused the configured credentials (401)`);
    }
    return res;
  }

  private authFor(scope: string): string | undefined {
    const t = this.tokens.get(scope);
    if (t && t.until > Date.now()) return `Bearer ${t.value}`;
    return this.basic ? this.basicAuth() : undefined;
  }

  private basicAuth(): string | undefined {
    const c = this.up.credentials;
    return c ? `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}` : undefined;
  }

  /** A token for `scope` from the realm: once for all concurrent callers, cached until it expires. */
  private token(params: Record<string, string>, scope: string): Promise<Token> {
    const key = params.scope ?? scope;
    const cached = this.tokens.get(key);
    if (cached && cached.until > Date.now()) return Promise.resolve(cached);
    let p = this.fetching.get(key);
    if (!p) {
      p = this.fetchToken(params.realm!, params.service, key).then((t) => {
        this.tokens.set(key, t);
        this.tokens.set(scope, t);
        return t;
      }).finally(() => this.fetching.delete(key));
      this.fetching.set(key, p);
    }
    return p;
  }

  private async fetchToken(realm: string, service: string | undefined, scope: string): Promise<Token> {
    let url: URL;
    try { url = new URL(realm); } catch { throw new UpstreamError(this.label, 'unreachable', `upstream ${this.label} named a token realm that is not a URL`); }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new UpstreamError(this.label, 'unreachable', `upstream ${this.label} named a token realm that is not http(s)`);
    if (service !== undefined) url.searchParams.set('service', service);
    url.searchParams.set('scope', scope);
    // The credentials go to the realm only over TLS, or to the upstream's own host.
    const sameHost = url.origin === this.up.origin;
    const auth = this.up.credentials && (url.protocol === 'https:' || sameHost) ? this.basicAuth() : undefined;
    const res = await this.follow('GET', url.toString(), { 'User-Agent': 'nixreg-mirror' }, auth);
    const body = await readSmall(res.body, MAX_TOKEN_BYTES).catch(() => undefined);
    if (res.status !== 200 || !body) {
      throw new UpstreamError(this.label, res.status, `upstream ${this.label}'s token service answered ${res.status}${this.up.credentials ? '' : ' (no credentials configured)'}`);
    }
    let json: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try { json = JSON.parse(body.toString('utf8')); } catch { json = {}; }
    const value = typeof json.token === 'string' ? json.token : json.access_token;
    if (typeof value !== 'string' || !value) throw new UpstreamError(this.label, 502, `upstream ${this.label}'s token service answered without a token`);
    // Docker's token spec: 60 s when not said.
    const seconds = typeof json.expires_in === 'number' && json.expires_in > 0 ? json.expires_in : 60;
    return { value, until: Date.now() + Math.max(seconds * 1000 - TOKEN_MARGIN_MS, seconds * 500) };
  }

  /** One request, following redirects; credentials go only to the origin they were issued for. */
  private async follow(method: 'GET' | 'HEAD', url: string, headers: Record<string, string>, auth: string | undefined): Promise<UpstreamResponse> {
    let target = new URL(url);
    const origin = target.origin;
    for (let hop = 0; ; hop++) {
      const h = { ...headers };
      if (auth && target.origin === origin) h.Authorization = auth;
      const res = await this.send(method, target, h);
      const location = res.headers.location;
      if (![301, 302, 303, 307, 308].includes(res.status) || !location) return res;
      res.body.resume();
      if (hop >= MAX_REDIRECTS) throw new UpstreamError(this.label, res.status, `upstream ${this.label} redirected more than ${MAX_REDIRECTS} times`);
      target = new URL(location, target);
      if (target.protocol !== 'https:' && target.protocol !== 'http:') {
        throw new UpstreamError(this.label, res.status, `upstream ${this.label} redirected to a URL that is not http(s)`);
      }
    }
  }

  private send(method: string, url: URL, headers: Record<string, string>): Promise<UpstreamResponse> {
    const ms = this.up.timeoutMs;
    return new Promise((resolve, reject) => {
      const tls = url.protocol === 'https:';
      const agent = url.origin === this.up.origin ? this.agent : tls ? this.elsewhere : undefined;
      const req = (tls ? httpsRequest : httpRequest)(url, { method, headers, agent }, (res) => {
        resolve({ status: res.statusCode ?? 502, headers: res.headers, body: res });
      });
      // Socket inactivity: no answer, or no next body bytes, within the timeout.
      req.setTimeout(ms, () => req.destroy(new UpstreamError(this.label, 'timeout', `upstream ${this.label} did not answer within ${ms / 1000} s`)));
      req.once('error', (err) => {
        reject(err instanceof UpstreamError ? err
          : new UpstreamError(this.label, 'unreachable', `upstream ${this.label} is unreachable: ${(err as NodeJS.ErrnoException).code ?? err.message}`));
      });
      req.end();
    });
  }
}

/** The scheme and parameters of a WWW-Authenticate header (the first challenge). */
export function parseChallenge(h: string | undefined): { scheme: string; params: Record<string, string> } | undefined {
  if (!h) return undefined;
  const m = /^\s*(\w+)\s*(.*)$/s.exec(h);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of m[2]!.matchAll(/(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))/g)) params[p[1]!.toLowerCase()] = (p[2] ?? p[3] ?? '').replace(/\\(.)/g, '$1');
  return { scheme: m[1]!.toLowerCase(), params };
}

/** A body of at most `max` bytes, whole; larger is an error. */
export async function readSmall(body: IncomingMessage, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) { body.destroy(); throw new Error(`body larger than ${max} bytes`); }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}
