// Where blobs live in S3 (--storage s3://BUCKET[/PREFIX]), parsed apart from the S3 store
// itself: the configuration reads it at every start, and the AWS SDK (megabytes of
// modules) is loaded only by a server that uses S3 (storage.ts imports s3.ts on demand).
//
// Room: blobs. May import src/oci; never src/build or src/registry.

export interface S3Location {
  bucket: string;
  /** Prepended to every object name: '' or ending in '/'. */
  prefix: string;
}

/** `s3://BUCKET[/PREFIX]` split, or an error that says what is wrong. */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url);
  if (!m) throw new Error(`--storage must be s3://BUCKET[/PREFIX] with a valid bucket name, got ${JSON.stringify(url)}`);
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  if (prefix && !/^[A-Za-z0-9._\-/]{1,512}$/.test(prefix)) {
    throw new Error(`--storage: the prefix may hold letters, digits, '.', '_', '-' and '/', got ${JSON.stringify(prefix)}`);
  }
  return { bucket: m[1]!, prefix: prefix ? `${prefix}/` : '' };
}
