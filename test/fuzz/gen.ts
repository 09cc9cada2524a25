// The HTTP fuzzer's cases: one generated request against each endpoint of
// src/registry/routes.ts (and around them: malformed paths, odd methods and headers),
// plus the stateful sequences of sequences.ts and the wire-level inputs of wire.ts.
// A case draws everything from its own Rng, seeded by the run's seed and its index.
import type { Req } from './client.js';
import { BLOBS, CONFIG, manifestBody, sha256, sha512 } from './content.js';
import type { Rng } from './prng.js';
import {
  ODD_METHODS, accept, contentRange, contentType, digest, ifNoneMatch, name, page, range, reference, tag, uploadId,
} from './pools.js';
import type { Ctx } from './runner.js';
import { SEQUENCES } from './sequences.js';
import { wireCase } from './wire.js';

export interface Case { label: string; run(ctx: Ctx): Promise<unknown> }

type Headers = Record<string, string | string[]>;

/** Drops undefined values, and sometimes adds a header nobody asked for. */
function headers(rng: Rng, h: Record<string, string | string[] | undefined>): Headers {
  const out: Headers = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined) out[k] = v;
  if (rng.chance(0.1)) {
    const [k, v] = rng.pick<[string, string]>([
      ['Connection', 'close'], ['Expect', '100-continue'], ['Content-Encoding', 'gzip'], ['X-Forwarded-For', '1.2.3.4'],
      ['Authorization', 'Bearer x'], ['Accept-Encoding', 'gzip, br'], ['If-Match', '*'], ['X-Long', 'v'.repeat(7000)],
      ['Cookie', 'a=b; '.repeat(100)], ['Upgrade', 'websocket'], ['Range', 'bytes=0-0'], ['Content-Range', '0-0'],
    ]);
    out[k] = v;
  }
  return out;
}

/** A body for a blob write: one of the fixed blobs or fresh bytes. */
function blobBody(rng: Rng): Buffer {
  return rng.chance(0.7) ? rng.pick([...BLOBS, CONFIG]).data : rng.bytes(rng.weighted([[5, rng.int(0, 5000)], [1, rng.int(5000, 600_000)]]));
}

/** Either framing node:http can express: Content-Length, or chunked in odd-sized pieces. */
function framed(rng: Rng, r: Req): Req {
  // Pieces scale with the body: a client writing millions of 1-byte pieces would measure
  // itself (wire.ts sends tiny chunks of large bodies as prepared bytes instead).
  if (r.body && r.body.length && rng.chance(0.25)) return { ...r, chunked: Math.max(rng.pick([1, 7, 1000, 65536]), Math.ceil(r.body.length / 64)) };
  return r;
}

const base = (rng: Rng): Req => ({ method: rng.pick(['GET', 'GET', 'HEAD', 'POST', 'DELETE']), path: rng.pick(['/v2/', '/v2', '/v2/?x=1']), headers: headers(rng, {}) });

const catalog = (rng: Rng): Req => ({ method: rng.chance(0.9) ? 'GET' : rng.pick(['HEAD', 'POST', 'PUT']), path: `/v2/_catalog${page(rng)}`, headers: headers(rng, {}) });

function uploadStart(rng: Rng): Req {
  const repo = name(rng);
  const path = `/v2/${repo}/blobs/uploads${rng.chance(0.9) ? '/' : ''}`;
  const kind = rng.weighted<string>([[4, 'plain'], [3, 'mount'], [5, 'monolithic'], [1, 'odd-query']]);
  if (kind === 'plain') {
    const body = rng.chance(0.2) ? blobBody(rng) : undefined;
    return framed(rng, { method: 'POST', path, headers: headers(rng, { 'Content-Type': contentType(rng) }), body });
  }
  if (kind === 'mount') {
    const q = rng.pick([
      `?mount=${digest(rng)}&from=${name(rng)}`, `?mount=${digest(rng)}`, `?from=${name(rng)}`, `?mount=${digest(rng)}&from=${name(rng)}&from=x`,
      `?mount=${digest(rng)}&mount=${digest(rng)}&from=${name(rng)}`, `?mount=&from=`, `?mount=${digest(rng)}&from=${name(rng)}&digest=${digest(rng)}`,
    ]);
    return { method: 'POST', path: `${path}${q}`, headers: headers(rng, {}) };
  }
  if (kind === 'monolithic') {
    const body = blobBody(rng);
    const d = rng.weighted<() => string>([[6, () => sha256(body)], [1, () => sha512(body)], [2, () => digest(rng)]])();
    return framed(rng, { method: 'POST', path: `${path}?digest=${d}`, headers: headers(rng, { 'Content-Type': contentType(rng) }), body });
  }
  return { method: 'POST', path: `${path}${rng.pick(['?digest=', '?digest=a&digest=b', '?digest', '?=', '?digest=%ZZ', `?digest=${'x'.repeat(5000)}`])}`, headers: headers(rng, {}) };
}

function uploadSession(rng: Rng, ctx: Ctx): Req {
  const live = ctx.world.uploads.length > 0 && rng.chance(0.7) ? rng.pick(ctx.world.uploads) : undefined;
  let path = live?.location ?? `/v2/${name(rng)}/blobs/uploads/${uploadId(rng)}`;
  // A live session addressed through another repository must be unknown there.
  if (live && rng.chance(0.1)) path = path.replace(`/v2/${live.repo}/`, `/v2/${name(rng)}/`);
  const method = rng.weighted<string>([[3, 'GET'], [1, 'HEAD'], [5, 'PATCH'], [4, 'PUT'], [2, 'DELETE'], [0.3, 'POST']]);
  if (method === 'PATCH') {
    const body = blobBody(rng);
    const start = rng.pick([0, 0, 1, 100, 4096, 70_000]);
    return framed(rng, { method, path, headers: headers(rng, { 'Content-Range': contentRange(rng, start, body.length), 'Content-Type': contentType(rng) }), body });
  }
  if (method === 'PUT') {
    const body = rng.chance(0.5) ? blobBody(rng) : undefined;
    const q = rng.pick([`?digest=${body ? sha256(body) : digest(rng)}`, `?digest=${digest(rng)}`, '', '?digest=', `?digest=${digest(rng)}&digest=${digest(rng)}`]);
    const cr = body && rng.chance(0.3) ? contentRange(rng, rng.pick([0, 100]), body.length) : undefined;
    return framed(rng, { method, path: `${path}${q}`, headers: headers(rng, { 'Content-Range': cr }), body });
  }
  return { method, path, headers: headers(rng, {}) };
}

function blob(rng: Rng): Req {
  const d = digest(rng);
  const method = rng.weighted<string>([[6, 'GET'], [3, 'HEAD'], [2, 'DELETE'], [0.3, 'PUT'], [0.3, 'PATCH']]);
  return { method, path: `/v2/${name(rng)}/blobs/${d}`, headers: headers(rng, { Range: range(rng), 'If-None-Match': ifNoneMatch(rng, d) }) };
}

function manifestRead(rng: Rng): Req {
  const ref = reference(rng);
  return { method: rng.chance(0.7) ? 'GET' : 'HEAD', path: `/v2/${name(rng)}/manifests/${ref}`, headers: headers(rng, { Accept: accept(rng), 'If-None-Match': ifNoneMatch(rng, ref) }) };
}

function manifestPut(rng: Rng): Req {
  const b = manifestBody(rng);
  const ref = rng.weighted<() => string>([[6, () => tag(rng)], [3, () => sha256(b.body)], [1, () => digest(rng)], [0.3, () => sha512(b.body)]])();
  return framed(rng, { method: 'PUT', path: `/v2/${name(rng)}/manifests/${ref}`, headers: headers(rng, { 'Content-Type': b.contentType }), body: b.body });
}

const manifestDelete = (rng: Rng): Req => ({ method: 'DELETE', path: `/v2/${name(rng)}/manifests/${reference(rng)}`, headers: headers(rng, {}) });

const tags = (rng: Rng): Req => ({ method: rng.chance(0.9) ? 'GET' : rng.pick(['HEAD', 'DELETE', 'PUT']), path: `/v2/${name(rng)}/tags/list${page(rng)}`, headers: headers(rng, {}) });

function referrers(rng: Rng): Req {
  const q = rng.pick(['', '', `?artifactType=${encodeURIComponent('application/vnd.example.sbom')}`, '?artifactType=text/plain',
    '?artifactType=', '?artifactType=a&artifactType=b', `?artifactType=${'a'.repeat(300)}`, '?artifactType=%ZZ', '?artifactType[]=x']);
  return { method: rng.chance(0.9) ? 'GET' : rng.pick(['HEAD', 'DELETE', 'POST']), path: `/v2/${name(rng)}/referrers/${digest(rng)}${q}`, headers: headers(rng, { Accept: accept(rng) }) };
}

function nixreg(rng: Rng, ctx: Ctx): Req {
  const id = ctx.world.builds.length && rng.chance(0.5) ? rng.pick(ctx.world.builds)
    : rng.pick(['x', '..', '%2e%2e', `${rng.hex(8)}-${rng.hex(8)}`, 'a'.repeat(200), 'UPPER', '%00', 'a.log']);
  const path = rng.pick(['/nixreg/builds', '/nixreg/builds', `/nixreg/builds/${id}/log`, `/nixreg/builds/${id}/log`, '/nixreg/stats',
    '/nixreg/builds?x=1', '/nixreg/builds/', `/nixreg/builds/${id}`, `/nixreg/builds/${id}/log/x`, '/nixreg', '/nixreg/stats/',
    '/nixreg/gc', '/nixreg/gc?dry-run=1', '/nixreg/gc?dry-run=%ZZ', '/nixreg/gc/']);
  // Garbage collection runs among everything else, as it does on a live server.
  if (path.startsWith('/nixreg/gc') && rng.chance(0.7)) return { method: 'POST', path, headers: headers(rng, {}) };
  return { method: rng.chance(0.9) ? 'GET' : rng.pick(['HEAD', 'POST', 'DELETE']), path, headers: headers(rng, {}) };
}

const PATH_ALPHABET = 'abz09/.%?#&=:;-_~+@!$\'()*,2fF';
function malformedPath(rng: Rng): Req {
  const fixed = [
    '/v2/../v2/', '/v2//_catalog', '//v2/', '/v2/%', '/v2/%zz/tags/list', '/v2/fuzz/a/tags/list/', '/V2/', '/v2/fuzz/a/blobs/',
    '/v2/fuzz/a/manifests/', '/v2/fuzz/a/blobs/uploads/x/y', '/', '/favicon.ico', `/v2/${'a/'.repeat(3000)}tags/list`,
    '/v2/a%2fb/tags/list', '/v2/a%2Fb/blobs/uploads/', '/v2/%2e%2e/tags/list', '/v2/fuzz/a/blobs/sha256:%00', '/v2/%F0%9F%98%80/tags/list',
    '/v2/fuzz/a;x/tags/list', '/v2/fuzz/a/tags/list?n=1#frag', '/v2/_catalog/', '/v2/fuzz/a/manifests/latest/', '/v2/fuzz/a/referrers/',
    '/v2/fuzz/a/blobs/uploads', '/v2/fuzz/a/blobs/uploads//', '/v2/./fuzz/a/tags/list', '/v2/fuzz/../fuzz/a/tags/list', '/v2/%5c/tags/list',
    '/v2/fuzz/a/manifests/%2e%2e%2f%2e%2e%2fetc%2fpasswd', '/v2/fuzz/a/blobs/..%2f..%2f', '/v2/fuzz/a/tags/list?%', '*',
    '/v2/fuzz%2Fa/manifests/latest', '/v2/fuzz/a/manifests/sha256:%2e%2e', `/v2/fuzz/a/manifests/${'%41'.repeat(2000)}`, '/v2/%C0%AF/tags/list',
  ];
  let path: string;
  if (rng.chance(0.5)) {
    path = rng.pick(fixed);
  } else {
    // A valid path with a few random edits.
    path = rng.pick(['/v2/fuzz/a/tags/list', '/v2/fuzz/a/manifests/latest', `/v2/fuzz/a/blobs/${BLOBS[1]!.digest}`, '/v2/_catalog?n=1', '/nixreg/builds']);
    for (let i = rng.int(1, 4); i > 0; i--) {
      const at = rng.int(0, path.length);
      const c = rng.pick([...PATH_ALPHABET]);
      path = rng.chance(0.5) ? path.slice(0, at) + c + path.slice(at) : path.slice(0, at) + c + path.slice(at + 1);
    }
    if (!path.startsWith('/')) path = `/${path}`;
  }
  return { method: rng.pick(['GET', 'GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE']), path, headers: headers(rng, {}), body: rng.chance(0.1) ? rng.bytes(100) : undefined };
}

function oddMethod(rng: Rng): Req {
  const path = rng.pick(['/v2/', '/v2/_catalog', '/v2/fuzz/a/tags/list', `/v2/fuzz/a/blobs/${BLOBS[2]!.digest}`, '/v2/fuzz/a/manifests/latest', '/v2/fuzz/a/blobs/uploads/', '/nixreg/stats']);
  return { method: rng.pick(ODD_METHODS), path, headers: headers(rng, {}), body: rng.chance(0.2) ? rng.bytes(50) : undefined };
}

/** One request, sent and done. */
const single = (gen: (rng: Rng, ctx: Ctx) => Req) => (rng: Rng) => ({ run: (ctx: Ctx) => ctx.send(gen(rng, ctx)) });

type Maker = (rng: Rng) => { run(ctx: Ctx): Promise<unknown> };
const TABLE: [number, string, Maker][] = [
  [3, 'base', single(base)],
  [3, 'catalog', single(catalog)],
  [10, 'upload-start', single(uploadStart)],
  [12, 'upload-session', single(uploadSession)],
  [12, 'blob', single(blob)],
  [10, 'manifest-read', single(manifestRead)],
  [10, 'manifest-put', single(manifestPut)],
  [3, 'manifest-delete', single(manifestDelete)],
  [5, 'tags', single(tags)],
  [5, 'referrers', single(referrers)],
  [3, 'nixreg', single(nixreg)],
  [6, 'malformed-path', single(malformedPath)],
  [2, 'odd-method', single(oddMethod)],
  [7, 'wire', (rng) => ({ run: (ctx: Ctx) => ctx.send(wireCase(rng)) })],
  ...SEQUENCES.map(([w, label, seq]): [number, string, Maker] => [w, label, () => ({ run: (ctx: Ctx) => seq(ctx) })]),
];

export function makeCase(rng: Rng): Case {
  const [, label, make] = rng.weighted(TABLE.map((t) => [t[0], t] as const));
  return { label, ...make(rng) };
}

