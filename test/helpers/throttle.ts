// A TCP proxy that passes what a server answers at a set rate (so that a blob takes
// seconds to arrive) and notes when its last byte went through: TLS passes untouched.
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

/**
 * A TCP proxy in front of the upstream that passes its answers at `bytesPerSecond`, so
 * that a blob takes seconds to arrive; it notes when the last byte went through.
 */
export async function throttle(target: number, bytesPerSecond: number) {
  /** hang: what clients send from now on is swallowed, as by a server that stopped answering. */
  const state = { lastByte: 0, bytes: 0, hang: false };
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.once('close', () => sockets.delete(client));
    const upstream = connect(target, '127.0.0.1');
    client.on('data', (c: Buffer) => { if (!state.hang) upstream.write(c); });
    client.on('end', () => upstream.end());
    let began = 0;
    let sent = 0;
    upstream.on('data', (c: Buffer) => {
      upstream.pause();
      began ||= performance.now();
      client.write(c, () => {
        sent += c.length;
        state.bytes += c.length;
        state.lastByte = performance.now();
        // Paced against the clock, not per chunk: timers' granularity would slow it far below the rate.
        const ahead = (sent / bytesPerSecond) * 1000 - (performance.now() - began);
        if (ahead > 1) setTimeout(() => upstream.resume(), ahead); else upstream.resume();
      });
    });
    upstream.on('end', () => client.end());
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, state, close: () => new Promise((r) => { server.close(r); for (const c of sockets) c.destroy(); }) };
}
