// Image archives for the ingestion fuzzer: the valid docker-archive and OCI-layout
// tarballs of test/ingest/archives.ts, mutated by a seeded Rng — truncated, bytes
// flipped, sizes and digests wrong, names that climb out (`../x`, absolute), links that
// escape, duplicates, huge declared sizes, deeply nested or non-JSON metadata, gzip and
// zstd garbage. Every link and climbing name aims at a canary outside the data dir.
import { gzipSync } from 'node:zlib';
import { dockerArchive, layerTar, ociArchive, sha, tarOf, type Member } from '../ingest/archives.js';
import type { Rng } from './prng.js';

export interface Base { name: string; members: Member[]; oci: boolean }

/** The valid archives every mutation starts from. */
export async function bases(): Promise<Base[]> {
  const layers = [await layerTar({ 'a.txt': 'one' }), await layerTar({ 'dir/b.txt': 'two', 'c.bin': Buffer.alloc(3000, 7) })];
  return [
    { name: 'docker', members: dockerArchive(layers).members, oci: false },
    { name: 'docker-gzip-layers', members: dockerArchive(layers, { gzipLayers: true }).members, oci: false },
    { name: 'oci-gzip', members: ociArchive(layers, { gzip: true }).members, oci: true },
    { name: 'oci-plain', members: ociArchive(layers, { gzip: false }).members, oci: true },
  ];
}

/** Where escaping names and links point: `canary` holds a secret file and a FIFO (reading it blocks). */
export interface Canary { dir: string; secret: string; fifo: string; /** `../` steps from an ingest temp dir to the canary's parent. */ depth: number }

export interface Mutated { what: string; bytes: Buffer }

const nested = (depth: number, open: string, close: string, inner = '1') => `${open.repeat(depth)}${inner}${close.repeat(depth)}`;

/** Sets the size field of the tar header at `off` (octal, or base-256 past 8 GiB) and fixes its checksum. */
function patchSize(tar: Buffer, off: number, size: bigint): void {
  if (size < 8n ** 11n) {
    tar.write(`${size.toString(8).padStart(11, '0')}\0`, off + 124, 'latin1');
  } else {
    tar[off + 124] = 0x80;
    for (let i = 11, v = size; i >= 1; i--, v >>= 8n) tar[off + 124 + i] = Number(v & 0xffn);
  }
  tar.fill(0x20, off + 148, off + 156);
  let sum = 0;
  for (let i = off; i < off + 512; i++) sum += tar[i]!;
  tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, off + 148, 'latin1');
}

/** Offsets of the member headers of a tar (stops at the end-of-archive blocks). */
function headerOffsets(tar: Buffer): number[] {
  const out: number[] = [];
  for (let off = 0; off + 512 <= tar.length;) {
    if (tar.subarray(off, off + 512).every((b) => b === 0)) break;
    out.push(off);
    const size = parseInt(tar.toString('latin1', off + 124, off + 136).replace(/\0.*$/, '').trim() || '0', 8);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

function replace(members: Member[], pick: (m: Member) => boolean, by: (m: Member) => Member | Member[]): Member[] {
  return members.flatMap((m) => (pick(m) ? by(m) : [m]));
}

function jsonOf(members: Member[], name: string): unknown {
  return JSON.parse(String(members.find((m) => m.name === name)?.data ?? 'null'));
}

/** Member-level mutations: the archive is rebuilt from changed members. */
function memberMutation(rng: Rng, b: Base, c: Canary): { what: string; members: Member[] } {
  const ms = b.members;
  const files = ms.filter((m) => (m.type ?? 'file') === 'file');
  const victim = rng.pick(files);
  const up = '../'.repeat(c.depth);
  const escape = rng.pick([c.secret, c.fifo, `${up}canary/secret`, `${up}canary/fifo`, '../x', '/etc/passwd', `../../..${c.secret}`]);
  const meta = b.oci ? 'index.json' : 'manifest.json';
  const kind = rng.int(0, 16);
  switch (kind) {
    case 0: { // A name that climbs out or is absolute, replacing or beside a member.
      const evil = rng.pick([`${up}canary/pwned`, '/tmp/nixreg-fuzz-pwned', 'a/../../x', './../x', `${'d/'.repeat(60)}${up}canary/pwned`, 'x/\u0000/y']);
      return { what: `member named ${JSON.stringify(evil)}`, members: rng.chance(0.5) ? [...ms, { name: evil, data: 'pwned' }] : replace(ms, (m) => m === victim, (m) => ({ ...m, name: evil })) };
    }
    case 1: return { what: `${victim.name} is a symlink to ${escape}`, members: replace(ms, (m) => m === victim, (m) => ({ name: m.name, type: 'symlink', linkname: escape })) };
    case 2: return { what: `${victim.name} is a hard link to ${escape}`, members: replace(ms, (m) => m === victim, (m) => ({ name: m.name, type: 'link', linkname: escape })) };
    case 3: { // Link loops and long chains.
      const n = rng.pick([2, 17, 40]);
      const chain: Member[] = Array.from({ length: n }, (_, i) => ({ name: `l${i}`, type: rng.pick(['symlink', 'link'] as const), linkname: `l${(i + 1) % (rng.chance(0.5) ? n : n + 1)}` }));
      return { what: `${victim.name} links into a chain of ${n}`, members: [...chain, ...replace(ms, (m) => m === victim, (m) => ({ name: m.name, type: 'symlink', linkname: 'l0' }))] };
    }
    case 4: return { what: `${victim.name} twice`, members: rng.chance(0.5) ? [...ms, victim] : [victim, ...ms] };
    case 5: { // Deeply nested JSON where metadata is read.
      const depth = rng.pick([1000, 100_000, 1_000_000]);
      const target = rng.pick(files.filter((m) => String(m.name).endsWith('.json') || !b.oci || m.name.startsWith('blobs/')));
      const data = rng.chance(0.5) ? nested(depth, '[', ']') : nested(depth, '{"a":', '}');
      return { what: `${target.name} is JSON nested ${depth} deep`, members: replace(ms, (m) => m === target, (m) => ({ ...m, data })) };
    }
    case 6: { // Not JSON, or JSON of the wrong shape, where the archive's own metadata is.
      const data = rng.pick(['', 'not json', '{', 'null', '42', '"x"', '{}', '[]', '[null]', '[{"Config":5}]', '[{"Config":"x","Layers":[1]}]',
        '{"manifests":[]}', '{"manifests":[null]}', '{"manifests":[{"digest":5}]}', '{"manifests":"x"}', '\u00ff\u00fe{', '[{}, {}]']);
      return { what: `${meta} is ${JSON.stringify(data)}`, members: replace(ms, (m) => m.name === meta, (m) => ({ ...m, data })) };
    }
    case 7: { // Wrong sizes and digests in the metadata.
      if (b.oci) {
        const index = jsonOf(ms, 'index.json') as { manifests: { digest: string; size: number; mediaType: string }[] };
        const d = index.manifests[0]!;
        const change = rng.pick(['size+1', 'size-huge', 'digest', 'sha512', 'upper', 'mediaType', 'size-string']);
        if (change === 'size+1') d.size += 1;
        else if (change === 'size-huge') d.size = rng.pick([2 ** 53, 1e300, -1]);
        else if (change === 'digest') d.digest = `sha256:${sha('other')}`;
        else if (change === 'sha512') d.digest = `sha512:${'a'.repeat(128)}`;
        else if (change === 'upper') d.digest = d.digest.toUpperCase();
        else if (change === 'mediaType') d.mediaType = rng.pick(['application/vnd.oci.image.index.v1+json', 'text/plain', '']);
        else (d as { size: unknown }).size = String(d.size);
        return { what: `index.json descriptor: ${change}`, members: replace(ms, (m) => m.name === 'index.json', (m) => ({ ...m, data: JSON.stringify(index) })) };
      }
      const list = jsonOf(ms, 'manifest.json') as [{ Config: string; Layers: string[] }];
      const change = rng.pick(['layer-is-config', 'layer-is-manifest', 'layer-missing', 'layer-dir', 'config-missing', 'no-layers', 'extra-layer']);
      const m0 = list[0];
      if (change === 'layer-is-config') m0.Layers[0] = m0.Config;
      else if (change === 'layer-is-manifest') m0.Layers[0] = 'manifest.json';
      else if (change === 'layer-missing') m0.Layers[0] = 'nowhere/layer.tar';
      else if (change === 'layer-dir') m0.Layers[0] = 'layer0';
      else if (change === 'config-missing') m0.Config = 'missing.json';
      else if (change === 'no-layers') m0.Layers = [];
      else m0.Layers.push(m0.Layers[0]!);
      return { what: `manifest.json: ${change}`, members: replace(ms, (m) => m.name === 'manifest.json', (m) => ({ ...m, data: JSON.stringify(list) })) };
    }
    case 8: { // Special entries where files should be.
      const type = rng.pick(['fifo', 'directory', 'character-device', 'block-device'] as const);
      return { what: `${victim.name} is a ${type}`, members: replace(ms, (m) => m === victim, (m) => ({ name: m.name, type } as unknown as Member)) };
    }
    case 9: { // Layer bytes that are not what they claim: garbage, gzip garbage, zstd garbage.
      const layer = rng.pick(files.filter((m) => /layer|blobs\//.test(m.name)));
      const data = rng.pick([Buffer.from([0x1f, 0x8b, 8, 0, ...rng.bytes(200)]), Buffer.from([0x28, 0xb5, 0x2f, 0xfd, ...rng.bytes(200)]), rng.bytes(rng.int(0, 5000)),
        gzipSync(rng.bytes(100)), Buffer.alloc(1024), Buffer.alloc(512)]);
      return { what: `${layer.name} holds ${data.length} garbage bytes`, members: replace(ms, (m) => m === layer, (m) => ({ ...m, data })) };
    }
    case 10: { // OCI: an extra field nested deep in the manifest, with layers that must be rewritten.
      if (!b.oci) return memberMutation(rng, b, c);
      const index = jsonOf(ms, 'index.json') as { manifests: { digest: string; size: number }[] };
      const old = index.manifests[0]!.digest.slice(7);
      const manifest = String(ms.find((m) => m.name === `blobs/sha256/${old}`)!.data);
      const depth = rng.pick([5000, 200_000]);
      const body = `${manifest.slice(0, -1)},"x":${nested(depth, '[', ']')}}`;
      index.manifests[0] = { ...index.manifests[0]!, digest: `sha256:${sha(body)}`, size: Buffer.byteLength(body) };
      return {
        what: `the OCI manifest carries an extra field nested ${depth} deep`,
        members: [...replace(ms, (m) => m.name === 'index.json', (m) => ({ ...m, data: JSON.stringify(index) })), { name: `blobs/sha256/${sha(body)}`, data: body }],
      };
    }
    case 11: { // OCI: indexes nested in indexes.
      if (!b.oci) return memberMutation(rng, b, c);
      const depth = rng.pick([1, 4, 5, 12]);
      let index = String(ms.find((m) => m.name === 'index.json')!.data);
      const extra: Member[] = [];
      for (let i = 0; i < depth; i++) {
        const d = `sha256:${sha(index)}`;
        extra.push({ name: `blobs/sha256/${d.slice(7)}`, data: index });
        index = JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest: d, size: Buffer.byteLength(index) }] });
      }
      return { what: `indexes nested ${depth} deep`, members: [...replace(ms, (m) => m.name === 'index.json', (m) => ({ ...m, data: index })), ...extra] };
    }
    case 12: { // Long names (PAX headers), with and without climbing.
      const long = `${'n'.repeat(rng.pick([150, 300, 5000]))}${rng.chance(0.5) ? `/${up}canary/pwned` : '/x'}`;
      return { what: `a member with a ${long.length}-char name`, members: [...ms, { name: long, data: 'long' }] };
    }
    case 13: { // The config's diff_ids: wrong, too few, not strings.
      const cfg = files.find((m) => { try { return 'rootfs' in (JSON.parse(String(m.data)) as object); } catch { return false; } })!;
      const c0 = JSON.parse(String(cfg.data)) as { rootfs: { diff_ids: unknown } };
      c0.rootfs.diff_ids = rng.pick<unknown>([[], [`sha256:${sha('x')}`], [1, 2], 'x', null, [...(c0.rootfs.diff_ids as string[]), `sha256:${sha('y')}`]]);
      return { what: `config diff_ids ${JSON.stringify(c0.rootfs.diff_ids).slice(0, 80)}`, members: replace(ms, (m) => m === cfg, (m) => ({ ...m, data: JSON.stringify(c0) })) };
    }
    case 14: { // The metadata that says what is in the archive, missing or replaced.
      const drop = rng.pick(['manifest.json', 'index.json', 'oci-layout', victim.name]);
      return { what: `without ${drop}`, members: ms.filter((m) => m.name !== drop) };
    }
    case 15: { // Metadata past the 16 MiB a JSON document may have (rarely: it costs 17 MB of disk).
      if (!rng.chance(0.15)) return memberMutation(rng, b, c);
      const target = rng.pick(files.filter((m) => m.name.endsWith('.json') || m.name.startsWith('blobs/')));
      const data = `${' '.repeat(17 * 1024 * 1024)}${String(target.data)}`;
      return { what: `${target.name} padded to ${data.length} bytes`, members: replace(ms, (m) => m === target, (m) => ({ ...m, data })) };
    }
    default: { // Members reordered: metadata first, last, or in the middle.
      const order = [...ms].sort(() => rng.float() - 0.5);
      return { what: `members in order ${order.map((m) => m.name.slice(0, 12)).join(',')}`, members: order };
    }
  }
}

/** Byte-level mutations of the whole archive (or of its gzip). */
function byteMutation(rng: Rng, tar: Buffer): Mutated {
  const kind = rng.int(0, 8);
  const t = Buffer.from(tar);
  switch (kind) {
    case 0: { const at = rng.int(0, t.length - 1); return { what: `truncated at ${at} of ${t.length}`, bytes: t.subarray(0, at) }; }
    case 1: {
      const n = rng.int(1, 16);
      for (let i = 0; i < n; i++) { const j = rng.int(0, t.length - 1); t[j] = t[j]! ^ (1 << rng.int(0, 7)); }
      return { what: `${n} bits flipped`, bytes: t };
    }
    case 2: { // In a header: names, modes, sizes, checksums.
      const offs = headerOffsets(t);
      const off = rng.pick(offs) + rng.int(0, 511);
      t[off] = rng.int(0, 255);
      return { what: `header byte ${off} set`, bytes: t };
    }
    case 3: { // A huge declared size.
      const offs = headerOffsets(t);
      const off = rng.pick(offs);
      const size = rng.pick([2n ** 33n - 1n, 2n ** 40n, 2n ** 62n, 8n ** 11n - 1n, 1n << 20n]);
      patchSize(t, off, size);
      return { what: `member at ${off} declares ${size} bytes`, bytes: t };
    }
    case 4: { const gz = gzipSync(t); const at = rng.int(10, gz.length - 1); return { what: `gzip truncated at ${at}`, bytes: gz.subarray(0, at) }; }
    case 5: {
      const gz = gzipSync(t);
      for (let i = rng.int(1, 8); i > 0; i--) { const j = rng.int(10, gz.length - 9); gz[j] = gz[j]! ^ 0xff; }
      return { what: 'gzip with flipped bytes', bytes: gz };
    }
    case 6: return { what: 'gzip magic, then garbage', bytes: Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), rng.bytes(rng.int(0, 4000))]) };
    case 7: return { what: 'zstd magic, then garbage', bytes: Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), rng.bytes(rng.int(0, 4000))]) };
    default: return { what: 'empty, zeros, or text', bytes: rng.pick([Buffer.alloc(0), Buffer.alloc(1024), Buffer.alloc(10240), Buffer.from('hello\n'), Buffer.alloc(511)]) };
  }
}

/** One generated archive: a base, mutated at the member level, the byte level, or both. */
export async function mutate(rng: Rng, all: Base[], canary: Canary): Promise<Mutated> {
  const b = rng.pick(all);
  const level = rng.weighted<string>([[5, 'member'], [4, 'bytes'], [1, 'both'], [0.5, 'valid']]);
  let what = b.name;
  let members = b.members;
  if (level === 'member' || level === 'both') {
    const m = memberMutation(rng, b, canary);
    what += `, ${m.what}`;
    members = m.members;
  }
  let bytes = await tarOf(members);
  if (level === 'bytes' || level === 'both') {
    const m = byteMutation(rng, bytes);
    what += `, ${m.what}`;
    bytes = m.bytes;
  } else if (rng.chance(0.2)) {
    bytes = gzipSync(bytes);
    what += ', gzip';
  }
  return { what, bytes };
}
