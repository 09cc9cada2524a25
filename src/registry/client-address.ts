// Who a request comes from, for per-client bounds, login lockouts and logs: the socket's
// peer, or, when that peer is a proxy the operator trusts (--trusted-proxies), the
// address the proxy says it forwarded for. Replicas behind a load balancer otherwise see
// every client as the balancer's one address: one client's share would be everybody's,
// and one bad password would lock everyone out.
//
// X-Forwarded-For is a list each proxy appends its peer to, so only its right end is
// true: the client is the rightmost address that is not itself a trusted proxy (what
// nginx's real_ip_recursive does). Anything left of it was written by the client and
// could name anyone. A header that does not parse is ignored: the peer it is.
//
// Room: registry. May import src/blobs, src/build, src/oci.
import { BlockList, isIP } from 'node:net';

/** IPv4-mapped IPv6 (::ffff:a.b.c.d) folded to IPv4, so one host is one client. */
export function foldAddress(a: string): string {
  return a.startsWith('::ffff:') && isIP(a.slice(7)) === 4 ? a.slice(7) : a;
}

/** The longest X-Forwarded-For considered: a proxy chain is a handful of hops. */
const MAX_HOPS = 32;

export class TrustedProxies {
  private readonly list = new BlockList();
  readonly specs: readonly string[];

  /** `specs`: addresses or CIDR blocks (10.0.0.0/8, fd00::/8); throws on anything else. */
  constructor(specs: readonly string[]) {
    this.specs = specs;
    for (const spec of specs) {
      const [addr, bits, extra] = spec.split('/');
      const family = isIP(addr ?? '');
      const max = family === 4 ? 32 : 128;
      if (!family || extra !== undefined || (bits !== undefined && !(/^\d{1,3}$/.test(bits) && Number(bits) <= max))) {
        throw new Error(`--trusted-proxies takes addresses and CIDR blocks (10.0.0.0/8, fd00::/8), got ${JSON.stringify(spec)}`);
      }
      const type = family === 4 ? 'ipv4' : 'ipv6';
      if (bits === undefined) this.list.addAddress(addr!, type);
      else this.list.addSubnet(addr!, Number(bits), type);
    }
  }

  get any(): boolean { return this.specs.length > 0; }

  trusts(address: string): boolean {
    if (!this.any) return false;
    const a = foldAddress(address);
    const family = isIP(a);
    return family !== 0 && this.list.check(a, family === 4 ? 'ipv4' : 'ipv6');
  }

  /** The client behind `peer`, given the request's X-Forwarded-For header(s). */
  clientOf(peer: string, forwarded: string | string[] | undefined): string {
    const me = foldAddress(peer);
    if (forwarded === undefined || !this.trusts(me)) return me;
    const hops = (Array.isArray(forwarded) ? forwarded.join(',') : forwarded).split(',').map((h) => h.trim());
    if (hops.length > MAX_HOPS || hops.some((h) => isIP(h) === 0)) return me;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = foldAddress(hops[i]!);
      if (!this.trusts(hop)) return hop;
    }
    // Every hop a proxy of ours: the leftmost is the closest thing to a client there is.
    return foldAddress(hops[0] ?? me);
  }
}

export function parseTrustedProxies(v: string | undefined): TrustedProxies {
  return new TrustedProxies((v ?? '').split(',').map((s) => s.trim()).filter((s) => s !== ''));
}

const CLIENT = Symbol('nixreg.client');
type Tagged = { [CLIENT]?: string; socket: { remoteAddress?: string | undefined }; headers: Record<string, string | string[] | undefined> };

/**
 * Settles who `req` comes from, once, as it arrives (server.ts), when proxies are trusted;
 * without any, addressOf reads the socket and this costs nothing.
 */
export function settleClient(req: Tagged, trusted: TrustedProxies): void {
  if (trusted.any) req[CLIENT] = trusted.clientOf(req.socket.remoteAddress ?? 'unknown', req.headers['x-forwarded-for']);
}

/** The address a request came from (its client behind a trusted proxy), so one host is one client. */
export function addressOf(req: Tagged): string {
  return req[CLIENT] ?? foldAddress(req.socket.remoteAddress ?? 'unknown');
}
