// The endpoint table: every route of the OCI distribution-spec v1.1, by its spec id,
// nixreg's own under /nixreg, the token endpoint, health probes and metrics; with what each one requires of
// the caller when auth is on (auth/gate.ts).
// Names may contain slashes, so each pattern anchors the suffix and lets the name be
// the greedy rest; the name is then checked against the spec grammar in the handler.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import { catalog, listTags, referrers } from './handlers/listing.js';
import { deleteBlob, getBlob } from './handlers/blobs.js';
import { deleteManifest, getManifest, putManifest } from './handlers/manifests.js';
import { buildLog, collect, getBuild, listBuilds, startBuild, stats } from './handlers/nixreg.js';
import { apiClosure, apiCompare, apiImage, apiRepositories, apiTags } from './handlers/api.js';
import { healthz, metrics, readyz } from './handlers/monitoring.js';
import { token } from './handlers/token.js';
import { cancelUpload, finishUpload, patchUpload, startUpload, uploadStatus } from './handlers/uploads.js';
import type { Ctx } from './handlers/context.js';
import type { Access } from './auth/gate.js';
import { asset, buildPage, buildsPage, comparePage, homePage, imagePage, login, operatorPage, repositoryPage } from './ui/pages.js';

type Method = 'get' | 'head' | 'put' | 'post' | 'patch' | 'delete';
type Handler = (req: Request, res: Response) => unknown;

export interface Endpoint {
  id: string;
  methods: Method[];
  path: RegExp;
  access: Access;
  handler: (ctx: Ctx) => Handler;
  /** A page of the web page: served only with --ui on. */
  page?: boolean;
}

const NAME = '(?<name>.+)';
const ID = '(?<id>[^/]+)';
const DIGEST = '(?<digest>[^/]+)';
const REF = '(?<reference>[^/]+)';

const base = (_ctx: Ctx) => (_req: Request, res: Response) => { res.status(200).json({}); };

export const endpoints: Endpoint[] = [
  { id: 'end-1', access: 'signed-in', methods: ['get', 'head'], path: /^\/v2\/?$/, handler: base },
  { id: 'catalog', access: 'listing', methods: ['get'], path: /^\/v2\/_catalog$/, handler: catalog },
  { id: 'end-4a/4b/11', access: 'push', methods: ['post'], path: new RegExp(`^/v2/${NAME}/blobs/uploads/?$`), handler: startUpload },
  { id: 'end-13', access: 'push', methods: ['get', 'head'], path: new RegExp(`^/v2/${NAME}/blobs/uploads/${ID}$`), handler: uploadStatus },
  { id: 'end-5', access: 'push', methods: ['patch'], path: new RegExp(`^/v2/${NAME}/blobs/uploads/${ID}$`), handler: patchUpload },
  { id: 'end-6', access: 'push', methods: ['put'], path: new RegExp(`^/v2/${NAME}/blobs/uploads/${ID}$`), handler: finishUpload },
  { id: 'upload-delete', access: 'push', methods: ['delete'], path: new RegExp(`^/v2/${NAME}/blobs/uploads/${ID}$`), handler: cancelUpload },
  { id: 'end-2', access: 'pull', methods: ['get', 'head'], path: new RegExp(`^/v2/${NAME}/blobs/${DIGEST}$`), handler: getBlob },
  { id: 'end-10', access: 'delete', methods: ['delete'], path: new RegExp(`^/v2/${NAME}/blobs/${DIGEST}$`), handler: deleteBlob },
  { id: 'end-3', access: 'pull', methods: ['get', 'head'], path: new RegExp(`^/v2/${NAME}/manifests/${REF}$`), handler: getManifest },
  { id: 'end-7', access: 'push', methods: ['put'], path: new RegExp(`^/v2/${NAME}/manifests/${REF}$`), handler: putManifest },
  { id: 'end-9', access: 'delete', methods: ['delete'], path: new RegExp(`^/v2/${NAME}/manifests/${REF}$`), handler: deleteManifest },
  { id: 'end-8a/8b', access: 'pull', methods: ['get'], path: new RegExp(`^/v2/${NAME}/tags/list$`), handler: listTags },
  { id: 'end-12a/12b', access: 'pull', methods: ['get'], path: new RegExp(`^/v2/${NAME}/referrers/${DIGEST}$`), handler: referrers },
  { id: 'nixreg-builds', access: 'listing', methods: ['get'], path: /^\/nixreg\/builds$/, handler: listBuilds },
  // The handler asks for `pull` on the body's repository: the name is not in the path.
  { id: 'nixreg-build-start', access: 'listing', methods: ['post'], path: /^\/nixreg\/builds$/, handler: startBuild },
  { id: 'nixreg-build', access: 'listing', methods: ['get'], path: new RegExp(`^/nixreg/builds/${ID}$`), handler: getBuild },
  { id: 'nixreg-build-log', access: 'listing', methods: ['get'], path: new RegExp(`^/nixreg/builds/${ID}/log$`), handler: buildLog },
  // The web page's JSON API: 'listing', since a repository the caller may not read answers
  // as one that does not exist (ui/data.ts), never 401/403, which would say it exists.
  { id: 'nixreg-api-repositories', access: 'listing', methods: ['get'], path: /^\/nixreg\/api\/repositories$/, handler: apiRepositories },
  { id: 'nixreg-api-closure', access: 'listing', methods: ['get'], path: new RegExp(`^/nixreg/api/repositories/${NAME}/images/${REF}/closure$`), handler: apiClosure },
  { id: 'nixreg-api-image', access: 'listing', methods: ['get'], path: new RegExp(`^/nixreg/api/repositories/${NAME}/images/${REF}$`), handler: apiImage },
  { id: 'nixreg-api-compare', access: 'listing', methods: ['get'], path: new RegExp(`^/nixreg/api/repositories/${NAME}/compare$`), handler: apiCompare },
  { id: 'nixreg-api-tags', access: 'listing', methods: ['get'], path: new RegExp(`^/nixreg/api/repositories/${NAME}/tags$`), handler: apiTags },
  // The pages (--ui): a repository is named in the query, where a slash is no separator.
  { id: 'ui-home', page: true, access: 'listing', methods: ['get', 'head'], path: /^\/$/, handler: homePage },
  { id: 'ui-repository', page: true, access: 'listing', methods: ['get', 'head'], path: /^\/repository$/, handler: repositoryPage },
  { id: 'ui-image', page: true, access: 'listing', methods: ['get', 'head'], path: /^\/image$/, handler: imagePage },
  { id: 'ui-compare', page: true, access: 'listing', methods: ['get', 'head'], path: /^\/compare$/, handler: comparePage },
  { id: 'ui-builds', page: true, access: 'listing', methods: ['get', 'head'], path: /^\/builds$/, handler: buildsPage },
  { id: 'ui-build', page: true, access: 'listing', methods: ['get', 'head'], path: /^\/build$/, handler: buildPage },
  { id: 'ui-operator', page: true, access: 'admin', methods: ['get', 'head'], path: /^\/operator$/, handler: operatorPage },
  { id: 'ui-login', page: true, access: 'listing', methods: ['get'], path: /^\/login$/, handler: login },
  { id: 'ui-asset', page: true, access: 'open', methods: ['get', 'head'], path: /^\/static\/(?<file>app\.js|app\.css|icon\.svg)$/, handler: asset },
  { id: 'token', access: 'open', methods: ['get', 'post'], path: /^\/token$/, handler: token },
  { id: 'nixreg-stats', access: 'admin', methods: ['get'], path: /^\/nixreg\/stats$/, handler: stats },
  { id: 'nixreg-gc', access: 'admin', methods: ['post'], path: /^\/nixreg\/gc$/, handler: collect },
  { id: 'healthz', access: 'open', methods: ['get', 'head'], path: /^\/healthz$/, handler: healthz },
  { id: 'readyz', access: 'open', methods: ['get', 'head'], path: /^\/readyz$/, handler: readyz },
  { id: 'metrics', access: 'metrics', methods: ['get'], path: /^\/metrics$/, handler: metrics },
];
