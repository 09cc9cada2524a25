// What the HTTP fuzzer pushes and refers to: a fixed set of blobs and valid manifests
// (the same in every run, so their digests can be aimed at), and manifest bodies that
// are valid, invalid, huge, deeply nested, of the wrong types, or reference what is missing.
import { createHash } from 'node:crypto';
import { Rng } from './prng.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';
const DOCKER_LAYER = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
export const MAX_MANIFEST = 4 * 1024 * 1024;

export interface Blob { data: Buffer; digest: string }

export const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
export const sha512 = (b: Buffer | string) => `sha512:${createHash('sha512').update(b).digest('hex')}`;
const blob = (data: Buffer): Blob => ({ data, digest: sha256(data) });

const fixed = new Rng('nixreg-fuzz-content');
/** Sizes chosen around the edges: empty, one byte, a socket read, a few chunks. */
export const BLOBS: Blob[] = [0, 1, 100, 4096, 70_000, 300_000].map((n) => blob(fixed.bytes(n)));
export const CONFIG = blob(Buffer.from(JSON.stringify({
  architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: { Cmd: ['/bin/true'] },
})));

interface Desc { mediaType: string; digest: string; size: number; urls?: string[] }
const desc = (mediaType: string, b: Blob): Desc => ({ mediaType, digest: b.digest, size: b.data.length });

export function imageManifest(o: {
  docker?: boolean; layers: Blob[]; subject?: Desc; artifactType?: string; annotations?: Record<string, unknown>; extra?: Record<string, unknown>;
}): Buffer {
  const m: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: o.docker ? DOCKER_MANIFEST : OCI_MANIFEST,
    ...(o.artifactType ? { artifactType: o.artifactType } : {}),
    config: desc(o.docker ? DOCKER_CONFIG : OCI_CONFIG, CONFIG),
    layers: o.layers.map((l) => desc(o.docker ? DOCKER_LAYER : OCI_LAYER, l)),
    ...(o.subject ? { subject: o.subject } : {}),
    ...(o.annotations ? { annotations: o.annotations } : {}),
    ...o.extra,
  };
  return Buffer.from(JSON.stringify(m));
}

/** Valid manifests whose blobs are BLOBS and CONFIG: what the push sequences store. */
export const MANIFESTS: { body: Buffer; digest: string; mediaType: string }[] = [
  { body: imageManifest({ layers: [BLOBS[1]!] }), mediaType: OCI_MANIFEST },
  { body: imageManifest({ layers: [BLOBS[2]!, BLOBS[3]!] }), mediaType: OCI_MANIFEST },
  { body: imageManifest({ docker: true, layers: [BLOBS[4]!] }), mediaType: DOCKER_MANIFEST },
  { body: imageManifest({ layers: [] }), mediaType: OCI_MANIFEST },
].map((m) => ({ ...m, digest: sha256(m.body) }));

export function indexOf(children: { body: Buffer; digest: string; mediaType: string }[], docker = false): Buffer {
  return Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: docker ? DOCKER_LIST : OCI_INDEX,
    manifests: children.map((c) => ({ mediaType: c.mediaType, digest: c.digest, size: c.body.length, platform: { os: 'linux', architecture: 'amd64' } })),
  }));
}

export const ARTIFACT_TYPES = ['application/vnd.example.sbom', 'application/vnd.example.sig', 'text/plain', '', 'a'.repeat(300)];

/** A referrer of MANIFESTS[i]: an artifact whose subject is that manifest. */
export function referrer(i: number, artifactType: string, salt: string): Buffer {
  const s = MANIFESTS[i]!;
  return imageManifest({
    layers: [BLOBS[1]!], artifactType, subject: { mediaType: s.mediaType, digest: s.digest, size: s.body.length },
    annotations: { 'org.example.salt': salt },
  });
}

// Built once: regenerating megabytes per request would make the fuzzer measure itself.
const pad = (n: number) => 'x'.repeat(n);
const HUGE_OVER = imageManifest({ layers: [BLOBS[1]!], annotations: { pad: pad(MAX_MANIFEST) } });
const AT_LIMIT = (() => {
  const base = imageManifest({ layers: [BLOBS[1]!], annotations: { pad: '' } });
  return imageManifest({ layers: [BLOBS[1]!], annotations: { pad: pad(MAX_MANIFEST - base.length) } });
})();
const NESTED_ARRAYS = (() => {
  const depth = 200_000;
  return Buffer.from(`{"schemaVersion":2,"mediaType":"${OCI_MANIFEST}","config":${JSON.stringify(desc(OCI_CONFIG, CONFIG))},"layers":[],"x":${'['.repeat(depth)}${']'.repeat(depth)}}`);
})();
const NESTED_OBJECTS = (() => {
  const depth = 100_000;
  return Buffer.from(`{"schemaVersion":2,"manifests":[],"annotations":${'{"a":'.repeat(depth)}"v"${'}'.repeat(depth)}}`);
})();
const NESTED_LAYERS = Buffer.from(`{"schemaVersion":2,"config":${JSON.stringify(desc(OCI_CONFIG, CONFIG))},"layers":${'['.repeat(50_000)}${']'.repeat(50_000)}}`);
const MANY_LAYERS = imageManifest({ layers: Array.from({ length: 20_000 }, () => BLOBS[1]!) });

export interface Body { body: Buffer; contentType?: string | undefined; kind: string }

const CONTENT_TYPES = [
  OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, 'application/json', undefined,
  `${OCI_MANIFEST}; charset=utf-8`, OCI_MANIFEST.toUpperCase(), 'text/plain', 'application/vnd.docker.distribution.manifest.v1+prettyjws',
];

/** A manifest body for a PUT, and the Content-Type it goes with. */
export function manifestBody(rng: Rng): Body {
  const kind = rng.weighted<string>([
    [10, 'valid'], [4, 'index'], [4, 'referrer'], [4, 'missing-blob'], [2, 'foreign-layer'], [6, 'invalid-json'],
    [8, 'wrong-type'], [3, 'type-mismatch'], [0.4, 'huge'], [0.4, 'at-limit'], [0.6, 'nested'], [0.3, 'many-layers'],
    [2, 'empty'], [2, 'odd-encoding'], [2, 'proto'],
  ]);
  const m = rng.pick(MANIFESTS);
  const ct = (t: string | undefined) => (rng.chance(0.85) ? t : rng.pick(CONTENT_TYPES));
  switch (kind) {
    case 'valid': return { body: m.body, contentType: ct(m.mediaType), kind };
    case 'index': {
      const docker = rng.chance(0.3);
      const kids = MANIFESTS.filter(() => rng.chance(0.5));
      return { body: indexOf(kids, docker), contentType: ct(docker ? DOCKER_LIST : OCI_INDEX), kind };
    }
    case 'referrer':
      return { body: referrer(rng.int(0, MANIFESTS.length - 1), rng.pick(ARTIFACT_TYPES), rng.hex(8)), contentType: ct(OCI_MANIFEST), kind };
    case 'missing-blob':
      return { body: imageManifest({ layers: [{ data: rng.bytes(10), digest: `sha256:${rng.hex(64)}` }] }), contentType: ct(OCI_MANIFEST), kind };
    case 'foreign-layer': {
      const body = JSON.parse(m.body.toString()) as { layers: Desc[] };
      body.layers.push({ mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', digest: `sha256:${rng.hex(64)}`, size: 5, urls: ['https://example.com/l'] });
      return { body: Buffer.from(JSON.stringify(body)), contentType: ct(m.mediaType), kind };
    }
    case 'invalid-json': {
      const variants = [
        () => m.body.subarray(0, rng.int(0, m.body.length - 1)),
        () => rng.bytes(rng.int(1, 2000)),
        () => Buffer.from(`${m.body.toString()}garbage`),
        () => Buffer.from(m.body.toString().replace(/"/g, "'")),
        () => Buffer.from('{"schemaVersion":2,"layers":[1,2,,]}'),
        () => Buffer.from('\u0000'),
      ];
      return { body: rng.pick(variants)(), contentType: ct(OCI_MANIFEST), kind };
    }
    case 'wrong-type': {
      const o = JSON.parse(m.body.toString()) as Record<string, unknown>;
      const field = rng.pick(['schemaVersion', 'mediaType', 'config', 'layers', 'manifests', 'subject', 'annotations', 'artifactType']);
      const value = rng.pick<unknown>([null, 2, '2', -1, 1e308, 2 ** 53, true, [], {}, [null], 'x'.repeat(1000), { digest: 'sha256:zz', size: -1 },
        [{ mediaType: 5, digest: CONFIG.digest, size: 1 }], [{ mediaType: OCI_LAYER, digest: CONFIG.digest, size: 1.5 }],
        { 'a': { b: 1 } }, { mediaType: OCI_MANIFEST, digest: m.digest, size: '1' }]);
      o[field] = value;
      const whole = rng.pick<unknown>([o, o, o, null, [], 42, 'manifest', [o]]);
      return { body: Buffer.from(JSON.stringify(whole)), contentType: ct(m.mediaType), kind };
    }
    case 'type-mismatch':
      return { body: m.body, contentType: rng.pick([OCI_INDEX, DOCKER_LIST, m.mediaType === OCI_MANIFEST ? DOCKER_MANIFEST : OCI_MANIFEST]), kind };
    case 'huge': return { body: HUGE_OVER, contentType: OCI_MANIFEST, kind };
    case 'at-limit': return { body: AT_LIMIT, contentType: OCI_MANIFEST, kind };
    case 'nested': return { body: rng.pick([NESTED_ARRAYS, NESTED_OBJECTS, NESTED_LAYERS]), contentType: ct(OCI_MANIFEST), kind };
    case 'many-layers': return { body: MANY_LAYERS, contentType: OCI_MANIFEST, kind };
    case 'empty': return { body: Buffer.alloc(0), contentType: ct(OCI_MANIFEST), kind };
    case 'odd-encoding': {
      const s = m.body.toString();
      const variants = [
        () => Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), m.body]),
        () => Buffer.from(s, 'utf16le'),
        () => Buffer.from(s.replace('}', ',"annotations":{"k":"\\ud800\\udfff\\ud800"}}')),
        () => Buffer.from(s.replace('{', '{"annotations":{"k":"\u00e9\u4e2d\ud83d\ude00"},')),
        () => Buffer.concat([m.body.subarray(0, 20), Buffer.from([0xff, 0xfe, 0xc0]), m.body.subarray(20)]),
        () => Buffer.from(`  \n\t${s}\n\n  `),
      ];
      return { body: rng.pick(variants)(), contentType: ct(m.mediaType), kind };
    }
    default: {
      const s = m.body.toString();
      const variants = [
        `{"__proto__":{"schemaVersion":3},${s.slice(1)}`,
        s.replace('{', '{"constructor":{"prototype":{"x":1}},'),
        s.replace('"schemaVersion":2', '"schemaVersion":2,"schemaVersion":1'),
        s.replace('{', '{"layers":"dup",'),
        s.replace('"schemaVersion":2', '"schemaVersion":2.0'),
        s.replace('"schemaVersion":2', '"schemaVersion":2e0'),
      ];
      return { body: Buffer.from(rng.pick(variants)), contentType: ct(m.mediaType), kind: 'proto' };
    }
  }
}
