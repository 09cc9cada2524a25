// Hand-made image archives for the ingestion tests: docker-archive and OCI layouts with
// exactly the quirks (order, compression, links, broken parts) a test wants.
import { createHash } from 'node:crypto';
import { writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';

export interface Member {
  name: string;
  data?: Buffer | string;
  type?: 'file' | 'symlink' | 'link' | 'directory' | 'fifo';
  linkname?: string;
}

export const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

export async function tarOf(members: Member[]): Promise<Buffer> {
  const pack = tar.pack();
  const out: Buffer[] = [];
  const done = (async () => { for await (const c of pack) out.push(c as Buffer); })();
  for (const m of members) {
    const data = m.data === undefined ? undefined : Buffer.from(m.data);
    await new Promise<void>((resolve, reject) => {
      pack.entry({ name: m.name, type: m.type ?? 'file', linkname: m.linkname, mode: m.type === 'directory' ? 0o755 : 0o644,
        mtime: new Date(1000), ...(data ? { size: data.length } : {}) }, data ?? '', (e) => (e ? reject(e) : resolve()));
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(out);
}

/** A layer tar holding `files` (path → content). */
export function layerTar(files: Record<string, string | Buffer>): Promise<Buffer> {
  return tarOf(Object.entries(files).map(([name, data]) => ({ name, data })));
}

export interface DockerArchive {
  members: Member[];
  config: Buffer;
  diffIds: string[];
  layerPaths: string[];
}

/**
 * A `docker save` style archive. Layers are `<n>/layer.tar` (gzip-compressed if asked),
 * the config is `<sha>.json`, and manifest.json comes last, as streamLayeredImage has it.
 */
export function dockerArchive(layers: Buffer[], opts: { gzipLayers?: boolean; diffIds?: string[] } = {}): DockerArchive {
  const diffIds = opts.diffIds ?? layers.map((l) => `sha256:${sha(l)}`);
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/true'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
  }));
  const configName = `${sha(config)}.json`;
  const layerPaths = layers.map((_, i) => `layer${i}/layer.tar`);
  const members: Member[] = layers.map((l, i) => ({ name: layerPaths[i]!, data: opts.gzipLayers ? gzipSync(l) : l }));
  members.push({ name: configName, data: config });
  members.push({ name: 'manifest.json', data: JSON.stringify([{ Config: configName, RepoTags: ['t:1'], Layers: layerPaths }]) });
  return { members, config, diffIds, layerPaths };
}

export interface OciArchive {
  members: Member[];
  manifest: Buffer;
  config: Buffer;
  blobs: Map<string, Buffer>;
}

/** An OCI image layout archive (as `skopeo copy … oci-archive:` writes it). */
export function ociArchive(layers: Buffer[], opts: { gzip: boolean }): OciArchive {
  const blobs = new Map<string, Buffer>();
  const add = (b: Buffer) => { const d = `sha256:${sha(b)}`; blobs.set(d, b); return d; };
  const stored = layers.map((l) => (opts.gzip ? gzipSync(l) : l));
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha(l)}`) },
  }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: add(config), size: config.length },
    layers: stored.map((b) => ({
      mediaType: opts.gzip ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar',
      digest: add(b), size: b.length,
    })),
  }));
  const md = add(manifest);
  const index = { schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: md, size: manifest.length }] };
  const members: Member[] = [{ name: 'oci-layout', data: '{"imageLayoutVersion":"1.0.0"}' }, { name: 'blobs/', type: 'directory' }];
  for (const [d, b] of blobs) members.push({ name: `blobs/sha256/${d.slice(7)}`, data: b });
  members.push({ name: 'index.json', data: JSON.stringify(index) });
  return { members, manifest, config, blobs };
}

/** Writes an executable that streams `archive` like a streamLayeredImage script. */
export function streamScript(dir: string, archive: string, body = `exec cat '${archive}'`): string {
  const p = join(dir, '0123456789abcdfghijklmnpqrsvwxyz-stream-test');
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}
