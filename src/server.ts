// Starts and stops the registry: storage, the optional image source, and the HTTP server.
//
// Composition root: may import every room; no room imports it.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Storage, type StorageOptions } from './blobs/storage.js';
import type { Logger } from './log.js';
import { limitsConfig, type LimitsConfig } from './config.js';
import { createApp } from './registry/app.js';
import { limitConnections } from './registry/connections.js';
import type { ImageSource } from './build/image-source.js';

export interface RunningRegistry {
  server: Server;
  storage: Storage;
  url: string;
  close(): Promise<void>;
}

export interface StartOptions {
  host: string;
  port: number;
  data: string;
  log: Logger;
  /** Storage tuning (upload max age, cache sizes). */
  storage?: StorageOptions;
  /** Timeouts and bounds (config.ts; defaults for any left out). */
  limits?: Partial<LimitsConfig>;
  /** Builds the image source once storage is open (build-on-pull). */
  source?: (storage: Storage) => ImageSource | undefined;
}

export async function startRegistry(opts: StartOptions): Promise<RunningRegistry> {
  const storage = await Storage.open(opts.data, opts.storage);
  const source = opts.source?.(storage);
  const limits = { ...limitsConfig({}), ...opts.limits };
  const server = createServer();
  const connections = limitConnections(server, limits);
  server.on('request', createApp({ storage, source, log: opts.log, limits, counters: () => ({ connections }) }));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  let closing: Promise<void> | undefined;
  return {
    server,
    storage,
    url: `http://${host}:${addr.port}`,
    close() {
      closing ??= (async () => {
        // In-flight requests finish; idle keep-alive sockets are closed so close() returns.
        const done = new Promise<void>((r) => server.close(() => r()));
        server.closeIdleConnections();
        // A response the client has read in full may not have ended yet on this side
        // (a file sent chunk by chunk ends after its last write), so its keep-alive
        // connection turns idle only after the call above: keep closing what turns idle.
        const sweep = setInterval(() => server.closeIdleConnections(), 100);
        const force = setTimeout(() => server.closeAllConnections(), 30_000);
        force.unref();
        await done;
        clearTimeout(force);
        clearInterval(sweep);
        storage.close();
      })();
      return closing;
    },
  };
}
