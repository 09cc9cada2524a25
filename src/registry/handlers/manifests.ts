// end-3 (GET/HEAD manifest), end-7 (PUT manifest), end-9 (DELETE manifest or tag).
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import type { Descriptor } from '../../oci/descriptor.js';
import { digestOf, parseDigest } from '../../oci/digest.js';
import { parseManifest } from '../../oci/manifest.js';
import { checkReference, isTag } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import { etagMatches, withBody } from '../http.js';
import { MAX_MANIFEST_BYTES, accepts } from '../negotiate.js';
import { checkWritable, repoOf, type Ctx } from './context.js';

function manifestUnknown(repo: string, ref: { tag?: string | undefined; digest?: string | undefined }): RegistryError {
  return new RegistryError('MANIFEST_UNKNOWN', `manifest ${ref.tag ?? ref.digest} not found in ${repo}`, ref);
}

function refOf(req: Request) {
  return checkReference(String(req.params.reference));
}

/**
 * The reference of a read or delete. A string that is not a valid tag names nothing
 * that could exist, so it is MANIFEST_UNKNOWN (404), as conformance expects; a
 * malformed digest stays DIGEST_INVALID.
 */
function lookupRefOf(req: Request) {
  const reference = String(req.params.reference);
  if (!isTag(reference) && !reference.includes(':')) {
    throw new RegistryError('MANIFEST_UNKNOWN', `manifest ${reference.slice(0, 200)} is not a valid tag and cannot exist`,
      { reference: reference.slice(0, 200) });
  }
  return checkReference(reference);
}

export function getManifest(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const ref = lookupRefOf(req);
    const accept = req.headers.accept;
    const ok = (mt: string) => accepts(accept, mt);
    // serves() looks for the repository's image file on disk: once per request is enough.
    const owned = ctx.source ? await ctx.source.serves(repo) : false;
    let d: Descriptor | undefined;
    if (owned) d = await ctx.source!.resolve(repo, ref, ok);
    const mirrored = owned ? undefined : ctx.mirror?.route(repo);
    if (mirrored) {
      const m = await ctx.mirror!.manifest(repo, ref, mirrored);
      d = m.d;
      if (m.warning) res.set('Warning', `299 nixreg "${m.warning.replace(/["\\]/g, '')}"`);
    }
    d ??= await ctx.storage.resolveManifest(repo, ref);
    if (!d) {
      if (!owned && !await ctx.storage.repositoryExists(repo)) {
        throw new RegistryError('NAME_UNKNOWN', `repository ${repo} not known to registry`, { name: repo });
      }
      throw manifestUnknown(repo, ref);
    }
    // The cache quota evicts the built images pulled least recently.
    if (owned) ctx.storage.notePulled(repo, d.digest);
    if (!ok(d.mediaType)) {
      throw new RegistryError('MANIFEST_UNKNOWN',
        `manifest ${ref.tag ?? ref.digest} is ${d.mediaType}, which the client's Accept header does not allow`,
        { mediaType: d.mediaType });
    }
    const etag = `"${d.digest}"`;
    res.set({
      'Content-Type': d.mediaType,
      'Content-Length': String(d.size),
      'Docker-Content-Digest': d.digest,
      ETag: etag,
    });
    if (etagMatches(req.headers['if-none-match'], etag)) { res.status(304).end(); return; }
    if (req.method === 'HEAD') { res.status(200).end(); return; }
    let body: Buffer;
    try {
      body = await ctx.storage.readManifest(d);
    } catch (err) {
      // Deleted between lookup and read: the manifest is simply gone now.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      throw manifestUnknown(repo, ref);
    }
    res.status(200).end(body);
  };
}

export function putManifest(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const ref = refOf(req);
    checkWritable(ctx, repo);
    const { digest, parsed } = await withBody(req, MAX_MANIFEST_BYTES, ctx.bodies.of(ctx.gate.client(req)), async (body) => {
      const parsed = parseManifest(body, req.headers['content-type']);
      const digest = digestOf(body, ref.digest ? parseDigest(ref.digest)!.algorithm : 'sha256');
      if (ref.digest && ref.digest !== digest) {
        throw new RegistryError('DIGEST_INVALID', 'manifest digest does not match the reference', { expected: ref.digest, actual: digest });
      }
      // Moving a tag that points elsewhere is `update`; the route's check was `create`.
      if (ref.tag !== undefined && ctx.gate.enabled) {
        const current = await ctx.storage.resolveManifest(repo, { tag: ref.tag });
        if (current && current.digest !== digest) ctx.gate.need(req, repo, 'update');
      }
      await ctx.storage.putManifest(repo, body, { ...parsed, byDigest: ref.tag === undefined }, ref.tag, digest);
      return { digest, parsed };
    });
    res.status(201).set({
      Location: `/v2/${repo}/manifests/${digest}`,
      'Docker-Content-Digest': digest,
      'Content-Length': '0',
    });
    if (parsed.subject) res.set('OCI-Subject', parsed.subject);
    res.end();
  };
}

export function deleteManifest(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const repo = repoOf(req);
    const ref = lookupRefOf(req);
    checkWritable(ctx, repo);
    const found = ref.tag !== undefined
      ? await ctx.storage.deleteTag(repo, ref.tag)
      : await ctx.storage.deleteManifest(repo, ref.digest!);
    if (!found) throw manifestUnknown(repo, ref);
    res.status(202).set('Content-Length', '0').end();
  };
}
