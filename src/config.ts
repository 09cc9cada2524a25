// Command-line flags and their environment variables, resolved in one place.
import { resolve } from 'node:path';

export interface ServeConfig {
  host: string;
  port: number;
  data: string;
  images: string;
}

export const DEFAULTS = { listen: '127.0.0.1:5000', data: './data', images: './examples' } as const;

export function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(v);
  if (!m) throw new Error(`--listen must be HOST:PORT, got ${JSON.stringify(v)}`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port out of range in ${JSON.stringify(v)}`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export function serveConfig(flags: { listen?: string; data?: string; images?: string }, env = process.env): ServeConfig {
  const listen = flags.listen ?? env.NIXREG_LISTEN ?? DEFAULTS.listen;
  return {
    ...parseListen(listen),
    data: resolve(flags.data ?? env.NIXREG_DATA ?? DEFAULTS.data),
    images: resolve(flags.images ?? env.NIXREG_IMAGES ?? DEFAULTS.images),
  };
}
