// How built and ingested layers are compressed (--layer-compression, --gzip-level): the
// one place that knows the choices, the stream that does each, and the media types
// they are served as.
//
// Why a choice. gzip is what every client pulls, but it is the build's critical path:
// deflate costs ~25 s of CPU per GB, where tar and sha256 cost ~2 s. `none` serves the tar
// itself (as nix2container does): its digest is its diff_id, so a cold build costs little
// more than reading the closure and writing it once, which is right on a LAN, for a CI
// cache or a registry next to its cluster.
//
// Why no zstd. Node 20's zlib has none, and no binding reaches this network prebuilt
// (zstd-napi compiles libzstd at install). The zstd program as a filter, one process per
// layer, was measured (BENCHMARKS.md): 6x faster than pigz on one stream, but each
// process costs ~70 ms to start and tear down on these VMs and a fork of the server, so
// a 100-layer build took 16.9 s against 10.4 s with gzip. Node 22.15's zlib.zstdCompress
// is the way in once the engine moves.
//
// Room: build/assembly. Of build, imports only jobs/ (progress) and the shared errors.ts, types.ts and
// semaphore.ts; may import src/blobs and src/oci; never src/registry.
import type { Transform } from 'node:stream';
import { MediaTypes } from '../../oci/media-types.js';
import { ParallelGzip } from './gzip.js';

export const LAYER_COMPRESSIONS = ['gzip', 'none'] as const;
export type LayerCompression = (typeof LAYER_COMPRESSIONS)[number];

export interface CompressionSetting {
  kind: LayerCompression;
  /** 1..9; only gzip uses it. */
  gzipLevel: number;
}

export const DEFAULT_COMPRESSION: CompressionSetting = { kind: 'gzip', gzipLevel: 6 };

/**
 * Names what the setting makes of a tar: part of every layer's reuse key and recorded
 * with every build, so that a change of setting never reuses a layer or an image made
 * under another. Builds recorded before the setting existed were `gzip-6`.
 */
export function formatOf(s: CompressionSetting): string {
  switch (s.kind) {
    case 'gzip': return `gzip-${s.gzipLevel}`;
    case 'none': return 'none';
  }
}

export const LEGACY_FORMAT = 'gzip-6';

/** Parses --layer-compression and --gzip-level, saying what is wrong with either. */
export function parseCompression(kind: string, level: string): CompressionSetting {
  const k = kind.trim().toLowerCase();
  if (!(LAYER_COMPRESSIONS as readonly string[]).includes(k)) {
    throw new Error(`--layer-compression must be one of ${LAYER_COMPRESSIONS.join(', ')}, got ${JSON.stringify(kind)}`);
  }
  if (!/^[1-9]$/.test(level.trim())) throw new Error(`--gzip-level must be a whole number from 1 to 9, got ${JSON.stringify(level)}`);
  return { kind: k as LayerCompression, gzipLevel: Number(level) };
}

/** A stream that compresses a tar as `s` says, or undefined for `none` (the tar is the layer). */
export function compressor(s: CompressionSetting): Transform | undefined {
  return s.kind === 'gzip' ? new ParallelGzip(s.gzipLevel) : undefined;
}

/** The compression of a stored layer, as its media type (either manifest encoding) says. */
const TYPES: Record<'oci' | 'docker', Record<LayerCompression, string>> = {
  oci: { gzip: MediaTypes.ociLayerGzip, none: MediaTypes.ociLayer },
  docker: { gzip: MediaTypes.dockerLayerGzip, none: MediaTypes.dockerLayer },
};

export function layerMediaType(kind: LayerCompression, encoding: 'oci' | 'docker'): string {
  return TYPES[encoding][kind];
}
