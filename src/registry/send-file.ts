// Sends a byte range of a file as the body of a response whose headers are already set.
//
// Why not pipeline(createReadStream(...), res): a read stream allocates a fresh buffer
// for every read, so a 256 MiB blob GET cost 256 fresh 1 MiB buffers, and garbage
// collection plus page faults for them took more than half of the server's CPU time
// (bench/serve: ~300 ms of CPU per 256 MiB, against ~120 ms for Distribution). Two
// buffers that are reused, each refilled only once the socket has taken its previous
// contents, cut that to ~130 ms and keep at most 2 MiB per download in memory.
import { promises as fs } from 'node:fs';
import type { ServerResponse } from 'node:http';

const CHUNK = 1024 * 1024;

/** Writes bytes [start, end] (inclusive) of `path` to `res`, then ends it. */
export async function sendFileRange(path: string, start: number, end: number, res: ServerResponse): Promise<void> {
  const fh = await fs.open(path, 'r');
  let onClose = () => {};
  // A client that goes away must not leave this loop waiting on a write callback.
  const closed = new Promise<never>((_, reject) => {
    onClose = () => reject(Object.assign(new Error('client went away'), { code: 'ECONNRESET' }));
    res.once('close', onClose);
  });
  closed.catch(() => {});
  try {
    const bufs = [Buffer.allocUnsafe(Math.min(CHUNK, end - start + 1)), Buffer.allocUnsafe(Math.min(CHUNK, end - start + 1))] as const;
    const flushed: [Promise<void> | undefined, Promise<void> | undefined] = [undefined, undefined];
    let pos = start;
    for (let i: 0 | 1 = 0; pos <= end; i = i ? 0 : 1) {
      // bufs[i] may be refilled only once the socket has taken what it held before.
      if (flushed[i]) await Promise.race([flushed[i], closed]);
      const buf = bufs[i];
      const { bytesRead } = await Promise.race([fh.read(buf, 0, Math.min(buf.length, end - pos + 1), pos), closed]);
      if (bytesRead === 0) throw new Error(`${path} ends at byte ${pos}, before ${end + 1}`);
      pos += bytesRead;
      const chunk = buf.subarray(0, bytesRead);
      const p = new Promise<void>((resolve, reject) => { res.write(chunk, (err) => (err ? reject(err) : resolve())); });
      p.catch(() => {});
      flushed[i] = p;
    }
    await Promise.race([Promise.all(flushed), closed]);
  } finally {
    res.off('close', onClose);
    // Safe even when a read is still in flight after an abort: close waits for it.
    await fh.close();
  }
  res.end();
}
