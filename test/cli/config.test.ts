// The resolved configuration: defaults, environment variables, and flags over both.
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { limitsConfig, parseListen, serveConfig, parseSize } from '../../src/config.js';

test('defaults: 127.0.0.1:5000, ./data, ./examples (resolved against the working directory)', () => {
  const c = serveConfig({}, {});
  assert.equal(c.host, '127.0.0.1');
  assert.equal(c.port, 5000);
  assert.equal(c.data, resolve('data'));
  assert.equal(c.images, resolve('examples'));
});

test('each flag has its environment variable; a flag wins over the variable', () => {
  const env = { NIXREG_LISTEN: '0.0.0.0:6000', NIXREG_DATA: '/srv/reg', NIXREG_IMAGES: '/srv/images' };
  const fromEnv = serveConfig({}, env);
  assert.deepEqual([fromEnv.host, fromEnv.port, fromEnv.data, fromEnv.images], ['0.0.0.0', 6000, '/srv/reg', '/srv/images']);
  const fromFlags = serveConfig({ listen: '127.0.0.2:7000', data: 'd', images: '/x' }, env);
  assert.deepEqual([fromFlags.host, fromFlags.port, fromFlags.data, fromFlags.images], ['127.0.0.2', 7000, resolve('d'), '/x']);
});

test('--listen accepts HOST:PORT, [IPv6]:PORT and :PORT; rejects everything else', () => {
  assert.deepEqual(parseListen('localhost:5000'), { host: 'localhost', port: 5000 });
  assert.deepEqual(parseListen('[::1]:5001'), { host: '::1', port: 5001 });
  assert.deepEqual(parseListen(':5002'), { host: '0.0.0.0', port: 5002 });
  for (const bad of ['5000', 'host', 'host:', 'host:port', 'host:99999', '::1:5000', 'a:1:2', '']) {
    assert.throws(() => parseListen(bad), /--listen must be HOST:PORT|port out of range/, bad);
  }
  assert.throws(() => serveConfig({}, { NIXREG_LISTEN: 'nonsense' }), /--listen must be HOST:PORT/);
});

test('--public-url / NIXREG_PUBLIC_URL: an origin, flag over variable; anything else is refused', () => {
  assert.equal(serveConfig({}, {}).publicUrl, undefined);
  assert.equal(serveConfig({}, { NIXREG_PUBLIC_URL: 'https://reg.example:443' }).publicUrl, 'https://reg.example:443');
  assert.equal(serveConfig({ publicUrl: 'http://a:5000' }, { NIXREG_PUBLIC_URL: 'http://b' }).publicUrl, 'http://a:5000');
  for (const bad of ['reg.example', 'http://a/path', 'ftp://a', 'http://a b']) {
    assert.throws(() => serveConfig({ publicUrl: bad }, {}), /--public-url must be/, bad);
  }
});

test('sizes: bytes, decimal and binary units in any case; anything else is refused', () => {
  assert.equal(parseSize('1048576', 'x'), 1048576);
  assert.equal(parseSize('60MB', 'x'), 60_000_000);
  assert.equal(parseSize('50gb', 'x'), 50_000_000_000);
  assert.equal(parseSize('512MiB', 'x'), 512 * 1024 * 1024);
  assert.equal(parseSize('1.5G', 'x'), 1_500_000_000);
  assert.equal(parseSize('0', 'x'), 0);
  for (const bad of ['', 'MB', '-1', '1.5', '10 XB', '1e9', '99999999999999999TB']) {
    assert.throws(() => parseSize(bad, '--cache-max-bytes'), /--cache-max-bytes must be a size/, bad);
  }
});

test('sendfile: on by default; --no-sendfile or NIXREG_SENDFILE=0|off|false|no turns it off; other values are refused', () => {
  assert.equal(serveConfig({}, {}).sendfile, true);
  assert.equal(serveConfig({}, { NIXREG_SENDFILE: '' }).sendfile, true);
  assert.equal(serveConfig({ sendfile: true }, { NIXREG_SENDFILE: 'on' }).sendfile, true);
  assert.equal(serveConfig({ sendfile: false }, {}).sendfile, false);
  // Off wins from either side: the flag cannot turn on what the variable turned off.
  assert.equal(serveConfig({ sendfile: true }, { NIXREG_SENDFILE: '0' }).sendfile, false);
  for (const off of ['0', 'off', 'FALSE', ' no ']) assert.equal(serveConfig({}, { NIXREG_SENDFILE: off }).sendfile, false, off);
  assert.throws(() => serveConfig({}, { NIXREG_SENDFILE: 'maybe' }), /NIXREG_SENDFILE must be 1 or 0/);
});

test('--ui on|off (NIXREG_UI): the web page is on by default; the flag wins; other values are refused', () => {
  assert.equal(serveConfig({}, {}).ui, true);
  assert.equal(serveConfig({ ui: 'off' }, {}).ui, false);
  assert.equal(serveConfig({}, { NIXREG_UI: 'off' }).ui, false);
  assert.equal(serveConfig({ ui: 'on' }, { NIXREG_UI: '0' }).ui, true);
  assert.throws(() => serveConfig({ ui: 'maybe' }, {}), /--ui must be/);
});

test('per-client bounds: connections a quarter of --max-connections unless set; manifest bodies within 60 s unless set', () => {
  const d = limitsConfig({}, { NIXREG_MAX_CONNECTIONS: '4096' });
  assert.deepEqual([d.maxConnectionsPerClient, d.manifestTimeoutMs], [1024, 60_000]);
  assert.equal(limitsConfig({ maxConnections: '64' }, {}).maxConnectionsPerClient, 16);
  assert.equal(limitsConfig({ maxConnections: '3' }, {}).maxConnectionsPerClient, 1);
  const env = { NIXREG_MAX_CONNECTIONS_PER_CLIENT: '8', NIXREG_MANIFEST_TIMEOUT: '5' };
  const fromEnv = limitsConfig({}, env);
  assert.deepEqual([fromEnv.maxConnectionsPerClient, fromEnv.manifestTimeoutMs], [8, 5000]);
  const fromFlags = limitsConfig({ maxConnectionsPerClient: '2', manifestTimeout: '30' }, env);
  assert.deepEqual([fromFlags.maxConnectionsPerClient, fromFlags.manifestTimeoutMs], [2, 30_000]);
  assert.throws(() => limitsConfig({ maxConnectionsPerClient: '0' }, {}), /--max-connections-per-client must be a whole number >= 1/);
  assert.throws(() => limitsConfig({ manifestTimeout: '0' }, {}), /--manifest-timeout must be a whole number of seconds >= 1/);
});

test('--min-upload-rate: a size per second (1KiB by default, "/s" optional, 0 off) over --upload-rate-window seconds (30)', () => {
  const d = limitsConfig({}, {});
  assert.deepEqual([d.minUploadRate, d.uploadRateWindowMs], [1024, 30_000]);
  assert.equal(limitsConfig({ minUploadRate: '4KiB/s' }, {}).minUploadRate, 4096);
  assert.equal(limitsConfig({}, { NIXREG_MIN_UPLOAD_RATE: '0' }).minUploadRate, 0);
  assert.equal(limitsConfig({ minUploadRate: '2kb' }, { NIXREG_MIN_UPLOAD_RATE: '0' }).minUploadRate, 2000);
  assert.equal(limitsConfig({}, { NIXREG_UPLOAD_RATE_WINDOW: '5' }).uploadRateWindowMs, 5000);
  assert.throws(() => limitsConfig({ minUploadRate: 'fast' }, {}), /--min-upload-rate must be a size/);
  assert.throws(() => limitsConfig({ uploadRateWindow: '0' }, {}), /--upload-rate-window must be a whole number of seconds >= 1/);
});

test('--storage s3://BUCKET[/PREFIX] (NIXREG_STORAGE), --s3-timeout and --s3-redirect; the default is the local disk', () => {
  assert.equal(serveConfig({}, {}).storage, undefined);
  assert.equal(serveConfig({}, {}).s3RedirectSeconds, 0);
  assert.deepEqual(serveConfig({ storage: 's3://my-bucket' }, {}).storage, { bucket: 'my-bucket', prefix: '', timeoutMs: 15_000 });
  assert.deepEqual(serveConfig({}, { NIXREG_STORAGE: 's3://my.bucket/reg/one/', NIXREG_S3_TIMEOUT: '3' }).storage,
    { bucket: 'my.bucket', prefix: 'reg/one/', timeoutMs: 3000 });
  assert.deepEqual(serveConfig({ storage: 's3://bk1/p', s3Timeout: '5' }, { NIXREG_STORAGE: 's3://bk2' }).storage, { bucket: 'bk1', prefix: 'p/', timeoutMs: 5000 });
  for (const bad of ['s3:/b', 'http://b/p', 's3://B', 's3://a', 's3://bkt/p?x', 's3://bkt/p q']) {
    assert.throws(() => serveConfig({ storage: bad }, {}), /--storage/, bad);
  }
  assert.throws(() => serveConfig({ storage: 's3://bk1', s3Timeout: '0' }, {}), /--s3-timeout/);
  assert.equal(serveConfig({ storage: 's3://bk1', s3Redirect: true }, {}).s3RedirectSeconds, 1200);
  assert.equal(serveConfig({ storage: 's3://bk1' }, { NIXREG_S3_REDIRECT: '1' }).s3RedirectSeconds, 1200);
  assert.throws(() => serveConfig({ s3Redirect: true }, {}), /--s3-redirect needs --storage/);
});

test('--database postgres://… (NIXREG_DATABASE) with --database-pool and --database-timeout; the default is SQLite in --data; a bad URL is refused without echoing it', () => {
  assert.equal(serveConfig({}, {}).database, undefined);
  assert.deepEqual(serveConfig({}, { NIXREG_DATABASE: 'postgresql://u:p@db/reg' }).database,
    { url: 'postgresql://u:p@db/reg', poolSize: 10, timeoutMs: 10_000 });
  assert.deepEqual(serveConfig({ database: 'postgres://u:p@db:5433/a', databasePool: '4', databaseTimeout: '3' },
    { NIXREG_DATABASE: 'postgres://x@y/z', NIXREG_DATABASE_POOL: '50' }).database, { url: 'postgres://u:p@db:5433/a', poolSize: 4, timeoutMs: 3000 });
  assert.throws(() => serveConfig({ database: 'mysql://u:secret@db/a' }, {}), (e: Error) => /PostgreSQL URL/.test(e.message) && !e.message.includes('secret'));
  assert.throws(() => serveConfig({ database: 'postgres://db/a', databasePool: '1' }, {}), /--database-pool/);
  assert.throws(() => serveConfig({ database: 'postgres://db/a', databaseTimeout: '0' }, {}), /--database-timeout/);
});
