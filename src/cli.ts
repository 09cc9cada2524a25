// `nixreg`: the command line.
//
// Composition root: may import every room; no room imports it.
import { hostname } from 'node:os';
import { Command } from 'commander';
import { buildConfig, limitsConfig, serveConfig, type BuildFlags, type LimitFlags, type ServeFlags } from './config.js';
import { AuthConfigError } from './registry/auth/config.js';
import { MetricsTokenError } from './registry/auth/metrics-token.js';
import { MirrorConfigError } from './registry/mirror/config.js';
import { BuildCommandFailed, runBuild, runRemoteBuild, withBuildOptions } from './build-command.js';
import { GcRefused, printReport, runGc } from './gc-command.js';
import { NixImageSource } from './build/source.js';
import { log } from './log.js';
import { startRegistry, TlsError } from './server.js';

const program = new Command('nixreg').description('A container registry that builds images from Nix expressions on pull');

withBuildOptions(program
  .command('serve'))
  .description('run the registry')
  .option('--listen <host:port>', 'address to listen on (env NIXREG_LISTEN, default 127.0.0.1:5000)')
  .option('--data <dir>', 'blob store and index (env NIXREG_DATA, default ./data)')
  .option('--storage <url>', 'keep blobs and uploads in S3, s3://BUCKET[/PREFIX]; credentials, region and endpoint from the AWS SDK\'s settings (AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT_URL_S3, …) (env NIXREG_STORAGE, default: the local disk under --data)')
  .option('--s3-timeout <seconds>', 'an S3 call that makes no progress this long fails, and its request gets 503 (env NIXREG_S3_TIMEOUT, default 15)')
  .option('--s3-redirect', 'answer blob GETs with a redirect to a presigned S3 URL instead of streaming the blob (env NIXREG_S3_REDIRECT=1)')
  .option('--database <url>', 'keep the index in PostgreSQL (13 or later), postgres://USER:PASSWORD@HOST[:PORT]/DATABASE; replicas share it; its schema is migrated at start (env NIXREG_DATABASE, default: SQLite, index.db under --data)')
  .option('--database-pool <n>', 'connections to --database at most; a request that waits --database-timeout for one gets 503 (env NIXREG_DATABASE_POOL, default 10)')
  .option('--database-timeout <seconds>', 'connecting to --database, waiting for a connection, and each statement at most this long; then 503 (env NIXREG_DATABASE_TIMEOUT, default 10)')
  .option('--images <dir>', 'Nix expressions served as images (env NIXREG_IMAGES, default ./examples)')
  .option('--upload-max-age <seconds>', 'purge blob uploads untouched this long (env NIXREG_UPLOAD_MAX_AGE, default 86400)')
  .option('--public-url <url>', 'URL users reach this server at, for build-log links and the token realm (env NIXREG_PUBLIC_URL, default: the listen address; the host name when listening on all addresses)')
  .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate (chain); re-read on SIGHUP (env NIXREG_TLS_CERT)')
  .option('--tls-key <file>', 'the PEM private key of --tls-cert; re-read on SIGHUP (env NIXREG_TLS_KEY)')
  .option('--auth <file>', 'users and access policies, YAML or JSON (see README, "Access control"); re-read on SIGHUP (env NIXREG_AUTH)')
  .option('--metrics-auth <file>', 'a bearer token (one line, >= 16 characters) that may read /metrics; re-read on SIGHUP (env NIXREG_METRICS_AUTH)')
  .option('--min-free-space <size>', '/readyz fails below this much free space in --data, e.g. 10GB (env NIXREG_MIN_FREE_SPACE, default the smaller of 1 GiB and 5% of the filesystem)')
  .option('--header-timeout <seconds>', 'a request\'s headers must arrive within this (env NIXREG_HEADER_TIMEOUT, default 30)')
  .option('--idle-timeout <seconds>', 'close a keep-alive connection idle this long (env NIXREG_IDLE_TIMEOUT, default 60)')
  .option('--body-timeout <seconds>', 'abort a request body or response that makes no progress this long (env NIXREG_BODY_TIMEOUT, default 60)')
  .option('--max-connections <n>', 'connections at once; more get 503 (env NIXREG_MAX_CONNECTIONS, default 4096 or the open-file limit less 256)')
  .option('--trusted-proxies <list>', 'addresses or CIDR blocks of load balancers whose X-Forwarded-For names the client, for per-client bounds, lockouts and logs (env NIXREG_TRUSTED_PROXIES, default none)')
  .option('--max-connections-per-client <n>', 'connections one client address may hold; more get 503 (env NIXREG_MAX_CONNECTIONS_PER_CLIENT, default a quarter of --max-connections)')
  .option('--manifest-memory <MiB>', 'memory all manifest bodies being read may take together, one client a quarter (at least 4 MiB); more get 429 (env NIXREG_MANIFEST_MEMORY, default 128)')
  .option('--manifest-timeout <seconds>', 'a manifest body must arrive in full within this; else 408 (env NIXREG_MANIFEST_TIMEOUT, default 60)')
  .option('--max-uploads-per-repo <n>', 'unfinished uploads per repository; more get 429 (env NIXREG_MAX_UPLOADS_PER_REPO, default 100)')
  .option('--max-uploads-per-client <n>', 'unfinished uploads per client address; more get 429 (env NIXREG_MAX_UPLOADS_PER_CLIENT, default 100)')
  .option('--max-uploads <n>', 'unfinished uploads in all; more get 429 (env NIXREG_MAX_UPLOADS, default 10000)')
  .option('--min-upload-rate <size>', 'bytes per second a blob upload body must average over each --upload-rate-window, e.g. 1KiB; slower ones are cut (408), keeping what arrived; 0: off (env NIXREG_MIN_UPLOAD_RATE, default 1KiB)')
  .option('--upload-rate-window <seconds>', 'the window --min-upload-rate is measured over (env NIXREG_UPLOAD_RATE_WINDOW, default 30)')
  .option('--gc-grace <seconds>', 'garbage collection spares blobs, links and manifests younger than this (env NIXREG_GC_GRACE, default 3600)')
  .option('--gc-interval <seconds>', 'collect garbage this often; 0: only on POST /nixreg/gc (env NIXREG_GC_INTERVAL, default 3600)')
  .option('--pull-wait <seconds>', 'a pull waits this long for its build, then gets 429 with Retry-After while the build goes on (env NIXREG_PULL_WAIT, default 25)')
  .option('--prebuild', 'at start and after each change under --images, build every image whose expression changed (env NIXREG_PREBUILD=1)')
  .option('--no-sendfile', 'copy blob GET bodies through user space instead of sending them with sendfile(2), for measuring and troubleshooting (env NIXREG_SENDFILE=0)')
  .option('--ui <on|off>', 'the web page at / (the JSON API under /nixreg/api stays either way) (env NIXREG_UI, default on)')
  .option('--cache-max-bytes <size>', 'bytes that built images may use (60MB, 50GB, …); the least recently pulled are evicted beyond it (env NIXREG_CACHE_MAX_BYTES, default: no limit)')
  .option('--mirror <prefix=url>', 'pull-through cache: serve <prefix>/<name> from <name> at the upstream registry url, e.g. dockerhub=https://registry-1.docker.io; repeatable (env NIXREG_MIRROR, comma- or space-separated)', (v: string, prev: string[] = []) => [...prev, v])
  .option('--mirror-config <file>', 'upstream registries with credentials, containerd namespaces, tag freshness and CA, YAML or JSON (see README, "Pull-through cache") (env NIXREG_MIRROR_CONFIG)')
  .action(async (flags: ServeFlags & BuildFlags & LimitFlags, cmd: Command) => {
    let cfg, bcfg, limits;
    try { cfg = serveConfig(flags); bcfg = buildConfig(flags); limits = limitsConfig(flags); } catch (e) { cmd.error(`error: ${(e as Error).message}`, { exitCode: 2 }); }
    let source: NixImageSource | undefined;
    let reg;
    try {
      reg = await startRegistry({
        host: cfg.host, port: cfg.port, data: cfg.data, log, limits,
        storage: {
          uploadMaxAgeMs: cfg.uploadMaxAgeMs, gcGraceMs: cfg.gcGraceMs, gcIntervalMs: cfg.gcIntervalMs, cacheMaxBytes: cfg.cacheMaxBytes,
          onGc: (r) => { if (!r.dryRun) log.info({ gc: r }, 'garbage collected'); },
          s3: cfg.storage,
          database: cfg.database?.url, databasePool: cfg.database?.poolSize, databaseTimeoutMs: cfg.database?.timeoutMs,
          onReconcile: (r) => { if (r instanceof Error) log.warn({ err: r }, 'reconciling the blob store failed; it is retried at the next start'); else log.info({ reconciled: r }, 'blob store reconciled'); },
        },
        blobRedirectSeconds: cfg.s3RedirectSeconds,
        tls: cfg.tls, auth: cfg.auth, publicUrl: cfg.publicUrl, metricsAuth: cfg.metricsAuth, minFreeSpace: cfg.minFreeSpace,
        sendfile: cfg.sendfile, mirror: { flags: cfg.mirrors, file: cfg.mirrorConfig }, ui: cfg.ui, source: (storage) => (source = new NixImageSource(storage, { images: cfg.images, ...bcfg, prebuild: cfg.prebuild, log })),
      });
    } catch (e) {
      // A faulty auth file or certificate is a configuration error: one line, exit 2.
      if (e instanceof AuthConfigError || e instanceof TlsError || e instanceof MetricsTokenError || e instanceof MirrorConfigError) cmd.error(`error: ${e.message}`, { exitCode: 2 });
      throw e;
    }
    // Build failure messages link to the build log on this server.
    if (source) source.builder.publicUrl = cfg.publicUrl ?? reachableUrl(reg.url);
    let stopping = false;
    const stop = (signal: string) => {
      // A repeated signal (Ctrl-C under `npm start` reaches npm and node both) must not
      // fall through to the default action and cut the requests still finishing.
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down: finishing requests in flight');
      reg.close().then(() => { log.info('stopped'); process.exit(0); }, (err: unknown) => { log.error({ err }); process.exit(1); });
    };
    // SIGHUP: re-read the certificate, the auth file and the metrics token. A faulty new
    // one is logged and the old one kept: a typo must not take the registry down or open it up.
    process.on('SIGHUP', () => {
      const { reloaded, failed } = reg.reload();
      for (const f of failed) log.error({ reload: f }, `reload failed, keeping the previous configuration: ${f}`);
      log.info({ reloaded }, 'reloaded');
    });
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    // Announced only once signals are handled: whoever waits for this line may stop us at once.
    log.info({ url: reg.url, data: cfg.data, blobs: reg.storage.store.description, index: reg.storage.index.description, images: cfg.images, tls: !!cfg.tls, auth: cfg.auth ?? null }, 'nixreg listening');
    // Learn now, not at the first pull, whether Nix can build here; the check logs one
    // warning with the fix if not. Serving does not wait for it: push and pull need no Nix.
    source?.builder.health.ready().catch(() => {});
  });

withBuildOptions(program
  .command('build <name[:tag]>')
  .description('build an image ahead of time, here or (--remote) on a running registry; prints its hash tag and manifest digest; exits 1 if the build fails')
  .option('--data <dir>', 'blob store and index (env NIXREG_DATA, default ./data)')
  .option('--images <dir>', 'Nix expressions served as images (env NIXREG_IMAGES, default ./examples)')
  .option('--remote <url>', 'build on the registry at this URL instead, and follow the build to its end (env NIXREG_REMOTE)')
  .option('--user <name:password>', 'credentials for --remote, where the registry has --auth (env NIXREG_USER)'))
  .action(async (ref: string, flags: { data?: string; images?: string; remote?: string; user?: string } & BuildFlags) => {
    try {
      const remote = flags.remote ?? process.env.NIXREG_REMOTE;
      if (remote !== undefined) {
        if (!/^https?:\/\/[^\s/]+\/?$/.test(remote)) throw new BuildCommandFailed(`--remote must be http(s)://host[:port], got ${JSON.stringify(remote)}`);
        await runRemoteBuild(ref, remote, flags.user ?? process.env.NIXREG_USER);
        return;
      }
      const cfg = serveConfig({ ...flags, listen: '127.0.0.1:0' });
      await runBuild(ref, { ...flags, data: cfg.data, images: cfg.images });
    } catch (e) {
      if (!(e instanceof BuildCommandFailed)) throw e;
      process.stderr.write(`nixreg: ${e.message}\n`);
      process.exit(1);
    }
  });

program
  .command('gc')
  .description('collect garbage in a data directory whose server is stopped; --dry-run lists what would go (also while it runs)')
  .option('--data <dir>', 'blob store and index (env NIXREG_DATA, default ./data)')
  .option('--storage <url>', 'the server\'s --storage s3://BUCKET[/PREFIX], if it has one (env NIXREG_STORAGE)')
  .option('--dry-run', 'list what would be removed, and remove nothing')
  .option('--gc-grace <seconds>', 'spare what is younger than this (env NIXREG_GC_GRACE, default 3600)')
  .action(async (flags: { data?: string; dryRun?: boolean; gcGrace?: string; storage?: string }, cmd: Command) => {
    let cfg;
    try { cfg = serveConfig({ data: flags.data, gcGrace: flags.gcGrace, storage: flags.storage, listen: '127.0.0.1:0' }); } catch (e) { cmd.error(`error: ${(e as Error).message}`, { exitCode: 2 }); }
    try {
      printReport(await runGc({ data: cfg.data, dryRun: !!flags.dryRun, graceMs: cfg.gcGraceMs, s3: cfg.storage }), (s) => process.stdout.write(s));
    } catch (e) {
      if (e instanceof GcRefused) cmd.error(`error: ${e.message}`, { exitCode: 2 });
      throw e;
    }
  });

/** A wildcard listen address is no place to send a user: name this host instead. */
function reachableUrl(url: string): string {
  const u = new URL(url);
  if (u.hostname === '0.0.0.0' || u.hostname === '[::]') u.hostname = hostname();
  return u.origin;
}

program.parseAsync(process.argv).catch((err: unknown) => {
  log.error({ err }, (err as Error).message);
  // The JSON log is for machines; whoever started the command also gets a plain line.
  process.stderr.write(`nixreg: ${(err as Error).message}\n`);
  process.exit(1);
});
