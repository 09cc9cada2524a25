// The minimum rate of a blob upload body (--min-upload-rate over --upload-rate-window).
//
// Why, beside connections.ts's no-progress timeout: a client that sends 10 bytes every
// 10 s is never quiet for long, so it is never cut, and its chunk holds the upload (every
// other request for it, its own finish included, gets 416) and a connection for as long
// as it likes. A body must therefore also average a rate over each window; one that
// does not is cut where it stands: what arrived is kept, the upload is released and can
// be resumed or finished, and the answer (408) says how far it got.
//
// Only the client's slowness counts: a window in which we held the body back (the disk
// was slower than the client, so the pipe paused the request) is not judged.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { IncomingMessage } from 'node:http';
import { Transform, finished, type Readable } from 'node:stream';

export interface UploadRate {
  /** Bytes per second a body must average over each window; 0 turns the check off. */
  bytesPerSecond: number;
  windowMs: number;
}

export interface MeteredBody {
  /** The body to read. Cut short, it ends (normally) with what had arrived. */
  readonly stream: Readable;
  /** Whether it was cut short for being too slow. */
  readonly cut: boolean;
  /**
   * Called once the body's reader is done (or failed): stops the meter and hands what is
   * left of the request back, so an error answer can drain it as for any other request.
   */
  stop(): void;
}

/** `req`'s body, cut short if the client sends it slower than `rate`. */
export function meteredBody(req: IncomingMessage, rate: UploadRate): MeteredBody {
  if (rate.bytesPerSecond <= 0) return { stream: req, cut: false, stop() {} };
  let bytes = 0;
  let cut = false;
  // Set when the request is paused by the pipe (we are behind), cleared at a window's end
  // if it no longer is.
  let held = false;
  const stream = new Transform({ transform(chunk: Buffer, _enc, cb) { bytes += chunk.length; cb(null, chunk); } });
  const onPause = () => { held = true; };
  req.on('pause', onPause);
  req.pipe(stream);
  // A client going away still fails the reader (blobs/files.ts's detach tells it), unless
  // the body was cut already: then its end is written, and the rest is not ours to lose.
  const unwatch = finished(req, (err) => { if (err && !cut) stream.destroy(err); });
  const minBytes = rate.bytesPerSecond * rate.windowMs / 1000;
  const timer = setInterval(() => {
    if (held) held = req.isPaused();
    else if (bytes < minBytes && !req.complete) {
      cut = true;
      stop();
      stream.end();
      return;
    }
    bytes = 0;
  }, rate.windowMs);
  timer.unref();
  function stop() {
    clearInterval(timer);
    unwatch();
    req.off('pause', onPause);
    req.unpipe(stream);
  }
  return { stream, get cut() { return cut; }, stop };
}
