#!/usr/bin/env node
// `nixreg`: the command line.
import { Command } from 'commander';
import { serveConfig } from './config.js';
import { log } from './log.js';
import { startRegistry } from './server.js';

const program = new Command('nixreg').description('A container registry that builds images from Nix expressions on pull');

program
  .command('serve')
  .description('run the registry')
  .option('--listen <host:port>', 'address to listen on (env NIXREG_LISTEN, default 127.0.0.1:5000)')
  .option('--data <dir>', 'blob store and index (env NIXREG_DATA, default ./data)')
  .option('--images <dir>', 'Nix expressions served as images (env NIXREG_IMAGES, default ./examples)')
  .action(async (flags: { listen?: string; data?: string; images?: string }) => {
    const cfg = serveConfig(flags);
    const reg = await startRegistry({ host: cfg.host, port: cfg.port, data: cfg.data, log });
    log.info({ url: reg.url, data: cfg.data, images: cfg.images }, 'nixreg listening');
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down: finishing requests in flight');
      reg.close().then(() => { log.info('stopped'); process.exit(0); }, (err: unknown) => { log.error({ err }); process.exit(1); });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  log.error({ err }, (err as Error).message);
  process.exit(1);
});
