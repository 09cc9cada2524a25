// The media types nixreg reads and writes, and which of them are manifests.
//
// Room: oci, the model the other rooms share. Imports nothing of nixreg's; knows neither HTTP, SQLite nor Nix.
export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  // Not in Docker's schema2 text, but containerd's and moby's name for these layers.
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  // nixreg's record of a built image's Nix closure (store path → layer, NAR size,
  // references): the artifactType of a referrer of the image manifest and its one blob.
  nixregClosure: 'application/vnd.nixreg.closure.v1+json',
} as const;

export const IMAGE_TYPES: ReadonlySet<string> = new Set([MediaTypes.ociManifest, MediaTypes.dockerManifest]);
export const INDEX_TYPES: ReadonlySet<string> = new Set([MediaTypes.ociIndex, MediaTypes.dockerList]);
export const MANIFEST_TYPES: readonly string[] = [...IMAGE_TYPES, ...INDEX_TYPES];
export const GZIP_LAYER_TYPES: ReadonlySet<string> = new Set([MediaTypes.ociLayerGzip, MediaTypes.dockerLayerGzip]);

/** Strips parameters and case from a media type (as a Content-Type or Accept item carries it). */
export function bareType(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}
