// The token endpoint of the Docker token flow, /token: GET with Basic credentials (or
// none), as docker and skopeo ask; POST with an OAuth2 password-grant form, as containerd
// (and so kubelet) asks first. The gate decides what a token grants.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { Request, Response } from 'express';
import { withBody } from '../http.js';
import type { Ctx } from './context.js';

/** A password-grant form is a few hundred bytes; this is generous and still small. */
const MAX_FORM_BYTES = 16 * 1024;

export function token(ctx: Ctx) {
  return async (req: Request, res: Response) => {
    const form = req.method === 'POST'
      ? await withBody(req, MAX_FORM_BYTES, ctx.bodies.of(ctx.gate.client(req)), (b) => new URLSearchParams(b.toString('utf8')))
      : undefined;
    await ctx.gate.token(req, res, form);
  };
}
