// The pull-through cache: which local repositories mirror which upstream, and how a
// manifest or blob of one is found: in the store if cached, else fetched upstream once
// for all who ask (single-flight per repository and reference in this process), stored
// byte for byte under its own digest, media type unchanged. A tag is trusted for the
// upstream's freshness, then checked with a HEAD (which Docker Hub does not count
// against its pull limit); when the upstream cannot answer, what is cached is served,
// a stale tag with a warning. Pulls by digest never ask upstream when cached.
//
// When each tag was last checked upstream is kept in memory, per process and bounded
// (an LRU): after a restart every cached tag is checked once more, which costs a HEAD.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { Storage } from '../../blobs/storage.js';
import type { Descriptor } from '../../oci/descriptor.js';
import { algorithmOf, digestOf, isDigest } from '../../oci/digest.js';
import { parseManifest } from '../../oci/manifest.js';
import { MANIFEST_TYPES } from '../../oci/media-types.js';
import type { Reference } from '../../oci/reference.js';
import { RegistryError } from '../errors.js';
import { MAX_MANIFEST_BYTES } from '../negotiate.js';
import type { Upstream } from './config.js';
import { BlobFlight } from './flight.js';
import { UpstreamClient, UpstreamError, readSmall, type UpstreamResponse } from './upstream.js';

/** A local repository of a mirror: its upstream and its name there. */
export interface Route { client: UpstreamClient; up: Upstream; name: string }

/** Tags whose last upstream check is remembered. */
const CHECKED_TAGS = 100_000;
/**
 * After an upstream failed to answer, its stale tags are served without asking it again
 * for this long: a hung upstream must not make every pull wait out its timeout.
 */
const QUIET_AFTER_FAILURE_MS = 10_000;
/** Every manifest type: the upstream picks, and the same bytes are served to each client that accepts them. */
const ACCEPT = MANIFEST_TYPES.join(', ');

export class Mirror {
  private readonly routes: Route[];
  private readonly checked = new LRUCache<string, number>({ max: CHECKED_TAGS });
  private readonly manifests = new Map<string, Promise<{ d: Descriptor; warning?: string | undefined }>>();
  /** Undefined: the blob was in the store already (another repository's) and is linked now. */
  private readonly flights = new Map<string, Promise<BlobFlight | undefined>>();
  /** By prefix: when the upstream last failed to answer. */
  private readonly failedAt = new Map<string, { at: number; answer: UpstreamError['answer'] }>();
  /** Upstream GETs of blobs started, for tests and /nixreg/stats. */
  readonly counts = { blobFetches: 0, blobsLinked: 0, manifestFetches: 0, tagChecks: 0, staleServed: 0 };

  constructor(upstreams: Upstream[], private readonly storage: Storage, private readonly log: Logger) {
    this.routes = upstreams.map((up) => ({ up, client: new UpstreamClient(up), name: '' }));
  }

  close(): void { for (const r of this.routes) r.client.close(); }

  get upstreams(): Upstream[] { return this.routes.map((r) => r.up); }

  /** The mirror that `repo` belongs to, or undefined for a repository of this registry's own. */
  route(repo: string): Route | undefined {
    const r = this.routes.find((x) => repo.startsWith(`${x.up.prefix}/`));
    if (!r) return undefined;
    let name = repo.slice(r.up.prefix.length + 1);
    // Docker Hub's official images live under library/, which `docker pull alpine` adds.
    if (!name.includes('/') && /^https:\/\/registry-1\.docker\.io$/.test(r.up.origin)) name = `library/${name}`;
    return { ...r, name };
  }

  /** The local prefix of the upstream that mirrors registry `ns` (containerd's ?ns=). */
  prefixFor(ns: string): string | undefined {
    const n = ns.toLowerCase();
    return this.routes.find((r) => r.up.namespaces.includes(n))?.up.prefix;
  }

  /** The manifest `ref` of mirrored `repo`: cached, or fetched upstream; with a warning when served stale. */
  async manifest(repo: string, ref: Reference, r: Route): Promise<{ d: Descriptor; warning?: string | undefined }> {
    const local = await this.storage.resolveManifest(repo, ref);
    if (ref.digest !== undefined) {
      if (local) return { d: local };
      return this.once(`${repo}@${ref.digest}`, () => this.fetchManifest(repo, r, ref.digest!, undefined));
    }
    const tag = ref.tag!;
    const key = `${repo}:${tag}`;
    const at = this.checked.get(key);
    if (local && at !== undefined && Date.now() - at < r.up.freshnessMs) return { d: local };
    return this.once(key, () => this.checkTag(repo, tag, r, local));
  }

  private once(key: string, fn: () => Promise<{ d: Descriptor; warning?: string | undefined }>) {
    let p = this.manifests.get(key);
    if (!p) {
      p = fn().finally(() => this.manifests.delete(key));
      this.manifests.set(key, p);
    }
    return p;
  }

  /** Asks upstream what `tag` names now (HEAD), fetching the manifest if it is new to us. */
  private async checkTag(repo: string, tag: string, r: Route, local: Descriptor | undefined): Promise<{ d: Descriptor; warning?: string | undefined }> {
    const key = `${repo}:${tag}`;
    try {
      // Nothing cached: the GET is needed anyway, and tells the digest too.
      if (!local) {
        const fetched = await this.fetchManifest(repo, r, tag, tag);
        this.checked.set(key, Date.now());
        return fetched;
      }
      const failed = this.failedAt.get(r.up.prefix);
      if (failed && Date.now() - failed.at < QUIET_AFTER_FAILURE_MS) return this.stale(repo, tag, r, local, failed.answer);
      this.counts.tagChecks++;
      const head = await r.client.request('HEAD', `/v2/${r.name}/manifests/${tag}`, r.name, ACCEPT);
      head.body.resume();
      this.failedAt.delete(r.up.prefix);
      if (head.status === 404) throw unknown('MANIFEST_UNKNOWN', r, repo, tag);
      if (head.status !== 200) throw statusError(r, head);
      const digest = header(head, 'docker-content-digest');
      if (digest !== undefined && isDigest(digest)) {
        const have = local?.digest === digest ? local : await this.storage.resolveManifest(repo, { digest });
        if (have) {
          if (local?.digest !== digest) await this.storage.tag(repo, tag, digest);
          this.checked.set(key, Date.now());
          return { d: have };
        }
      }
      const fetched = await this.fetchManifest(repo, r, digest !== undefined && isDigest(digest) ? digest : tag, tag);
      this.checked.set(key, Date.now());
      return fetched;
    } catch (err) {
      if (!(err instanceof UpstreamError) || !local) throw err;
      this.failedAt.set(r.up.prefix, { at: Date.now(), answer: err.answer });
      return this.stale(repo, tag, r, local, err.answer);
    }
  }

  private stale(repo: string, tag: string, r: Route, local: Descriptor, answer: UpstreamError['answer']) {
    this.counts.staleServed++;
    this.log.warn({ repository: repo, tag, upstream: r.client.label, answer }, 'upstream cannot be asked; serving the cached tag');
    return { d: local, warning: `nixreg: cached tag served, upstream ${r.client.label} could not be checked (${answerText(answer)})` };
  }

  /** GETs manifest `ref` upstream, checks it and stores it byte for byte (and `tag` → it). */
  private async fetchManifest(repo: string, r: Route, ref: string, tag: string | undefined): Promise<{ d: Descriptor }> {
    this.counts.manifestFetches++;
    const res = await r.client.request('GET', `/v2/${r.name}/manifests/${ref}`, r.name, ACCEPT);
    if (res.status === 404) { res.body.resume(); throw unknown('MANIFEST_UNKNOWN', r, repo, ref); }
    if (res.status !== 200) { res.body.resume(); throw statusError(r, res); }
    let body: Buffer;
    try { body = await readSmall(res.body, MAX_MANIFEST_BYTES); } catch (e) {
      if (e instanceof UpstreamError) throw e;
      throw new UpstreamError(r.client.label, 502, `upstream ${r.client.label} sent a manifest larger than ${MAX_MANIFEST_BYTES} bytes or cut it`);
    }
    const expected = isDigest(ref) ? ref : header(res, 'docker-content-digest');
    const digest = digestOf(body, expected !== undefined && isDigest(expected) ? algorithmOf(expected) : 'sha256');
    if (isDigest(ref) && digest !== ref) {
      throw new RegistryError('UNAVAILABLE', `upstream ${r.client.label} sent a manifest of digest ${digest} for ${ref}; nothing was stored`, { upstream: r.up.prefix }, 502);
    }
    let parsed;
    try { parsed = parseManifest(body, header(res, 'content-type')); } catch (e) {
      throw new RegistryError('UNAVAILABLE', `upstream ${r.client.label} sent a manifest nixreg cannot serve: ${(e as Error).message}`, { upstream: r.up.prefix }, 502);
    }
    // The children (blobs, and an index's manifests) come when the client asks for them.
    const d = await this.storage.putManifest(repo, body, { ...parsed, blobs: [], manifests: [], byDigest: false }, tag, digest);
    return { d };
  }

  /**
   * Blob `digest` of mirrored `repo` when it is not cached: the flight fetching it,
   * joined or started (one upstream GET for every concurrent client), or its size after
   * all when it was committed meanwhile.
   */
  async blob(repo: string, digest: string, r: Route): Promise<{ flight: BlobFlight } | { size: number }> {
    const key = `${repo}@${digest}`;
    for (let tries = 0; ; tries++) {
      const size = await this.storage.blobSize(repo, digest);
      if (size !== undefined) return { size };
      let p = this.flights.get(key);
      if (!p) {
        p = this.startFlight(repo, digest, r);
        this.flights.set(key, p);
        const drop = () => { if (this.flights.get(key) === p) this.flights.delete(key); };
        p.then((f) => f?.settled.then(() => {
          drop();
          if (f.error) this.log.warn({ repository: repo, digest, upstream: r.client.label, err: f.error.message }, 'mirroring a blob failed');
        }), drop);
      }
      const f = await p;
      if (!f) { if (tries > 2) throw new UpstreamError(r.client.label, 502, `blob ${digest} vanished while it was linked`); continue; }
      if (!f.over) return { flight: f };
      // Just finished: committed (found above, next turn) or failed (fetched again, once).
      if (f.error && tries > 0) throw new UpstreamError(r.client.label, 502, `mirroring blob ${digest} from upstream ${r.client.label} failed: ${f.error.message}`);
    }
  }

  private async startFlight(repo: string, digest: string, r: Route): Promise<BlobFlight | undefined> {
    this.counts.blobFetches++;
    const res = await r.client.request('GET', `/v2/${r.name}/blobs/${digest}`, r.name);
    if (res.status === 404) { res.body.resume(); throw unknown('BLOB_UNKNOWN', r, repo, digest); }
    if (res.status !== 200) { res.body.resume(); throw statusError(r, res); }
    // The upstream lets this repository have the blob; when another repository here has
    // it (a shared base layer), linking it costs nothing and the body is not read. Asked
    // only now, not before the GET: the upstream decides what the repository may see.
    if (await this.storage.linkBlob(repo, digest)) {
      res.body.destroy();
      this.counts.blobFetches--;
      this.counts.blobsLinked++;
      return undefined;
    }
    const len = header(res, 'content-length');
    const size = len !== undefined && /^\d{1,16}$/.test(len) ? Number(len) : undefined;
    return BlobFlight.start(this.storage.tmpDir, digest, size, res.body,
      (file, n) => this.storage.commitFile(repo, file, digest, n));
  }

  /** The size of an uncached blob, asked upstream (a HEAD fetches nothing). */
  async blobHead(repo: string, digest: string, r: Route): Promise<number | undefined> {
    const res = await r.client.request('HEAD', `/v2/${r.name}/blobs/${digest}`, r.name);
    res.body.resume();
    if (res.status === 404) throw unknown('BLOB_UNKNOWN', r, repo, digest);
    if (res.status !== 200) throw statusError(r, res);
    const len = header(res, 'content-length');
    return len !== undefined && /^\d{1,16}$/.test(len) ? Number(len) : undefined;
  }
}

function header(res: UpstreamResponse, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function unknown(code: 'MANIFEST_UNKNOWN' | 'BLOB_UNKNOWN', r: Route, repo: string, ref: string): RegistryError {
  return new RegistryError(code, `${ref} not found in ${repo}: upstream ${r.client.label} answered 404 for ${r.name}`, { upstream: r.up.prefix });
}

function statusError(r: Route, res: UpstreamResponse): UpstreamError {
  return new UpstreamError(r.client.label, res.status, `upstream ${r.client.label} answered ${res.status}`, header(res, 'retry-after'));
}

function answerText(a: UpstreamError['answer']): string {
  return typeof a === 'number' ? `it answered ${a}` : a === 'timeout' ? 'it did not answer in time' : 'it is unreachable';
}

