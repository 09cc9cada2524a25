// A TCP proxy that holds every chunk for a fixed time in each direction: a round trip
// on loopback, for bench/http2, where netem is not available (and would slow every other
// loopback user too). It adds latency, not a bandwidth limit: exactly what makes a
// flow-control window matter (a window of W bytes moves at most W per round trip).
//
//   node dist/bench/http2/delay.js --listen P --target Q --one-way-ms D
import { connect, createServer, type Socket } from 'node:net';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({ options: { listen: { type: 'string' }, target: { type: 'string' }, 'one-way-ms': { type: 'string' } } });
const delay = Number(opt['one-way-ms']);
// What one direction may hold in flight before its source is paused: the proxy ends the
// kernel's TCP flow control at its sockets, so this stands in for the receive window a
// real path's TCP would autotune to (Linux: up to 6 MiB by default). The same for both
// protocols; an HTTP/2 window smaller than it is what throttles.
const MAX_HELD = 8 * 1024 * 1024;

function relay(from: Socket, to: Socket): void {
  let held = 0;
  from.on('data', (c: Buffer) => {
    held += c.length;
    if (held > MAX_HELD) from.pause();
    // Same delay for every chunk: timers of one duration fire in order, so bytes do too.
    setTimeout(() => {
      held -= c.length;
      if (!to.destroyed) to.write(c);
      if (held <= MAX_HELD && from.isPaused()) from.resume();
    }, delay);
  });
  from.on('end', () => setTimeout(() => to.end(), delay));
  from.on('error', () => to.destroy());
  from.on('close', () => setTimeout(() => to.destroy(), delay + 10));
}

const server = createServer({ noDelay: true }, (client) => {
  const upstream = connect({ port: Number(opt.target), host: '127.0.0.1', noDelay: true });
  relay(client, upstream);
  relay(upstream, client);
});
server.listen(Number(opt.listen), '127.0.0.1', () => process.stdout.write('listening\n'));
process.on('SIGTERM', () => process.exit(0));
