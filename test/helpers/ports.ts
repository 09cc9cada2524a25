// Free TCP ports on 127.0.0.1 for servers that cannot be told to pick their own (port 0)
// and report it: PostgreSQL and Ceph take their ports from their configuration.
import { createServer } from 'node:net';

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * `count` consecutive ports that are free now (a Ceph OSD binds four ports from a range).
 * Drawn at random below Linux's ephemeral range (32768 and up), where outgoing connections
 * would take them, so that parallel test files rarely draw the same block.
 */
export async function freePorts(count: number): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 10_000 + Math.floor(Math.random() * (32_000 - 10_000 - count));
    let ok = true;
    for (let p = base; ok && p < base + count; p++) ok = await bindable(p);
    if (ok) return base;
  }
  throw new Error(`no ${count} consecutive free ports on 127.0.0.1`);
}
