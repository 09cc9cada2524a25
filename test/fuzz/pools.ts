// The values the HTTP fuzzer draws from: repository names (valid, invented, and the one
// backed by an expression), digests, tags, Accept and Range headers, and page queries.
// Every pool mixes what the registry must accept with what it must refuse.
import { BLOBS, CONFIG, DOCKER_LIST, DOCKER_MANIFEST, MANIFESTS, OCI_INDEX, OCI_MANIFEST } from './content.js';
import type { Rng } from './prng.js';

/** The repository backed by the images directory's one expression: pulls of it run Nix. */
export const OWNED = 'trivial';

export const VALID_NAMES = [
  'fuzz/a', 'fuzz/b', 'fuzz/c/d', 'lib', 'a-b.c_d/e__f', 'x/blobs/y', 'm/manifests/n', 'u/blobs/uploads/v',
  't/tags', 'r/referrers/s', 'v2', 'trivial/sub', 'n'.repeat(255), `${'ab/'.repeat(60)}z`,
];
// Only characters node:http lets into a path: raw bytes go through the wire cases.
const INVALID_NAMES = [
  'UPPER', 'a//b', '-lead', 'trail-', 'a..b', '.', '..', 'a/../b', 'a/./b', '%41', 'a%2fb', 'a%2Fb', 'a%5cb', 'a%00b',
  '%zz', 'caf%C3%A9', 'n'.repeat(256), '_catalog', 'a/', '', 'a___b', 'a@b', 'a:b', 'a;b', '%E2%80%AE', 'a%20b',
  'a%', 'a/%2e%2e/b', '~user', 'a+b', `${'x/'.repeat(200)}y`,
];

export function name(rng: Rng): string {
  const r = rng.float();
  if (r < 0.004) return OWNED;
  if (r < 0.75) return rng.pick(VALID_NAMES.slice(0, 4));
  if (r < 0.87) return rng.pick(VALID_NAMES);
  return rng.pick(INVALID_NAMES);
}

/** A name the push sequences write to: valid, never the expression-backed one. */
export function pushName(rng: Rng): string {
  return rng.chance(0.85) ? rng.pick(VALID_NAMES.slice(0, 4)) : rng.pick(VALID_NAMES.filter((n) => n !== 'trivial/sub'));
}

const MALFORMED_DIGESTS = [
  'sha256:abc', `sha256:${'A'.repeat(64)}`, 'md5:d41d8cd98f00b204e9800998ecf8427e', 'sha256', 'sha256:', ':',
  `sha256:${'g'.repeat(64)}`, `sha256:${'0'.repeat(65)}`, `sha384:${'0'.repeat(96)}`, `SHA256:${'0'.repeat(64)}`,
  'sha256:..%2f..%2fetc', `sha256+b64:${'a'.repeat(43)}=`, `sha512:${'0'.repeat(64)}`, 'x'.repeat(3000), 'latest',
  `sha256:${'0'.repeat(63)}%00`, `sha256%3A${'0'.repeat(64)}`, `sha256:${'f'.repeat(64)}.json`,
];

export function digest(rng: Rng): string {
  return rng.weighted<() => string>([
    [5, () => rng.pick([...BLOBS, CONFIG]).digest],
    [4, () => rng.pick(MANIFESTS).digest],
    [2, () => `sha256:${rng.hex(64)}`],
    [1, () => `sha512:${rng.hex(128)}`],
    [3, () => rng.pick(MALFORMED_DIGESTS)],
  ])();
}

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz';
export function tag(rng: Rng): string {
  return rng.weighted<() => string>([
    [6, () => rng.pick(['latest', 'v1', 'v2.0', '_x', 'stable'])],
    [2, () => rng.pick(['a'.repeat(128), 'a'.repeat(129), '-bad', '.bad', 'UP-case_OK', 'a%2Fb', 'a..b', 'x%00', '%zz', 'a;b'])],
    [1, () => rng.str(32, NIX32)],
    [1, () => rng.str(rng.int(1, 40), 'abcXYZ019._-')],
  ])();
}

/** A manifest reference: a tag or a digest. */
export function reference(rng: Rng): string {
  return rng.chance(0.5) ? tag(rng) : digest(rng);
}

export function accept(rng: Rng): string | string[] | undefined {
  return rng.pick<string | string[] | undefined>([
    undefined, undefined, '*/*', OCI_MANIFEST, DOCKER_MANIFEST, `${DOCKER_MANIFEST}, ${DOCKER_LIST}`, `${OCI_MANIFEST};q=0`,
    `${OCI_MANIFEST};q=0, */*;q=0.1`, 'application/json', 'text/html', '', ',,,', `${OCI_INDEX}, ${OCI_MANIFEST}`,
    'application/*', `${'application/x, '.repeat(500)}*/*`, [OCI_MANIFEST, DOCKER_MANIFEST], `${OCI_MANIFEST}; q=0.000`,
    `${OCI_MANIFEST} ; Q = 0 , ${DOCKER_MANIFEST}`, ';;;q=', 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  ]);
}

export function range(rng: Rng): string | undefined {
  return rng.pick([
    undefined, 'bytes=0-0', 'bytes=0-', 'bytes=-1', 'bytes=-0', 'bytes=5-', 'bytes=10-20', 'bytes=0-1,2-3', 'bytes=99999999999-',
    'bytes=1-0', 'bytes=abc', 'items=0-1', 'bytes=0-99999999999999999999999', 'bytes=-99999999999999999999', 'bytes= 0-1',
    'bytes=299999-', 'bytes=-300001', 'bytes=4095-4096', '', 'bytes=0x10-0x20', `bytes=${'1'.repeat(400)}-`,
  ]);
}

export function contentRange(rng: Rng, start: number, length: number): string | undefined {
  return rng.weighted<() => string | undefined>([
    [6, () => `${start}-${start + length - 1}`],
    [3, () => undefined],
    [1, () => `bytes ${start}-${start + length - 1}/*`],
    [1, () => `bytes=${start}-${start + length - 1}`],
    [2, () => rng.pick(['0-0', '99-0', '-1-5', 'abc', '0-999999999999999', '1e3-2e3', '', `${start + 1}-${start + length}`,
      `${start}-${start + length + 5}`, '0-', '-', '9999999999999999-99999999999999999', `${start}-${start + length - 1}/${start + length}`])],
  ])();
}

export function page(rng: Rng): string {
  return rng.pick([
    '', '', '?n=0', '?n=1', '?n=2&last=fuzz/a', '?n=-1', '?n=abc', '?n=99999999999', '?n=1&n=2', '?last=', '?last=zzz',
    '?last=%ZZ', '?n=1e3', `?last=${'a'.repeat(300)}`, '?n=10000', '?n=10001', '?last[]=a', '?n=', '?&&&', '?n=1;last=a',
    '?n=%31', '?last=a&last=b', '?n=+1', '?n=1&last=%00', '?last=%F0%9F%98%80',
  ]);
}

export function ifNoneMatch(rng: Rng, d: string): string | undefined {
  return rng.pick([undefined, undefined, '*', `"${d}"`, `W/"${d}"`, `"x", "${d}"`, 'garbage', '""', ',']);
}

export function contentType(rng: Rng): string | undefined {
  return rng.pick([undefined, 'application/octet-stream', 'application/json', 'text/plain', OCI_MANIFEST, 'multipart/form-data; boundary=x', '']);
}

export const ODD_METHODS = ['OPTIONS', 'TRACE', 'PROPFIND', 'PURGE', 'COPY', 'LINK', 'MKCOL', 'SEARCH', 'REPORT', 'LOCK', 'QUERY'];

/** An upload id: a live one (from the world), a well-formed unknown one, or garbage. */
export function uploadId(rng: Rng): string {
  return rng.pick([
    `${rng.hex(8)}-${rng.hex(4)}-4${rng.hex(3)}-8${rng.hex(3)}-${rng.hex(12)}`, 'x', '..', '%2e%2e', 'not-a-uuid',
    `${rng.hex(8)}-${rng.hex(4)}-1${rng.hex(3)}-8${rng.hex(3)}-${rng.hex(12)}`, `${rng.hex(8)}-${rng.hex(4)}-4${rng.hex(3)}-8${rng.hex(3)}-${rng.hex(12)}`.toUpperCase(),
    '0'.repeat(500),
  ]);
}
