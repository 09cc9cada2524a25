// Wire-level inputs that node:http will not send: broken request lines, lying or
// conflicting lengths, broken chunked framing, bytes a header may not hold, no Host,
// pipelined requests. Each is written as raw bytes on a fresh connection.
import { chunkedBody, wire, type Req } from './client.js';
import { BLOBS, MANIFESTS, OCI_MANIFEST } from './content.js';
import type { Rng } from './prng.js';
import { name, uploadId } from './pools.js';

const H = (extra: [string, string][] = [], close = true): [string, string][] =>
  [['Host', 'localhost'], ...extra, ...(close ? [['Connection', 'close'] as [string, string]] : [])];

const describeRaw = (raw: Buffer, mayHang = false): Req => ({ method: '(raw)', path: '(raw)', raw, mayHang });

export function wireCase(rng: Rng): Req {
  const repo = rng.chance(0.8) ? 'fuzz/a' : name(rng);
  const target = rng.pick([
    '/v2/', '/v2/_catalog', `/v2/${repo}/tags/list`, `/v2/${repo}/manifests/latest`, `/v2/${repo}/blobs/${BLOBS[3]!.digest}`,
    `/v2/${repo}/blobs/uploads/`, `/v2/${repo}/blobs/uploads/?digest=${BLOBS[2]!.digest}`, `/v2/${repo}/blobs/uploads/${uploadId(rng)}`,
    `/v2/${repo}/manifests/${MANIFESTS[0]!.digest}`, '/nixreg/stats',
  ]);
  const body = rng.pick([BLOBS[2]!.data, BLOBS[0]!.data, MANIFESTS[0]!.body, rng.bytes(rng.int(1, 3000))]);
  const method = rng.pick(['GET', 'POST', 'PUT', 'PATCH']);
  const line = `${method} ${target} HTTP/1.1`;
  const variant = rng.int(0, 32);
  switch (variant) {
    case 0: return describeRaw(wire(`${method.toLowerCase()} ${target} HTTP/1.1`, H()));
    case 1: return describeRaw(wire(`${method}  ${target}  HTTP/1.1`, H()));
    case 2: return describeRaw(wire(`GET ${target} HTTP/1.0`, [['Host', 'x']]));
    case 3: return describeRaw(wire(`GET ${target} ${rng.pick(['HTTP/2.0', 'HTTP/9.9', 'HTTP/1.2', 'HTTP/1', 'FTP/1.1', ''])}`, H()));
    case 4: return describeRaw(wire(`GET http://localhost${target} HTTP/1.1`, H()));
    case 5: return describeRaw(wire(`OPTIONS * HTTP/1.1`, H()));
    case 6: return describeRaw(wire(line, [['Connection', 'close']]));
    case 7: return describeRaw(wire(line, H([['Host', 'other']])));
    case 8: return describeRaw(wire(line, H([['Content-Length', String(body.length)], ['Transfer-Encoding', 'chunked']]), chunkedBody(body, 100)));
    case 9: return describeRaw(wire(line, H([['Transfer-Encoding', 'chunked']]), Buffer.from(`zz\r\n${body.toString('latin1')}\r\n0\r\n\r\n`, 'latin1')));
    case 10: return describeRaw(wire(line, H([['Transfer-Encoding', 'chunked']]), chunkedBody(body, rng.pick([1, 3, 512]), ';ext=1')));
    case 11: return describeRaw(wire(line, H([['Transfer-Encoding', 'chunked'], ['Trailer', 'X-T']]),
      Buffer.concat([chunkedBody(body, 256).subarray(0, -2), Buffer.from('X-T: 1\r\n\r\n')])));
    case 12: // Declares more than it sends, then waits: the server must not answer with a 5xx meanwhile.
      return describeRaw(wire(line, H([['Content-Length', String(body.length + rng.int(1, 100_000))]]), body), true);
    case 13: // Declares less than it sends: the rest is read as a next request.
      return describeRaw(wire(line, H([['Content-Length', String(Math.max(0, body.length - rng.int(1, 50)))]], false), body));
    case 14: // Odd lengths; ' 5 ' is a valid 5, and the body may be shorter than that.
      return describeRaw(wire(line, H([['Content-Length', rng.pick(['-1', '+5', ' 5 ', '0x10', '1e3', '99999999999999999999', '', 'abc'])]]), body), true);
    case 15: return describeRaw(wire(line, H([['Content-Length', String(body.length)], ['Content-Length', String(body.length + 1)]]), body));
    case 16: return describeRaw(Buffer.from(`${line}\r\nHost: localhost\r\n${rng.pick(['NoColon', 'Bad Header: x', ': empty', 'X:\u00ff\u0080'])}\r\nConnection: close\r\n\r\n`, 'latin1'));
    case 17: return describeRaw(Buffer.from(`${line}\r\nHost: localhost\r\nX-Folded: a\r\n  b\r\nConnection: close\r\n\r\n`, 'latin1'));
    case 18: return describeRaw(wire(line, H([['X-Ctl', `a${String.fromCharCode(rng.int(0, 31))}b`]])));
    case 19: return describeRaw(wire(line, H([['X-Huge', 'h'.repeat(rng.pick([17_000, 70_000]))]])));
    case 20: return describeRaw(wire(line, H(Array.from({ length: rng.pick([150, 3000]) }, (_, i) => [`X-H${i}`, 'v'] as [string, string]))));
    case 21: return describeRaw(wire(`GET /v2/${repo}\u0000/tags/list HTTP/1.1`, H()));
    case 22: return describeRaw(Buffer.concat([Buffer.from(`GET /v2/caf`, 'latin1'), Buffer.from('é/tags/list', 'utf8'), Buffer.from(' HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')]));
    case 23: return describeRaw(wire(`GET /v2/a b/tags/list HTTP/1.1`, H()));
    case 24: { // Three requests pipelined on one connection.
      const reqs = [wire(`GET /v2/ HTTP/1.1`, H([], false)), wire(`PUT /v2/${repo}/manifests/p HTTP/1.1`, H([['Content-Type', OCI_MANIFEST], ['Content-Length', String(body.length)]], false), body),
        wire(`GET /v2/${repo}/tags/list HTTP/1.1`, H())];
      return describeRaw(Buffer.concat(reqs));
    }
    case 25: return describeRaw(wire(line, H([['Expect', '100-continue'], ['Content-Length', String(body.length)]]), body));
    case 26: return describeRaw(wire(line, H([['Expect', rng.pick(['nonsense', '100-continue, foo', '200-ok'])], ['Content-Length', '3']]), Buffer.from('abc')));
    case 27: {
      const m = rng.pick(['FOO', 'G ET', 'GET\t', 'PROPFIND', 'M-SEARCH', 'CONNECT']);
      // Node's server closes a CONNECT without an answer when nothing listens for it (documented).
      return describeRaw(wire(`${m} ${target} HTTP/1.1`, H()), m === 'CONNECT');
    }
    case 28: return describeRaw(Buffer.from(rng.bytes(rng.int(1, 2000))));
    case 29: return describeRaw(wire(line, H([['Transfer-Encoding', rng.pick(['gzip', 'chunked, gzip', 'identity', 'chunked, chunked', 'xchunked'])]]), chunkedBody(body, 200)));
    case 30: // Chunked, but the last chunk never comes.
      return describeRaw(wire(line, H([['Transfer-Encoding', 'chunked']]), chunkedBody(body, 100).subarray(0, -5)), true);
    case 31: { // A manifest in 1-byte chunks: many tiny pieces of body for the same bytes.
      const size = rng.weighted([[6, 1000], [3, 64 * 1024], [1, 1024 * 1024]]);
      const m = Buffer.from(`{"schemaVersion":2,"layers":[],"pad":"${'x'.repeat(size)}"}`);
      return describeRaw(wire(`PUT /v2/${repo}/manifests/tiny HTTP/1.1`, H([['Content-Type', OCI_MANIFEST], ['Transfer-Encoding', 'chunked']]), chunkedBody(m, 1)));
    }
    default: return describeRaw(Buffer.from(`${line}\nHost: localhost\nConnection: close\n\n`, 'latin1'));
  }
}
