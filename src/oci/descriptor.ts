// Descriptors: how one OCI object names another (image-spec descriptor.md), reduced to
// what nixreg serves and records.
//
// Room: oci, the model the other rooms share. Imports nothing of nixreg's; knows neither HTTP, SQLite nor Nix.

/** A manifest (or index) as stored: its digest, media type and size in bytes. */
export interface Descriptor {
  digest: string;
  mediaType: string;
  size: number;
}

/** A blob by content: digest and size (config and layers of an image being written). */
export interface BlobRef {
  digest: string;
  size: number;
}
