// Ingestion of image archives (docker-archive, OCI archive, or a streamLayeredImage
// script's output) that a derivation produced. See issue 4. Sub-room ingest/ owns
// reading archives (archive-read.ts) and their layers (archive-layer.ts); this module is
// its entry point, the alternative to assembly/ for an output that is an image already.
//
// The archive is read once (archive-read.ts); only then is it known which entries are
// layers, config and manifests. Everything is checked before anything is committed:
// each layer's diff_id against the config, each OCI blob against its descriptor. The
// config is stored byte for byte, so the image ID equals what `docker load` gives.
//
// Room: build/ingest. Of build, imports only nix/ (processes), assembly/ (compression, manifests) and the
// shared errors.ts, types.ts and semaphore.ts; may import src/blobs and src/oci; never src/registry.
import { randomUUID } from 'node:crypto';
import { constants, createReadStream, promises as fs } from 'node:fs';
import { basename, join } from 'node:path';
import { Readable } from 'node:stream';
import { makeDir } from '../../blobs/core.js';
import { noSpaceCode } from '../../blobs/errors.js';
import type { Storage } from '../../blobs/storage.js';
import type { Descriptor as StoredDescriptor } from '../../oci/descriptor.js';
import { digestOf, isDigest } from '../../oci/digest.js';
import { parseJson } from '../../oci/json.js';
import { parseManifest } from '../../oci/manifest.js';
import { GZIP_LAYER_TYPES, INDEX_TYPES, MediaTypes } from '../../oci/media-types.js';
import { processEntry, sniff, type LayerFile } from './archive-layer.js';
import { ArchiveContents, entryName, malformed, readArchive, type ArchiveEntry } from './archive-read.js';
import { ArchiveError } from '../errors.js';
import { imageManifest } from '../assembly/image.js';
import { layerMediaType, type CompressionSetting } from '../assembly/compression.js';
import type { BuiltImage } from '../types.js';

export interface IngestOptions {
  /** Store path hash part that becomes the image tag. */
  hash: string;
  /** Kills a stream script that runs longer than this. */
  timeoutMs: number;
  /** What tar and zstd layers become (gzip layers are kept as they are); default gzip -6. */
  compression?: CompressionSetting | undefined;
}

const MAX_JSON_BYTES = 16 * 1024 * 1024;
const MAX_INDEX_DEPTH = 4;
/** dockerTools.streamLayeredImage names its output `stream-<name>`. */
const STREAM_SCRIPT = /^[0-9a-df-np-sv-z]{32}-stream-/;

/**
 * Whether a realised output is an image archive (or a script that streams one) rather
 * than a package to be layered.
 */
export async function isImageOutput(outPath: string): Promise<boolean> {
  const f = await fileHead(outPath).catch(() => undefined);
  if (!f) return false;
  const { head, mode } = f;
  if (isStreamScript(outPath, mode, head)) return true;
  const kind = sniff(head);
  return kind === 'gzip' || kind === 'zstd' || kind === 'tar';
}

/**
 * The first 512 bytes and the mode of a regular file; undefined for anything else. An
 * output that is a symlink is not followed: it may point at any file of the host (an
 * archive there would be served as the image), and the output itself is just the link.
 */
async function fileHead(path: string): Promise<{ head: Buffer; mode: number } | undefined> {
  const fh = await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = await fh.stat();
    if (!st.isFile()) return undefined;
    const { buffer, bytesRead } = await fh.read(Buffer.alloc(512), 0, 512, 0);
    return { head: buffer.subarray(0, bytesRead), mode: st.mode };
  } finally { await fh.close(); }
}

function isStreamScript(outPath: string, mode: number, head: Buffer): boolean {
  return (mode & 0o111) !== 0 && head.subarray(0, 2).toString('latin1') === '#!' && STREAM_SCRIPT.test(basename(outPath));
}

/** Streams the archive at (or produced by) `outPath` into `repo`. */
export async function ingestImageOutput(storage: Storage, repo: string, outPath: string, opts: IngestOptions): Promise<BuiltImage> {
  const f = await fileHead(outPath).catch(() => undefined);
  if (!f) throw new ArchiveError(`${outPath} is not an image archive file`);

  const contents = new ArchiveContents(join(storage.tmpDir, `ingest-${randomUUID()}`), opts.compression);
  await makeDir(contents.dir);
  try {
    try {
      await readArchive(outPath, contents, { script: isStreamScript(outPath, f.mode, f.head), timeoutMs: opts.timeoutMs });
      const image = contents.entries.has('manifest.json') || contents.links.has('manifest.json')
        ? await fromDockerArchive(contents)
        : contents.entries.has('index.json') ? await fromOciLayout(contents)
        : undefined;
      if (!image) throw malformed('it has neither manifest.json (docker archive) nor index.json (OCI image layout)');
      return await commit(storage, repo, opts.hash, image);
    } catch (e) {
      if (e instanceof ArchiveError) throw new ArchiveError(`${outPath}: ${e.message}`);
      throw e;
    }
  } finally {
    await fs.rm(contents.dir, { recursive: true, force: true });
  }
}

/** An image read from an archive and checked, ready to be committed. */
interface Image {
  layers: LayerFile[];
  config: Buffer;
  /** First the primary manifest, then alternates. */
  manifests: { body: Buffer; mediaType: string }[];
}

// ------------------------------------------------------------------ docker archives

async function fromDockerArchive(contents: ArchiveContents): Promise<Image> {
  const list = json(await bytesOf(need(contents, 'manifest.json', 'manifest.json')), 'manifest.json');
  if (!Array.isArray(list) || list.length === 0) throw malformed('manifest.json lists no image');
  if (list.length > 1) throw malformed(`manifest.json lists ${list.length} images; an expression must produce exactly one`);
  const m = list[0] as { Config?: unknown; Layers?: unknown };
  if (typeof m !== 'object' || m === null || typeof m.Config !== 'string') throw malformed('manifest.json has no Config');
  if (!Array.isArray(m.Layers) || m.Layers.some((l) => typeof l !== 'string')) throw malformed('manifest.json has no list of Layers');
  const layerPaths = m.Layers as string[];

  const config = await bytesOf(need(contents, m.Config, 'the image config'));
  const diffIds = diffIdsOf(config, m.Config, layerPaths.length);
  const layers: LayerFile[] = [];
  for (const [i, path] of layerPaths.entries()) {
    const layer = await layerOf(contents, need(contents, path, `layer ${i + 1}`));
    if (layer.diffId !== diffIds[i]) {
      throw malformed(`layer ${i + 1} (${path}) has diff_id ${layer.diffId}, but the config's rootfs.diff_ids[${i}] is ${diffIds[i]}`);
    }
    layers.push(layer);
  }
  const cfg = { size: config.length, digest: digestOf(config) };
  return {
    layers,
    config,
    manifests: [
      { body: imageManifest('docker', cfg, layers), mediaType: MediaTypes.dockerManifest },
      // The same image for clients that take only OCI: same config bytes, so the same image ID.
      { body: imageManifest('oci', cfg, layers), mediaType: MediaTypes.ociManifest },
    ],
  };
}

// ------------------------------------------------------------------ OCI image layouts

interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  urls?: unknown;
  platform?: { os?: string; architecture?: string };
  annotations?: Record<string, string>;
}

const HOST_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };

async function fromOciLayout(contents: ArchiveContents): Promise<Image> {
  if (contents.entries.has('oci-layout')) {
    const layout = json(await bytesOf(need(contents, 'oci-layout', 'oci-layout')), 'oci-layout') as { imageLayoutVersion?: unknown };
    if (typeof layout?.imageLayoutVersion !== 'string') throw malformed('oci-layout has no imageLayoutVersion');
  }
  let index = json(await bytesOf(need(contents, 'index.json', 'index.json')), 'index.json');
  let where = 'index.json';
  let desc: Descriptor | undefined;
  for (let depth = 0; ; depth++) {
    desc = chooseManifest(index, where);
    if (!INDEX_TYPES.has(desc.mediaType ?? '')) break;
    if (depth >= MAX_INDEX_DEPTH) throw malformed(`indexes nest deeper than ${MAX_INDEX_DEPTH}`);
    where = `index ${desc.digest}`;
    index = json(await blob(contents, desc, where), where);
  }
  const body = await blob(contents, desc, `manifest ${desc.digest}`);
  let parsed;
  try {
    parsed = parseManifest(body, desc.mediaType);
  } catch (e) {
    throw malformed(`manifest ${desc.digest} is invalid: ${(e as Error).message}`);
  }
  const manifest = JSON.parse(body.toString('utf8')) as { config: Descriptor; layers: Descriptor[] } & Record<string, unknown>;
  const config = await blob(contents, manifest.config, 'the image config');
  const diffIds = diffIdsOf(config, `config ${manifest.config.digest}`, manifest.layers.length);

  const layers: LayerFile[] = [];
  let asIs = true;
  const encoding = parsed.mediaType === MediaTypes.dockerManifest ? 'docker' : 'oci';
  const rewritten: Descriptor[] = [];
  for (const [i, d] of manifest.layers.entries()) {
    if (d.urls !== undefined) throw malformed(`layer ${i + 1} (${d.digest}) is a foreign layer, which cannot be ingested`);
    const entry = blobEntry(contents, d, `layer ${i + 1}`);
    const layer = await layerOf(contents, entry);
    if (layer.diffId !== diffIds[i]) {
      throw malformed(`layer ${i + 1} (${d.digest}) has diff_id ${layer.diffId}, but the config's rootfs.diff_ids[${i}] is ${diffIds[i]}`);
    }
    layers.push(layer);
    if (!layer.recompressed && GZIP_LAYER_TYPES.has(d.mediaType ?? '')) {
      rewritten.push(d);
    } else {
      asIs = false;
      rewritten.push({ ...d, mediaType: layerMediaType(layer.compression, encoding), digest: layer.digest, size: layer.size });
    }
  }
  // Layers that had to be (re)compressed change the manifest; otherwise keep it byte for byte.
  const out = asIs ? body : withLayers(manifest, rewritten, desc.digest);
  return { layers, config, manifests: [{ body: out, mediaType: parsed.mediaType }] };
}

/**
 * The manifest with its layers replaced. JSON.parse takes any depth, but JSON.stringify
 * recurses: a field nested a few thousand levels deep overflows the stack, and that
 * RangeError must be the archive's fault (ArchiveError), not an unexplained build failure.
 */
function withLayers(manifest: Record<string, unknown>, layers: Descriptor[], digest: string): Buffer {
  try {
    return Buffer.from(JSON.stringify({ ...manifest, layers }));
  } catch (e) {
    if (e instanceof RangeError) throw malformed(`manifest ${digest} is nested too deeply to be rewritten with recompressed layers`);
    throw e;
  }
}

function chooseManifest(index: unknown, where: string): Descriptor {
  const list = (index as { manifests?: unknown } | null)?.manifests;
  if (!Array.isArray(list) || list.length === 0) throw malformed(`${where} lists no manifest`);
  const candidates = (list as Descriptor[]).filter((d) => typeof d === 'object' && d !== null
    && d.annotations?.['vnd.docker.reference.type'] !== 'attestation-manifest'
    && d.platform?.os !== 'unknown');
  if (candidates.length === 0) throw malformed(`${where} lists no image manifest`);
  const arch = HOST_ARCH[process.arch] ?? process.arch;
  const withPlatform = candidates.filter((d) => d.platform);
  if (withPlatform.length > 1) {
    const match = withPlatform.find((d) => d.platform?.os === 'linux' && d.platform.architecture === arch);
    if (!match) throw malformed(`${where} has no manifest for linux/${arch}`);
    return match;
  }
  if (candidates.length > 1 && withPlatform.length === 0) {
    throw malformed(`${where} lists ${candidates.length} images; an expression must produce exactly one`);
  }
  return withPlatform[0] ?? candidates[0]!;
}

function blobEntry(contents: ArchiveContents, d: Descriptor, what: string): ArchiveEntry {
  if (typeof d !== 'object' || d === null || typeof d.digest !== 'string' || !isDigest(d.digest)) {
    throw malformed(`${what} has no valid digest`);
  }
  const [alg, hex] = d.digest.split(':') as [string, string];
  if (alg !== 'sha256') throw malformed(`${what} uses ${alg}; only sha256 blobs can be ingested`);
  const entry = need(contents, `blobs/${alg}/${hex}`, what);
  if (entry.rawDigest !== d.digest) throw malformed(`${what}: blobs/${alg}/${hex} has digest ${entry.rawDigest}`);
  if (typeof d.size === 'number' && d.size !== entry.rawSize) {
    throw malformed(`${what}: blobs/${alg}/${hex} has ${entry.rawSize} bytes, its descriptor says ${d.size}`);
  }
  return entry;
}

async function blob(contents: ArchiveContents, d: Descriptor, what: string): Promise<Buffer> {
  return bytesOf(blobEntry(contents, d, what));
}

// ------------------------------------------------------------------ shared

function need(contents: ArchiveContents, path: string, what: string): ArchiveEntry {
  const found = contents.lookup(entryName(path));
  if ('missing' in found) throw malformed(`${what}: ${found.missing}`);
  return found;
}

/** The bytes of a metadata entry (manifest, config, index). */
async function bytesOf(entry: ArchiveEntry): Promise<Buffer> {
  if (entry.mem) return entry.mem;
  if (!entry.rawFile) throw malformed(`${entry.name} should be a JSON document, but it is a layer`);
  if (entry.rawSize > MAX_JSON_BYTES) throw malformed(`${entry.name} is larger than ${MAX_JSON_BYTES} bytes`);
  return fs.readFile(entry.rawFile);
}

function json(bytes: Buffer, what: string): unknown {
  try {
    return parseJson(bytes);
  } catch (e) {
    throw malformed(`${what} is not valid JSON: ${(e as Error).message}`);
  }
}

function diffIdsOf(config: Buffer, what: string, layers: number): string[] {
  const c = json(config, what) as { rootfs?: { diff_ids?: unknown } } | null;
  const ids = c?.rootfs?.diff_ids;
  if (!Array.isArray(ids) || ids.some((d) => typeof d !== 'string')) throw malformed(`${what} has no rootfs.diff_ids`);
  if (ids.length !== layers) throw malformed(`${what} lists ${ids.length} diff_ids for ${layers} layers`);
  return ids as string[];
}

/** The entry as a stored-ready layer: processed now if reading did not already. */
async function layerOf(contents: ArchiveContents, entry: ArchiveEntry): Promise<LayerFile> {
  if (entry.layer) return entry.layer;
  const source = entry.mem ? Readable.from([entry.mem]) : createReadStream(entry.rawFile!);
  try {
    const p = await processEntry(source, contents.nextTemp(), true, contents.compression);
    entry.layer = p.layer!;
    return entry.layer;
  } catch (e) {
    // Our own write failing for lack of space says nothing about the archive.
    if (noSpaceCode(e) !== undefined) throw e;
    throw malformed(`layer ${entry.name} cannot be read: ${(e as Error).message}`);
  }
}

/**
 * Stores layers, config and manifests, untagged (the builder tags, as for built images).
 * On failure, blobs this call newly linked into `repo` are unlinked again.
 */
async function commit(storage: Storage, repo: string, hash: string, image: Image): Promise<BuiltImage> {
  const linked: string[] = [];
  const configDigest = digestOf(image.config);
  try {
    const seen = new Set<string>();
    for (const l of image.layers) {
      if (seen.has(l.digest)) continue;
      seen.add(l.digest);
      if (await storage.blobSize(repo, l.digest) === undefined) linked.push(l.digest);
      await storage.commitFile(repo, l.file, l.digest, l.size);
    }
    if (await storage.blobSize(repo, configDigest) === undefined) linked.push(configDigest);
    await storage.writeBlob(repo, image.config, configDigest);
    const stored: StoredDescriptor[] = [];
    for (const m of image.manifests) {
      const parsed = parseManifest(m.body, m.mediaType);
      stored.push(await storage.putManifest(repo, m.body, parsed));
    }
    return { hash, manifest: stored[0]!, alternate: stored[1] };
  } catch (e) {
    for (const d of linked) await storage.deleteBlob(repo, d).catch(() => {});
    throw e;
  }
}
