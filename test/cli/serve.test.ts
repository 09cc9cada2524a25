// `nixreg serve` as a user runs it: flags and environment variables, `npm start -- …`,
// bad flags, and graceful shutdown on SIGTERM and SIGINT.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { ROOT, spawnRegistry, tempDir } from '../helpers/registry.js';
import { cleanEnv, freePort, reap, spawnCli, spawnCommand, type CliProcess } from './spawn.js';

const dirs: string[] = [];
const procs: { p: CliProcess; group: boolean }[] = [];
after(async () => {
  for (const { p, group } of procs) await reap(p, group);
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function dir(): string {
  const d = tempDir('nixreg-cli-');
  dirs.push(d);
  return d;
}

function cli(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): CliProcess {
  const p = spawnCli(args, { cwd: opts.cwd ?? dir(), env: opts.env ?? cleanEnv() });
  procs.push({ p, group: false });
  return p;
}

async function stopped(p: CliProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | string> {
  p.kill(signal);
  return p.exited;
}

test('the environment variables NIXREG_LISTEN, NIXREG_DATA, NIXREG_IMAGES configure serve', { timeout: 60_000 }, async () => {
  const base = dir();
  const env = cleanEnv({ NIXREG_LISTEN: '127.0.0.1:0', NIXREG_DATA: join(base, 'store'), NIXREG_IMAGES: join(base, 'nix') });
  const p = cli(['serve'], { env });
  const l = await p.listening;
  assert.match(l.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(l.data, join(base, 'store'));
  assert.equal(l.images, join(base, 'nix'));
  assert.equal((await fetch(`${l.url}/v2/`)).status, 200);
  assert.ok(existsSync(join(base, 'store', 'index.db')), 'the data directory is where NIXREG_DATA says');
  assert.equal(await stopped(p), 0);
});

test('flags win over the environment variables', { timeout: 60_000 }, async () => {
  const base = dir();
  const port = await freePort();
  const env = cleanEnv({ NIXREG_LISTEN: 'not-an-address', NIXREG_DATA: join(base, 'env-data'), NIXREG_IMAGES: join(base, 'env-images') });
  const p = cli(['serve', '--listen', `127.0.0.1:${port}`, '--data', join(base, 'flag-data'), '--images', join(base, 'flag-images')], { env });
  const l = await p.listening;
  assert.equal(l.url, `http://127.0.0.1:${port}`);
  assert.equal(l.data, join(base, 'flag-data'));
  assert.equal(l.images, join(base, 'flag-images'));
  assert.ok(!existsSync(join(base, 'env-data')));
  assert.equal(await stopped(p), 0);
});

test('defaults: ./data and ./examples under the working directory; 127.0.0.1:5000 in --help', { timeout: 60_000 }, async () => {
  const cwd = dir();
  // The port is the one setting a test cannot leave at its default: 5000 may be taken.
  const p = cli(['serve'], { cwd, env: cleanEnv({ NIXREG_LISTEN: '127.0.0.1:0' }) });
  const l = await p.listening;
  assert.equal(l.data, join(cwd, 'data'));
  assert.equal(l.images, join(cwd, 'examples'));
  assert.ok(existsSync(join(cwd, 'data', 'index.db')));
  assert.equal(await stopped(p), 0);
  const help = cli(['serve', '--help']);
  assert.equal(await help.exited, 0);
  assert.match(help.output(), /default\s+127\.0\.0\.1:5000/);
  assert.match(help.output(), /NIXREG_LISTEN/);
});

test('npm start -- --listen … --data … --images … passes the flags through unchanged', { timeout: 180_000 }, async () => {
  const base = dir();
  const port = await freePort();
  const data = join(base, 'data dir');
  const images = join(base, 'images');
  mkdirSync(images);
  const p = spawnCommand('npm', ['start', '--silent', '--', '--listen', `127.0.0.1:${port}`, '--data', data, '--images', images],
    { cwd: ROOT, env: cleanEnv(), group: true });
  procs.push({ p, group: true });
  const l = await p.listening;
  assert.equal(l.url, `http://127.0.0.1:${port}`);
  assert.equal(l.data, data, 'a path with a space arrives as one argument');
  assert.equal(l.images, images);
  assert.equal((await fetch(`${l.url}/v2/`)).status, 200);
  // Ctrl-C in a terminal signals the whole group: npm and the registry both.
  p.kill('SIGINT');
  await p.exited;
  assert.match(p.output(), /"msg":"stopped"/, 'the registry shut down gracefully');
});

test('bad flags and unusable settings: a clear message and a non-zero exit', { timeout: 60_000 }, async () => {
  const base = dir();
  const data = join(base, 'data');
  const file = join(base, 'a-file');
  writeFileSync(file, '');
  const busy = cli(['serve', '--listen', '127.0.0.1:0', '--data', join(base, 'busy')]);
  const taken = (await busy.listening).url.replace('http://', '');
  const cases: { args: string[]; env?: Record<string, string>; message: RegExp }[] = [
    { args: ['serve', '--bogus'], message: /unknown option '--bogus'/ },
    { args: ['serve', '--listen'], message: /argument missing/ },
    { args: ['serve', '--listen', 'nope', '--data', data], message: /--listen must be HOST:PORT, got "nope"/ },
    { args: ['serve', '--listen', '127.0.0.1:70000', '--data', data], message: /port out of range/ },
    { args: ['serve', '--data', data], env: { NIXREG_LISTEN: 'localhost' }, message: /--listen must be HOST:PORT, got "localhost"/ },
    { args: ['serve', '--listen', '127.0.0.1:0', '--data', data, '--upload-max-age', 'soon'], message: /--upload-max-age/ },
    { args: ['serve', '--listen', taken, '--data', data], message: /EADDRINUSE|address already in use/ },
    { args: ['serve', '--listen', '127.0.0.1:0', '--data', file], message: /EEXIST|ENOTDIR|not a directory/ },
    { args: ['frobnicate'], message: /unknown command 'frobnicate'/ },
  ];
  for (const c of cases) {
    const p = cli(c.args, { env: cleanEnv(c.env) });
    const code = await p.exited;
    assert.notEqual(code, 0, `${c.args.join(' ')} succeeded:\n${p.output()}`);
    assert.equal(typeof code, 'number', `${c.args.join(' ')} died of ${code}`);
    assert.match(p.output(), c.message, c.args.join(' '));
    assert.doesNotMatch(p.output(), /nixreg listening/);
  }
  assert.equal(await stopped(busy), 0);
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal}: a streaming upload in flight completes, then exit 0 with the index closed cleanly`, { timeout: 60_000 }, async () => {
    const data = join(dir(), 'data');
    const p = cli(['serve', '--listen', '127.0.0.1:0', '--data', data]);
    const { url } = await p.listening;
    // An idle keep-alive connection must not hold up the shutdown.
    const agent = new Agent({ keepAlive: true });
    await new Promise<void>((r) => request(`${url}/v2/`, { agent }, (res) => { res.resume(); res.on('end', r); }).end());

    const start = await fetch(`${url}/v2/cli/graceful/blobs/uploads/`, { method: 'POST' });
    assert.equal(start.status, 202);
    const location = start.headers.get('location')!;
    const body = Buffer.alloc(4 * 1024 * 1024, 7);
    const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    const piece = body.length / 8;
    const response = new Promise<{ status: number; range: string | undefined }>((resolve, reject) => {
      const req = request(`${url}${location}`, { method: 'PATCH', headers: { 'Content-Length': String(body.length), 'Content-Type': 'application/octet-stream' } },
        (res) => { res.resume(); resolve({ status: res.statusCode!, range: res.headers.range }); });
      req.on('error', reject);
      // Slow: one eighth every 150 ms, the signal arrives after the first.
      let i = 0;
      const next = () => {
        req.write(body.subarray(i * piece, (i + 1) * piece));
        if (++i < 8) setTimeout(next, 150); else req.end();
      };
      next();
    });
    const upload = join(data, 'uploads', location.slice(location.lastIndexOf('/') + 1));
    while (!existsSync(upload) || statSync(upload).size === 0) await new Promise((r) => setTimeout(r, 10));
    p.kill(signal);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(p.child.exitCode, null, 'still running while the upload is in flight');
    await assert.rejects(fetch(`${url}/v2/`), 'no new connections once shutting down');

    const r = await response;
    assert.equal(r.status, 202);
    assert.equal(r.range, `0-${body.length - 1}`);
    const t0 = Date.now();
    assert.equal(await p.exited, 0);
    assert.ok(Date.now() - t0 < 10_000, 'exits promptly once the request is done');
    agent.destroy();
    assert.match(p.output(), new RegExp(`"signal":"${signal}".*shutting down`));
    assert.match(p.output(), /"msg":"stopped"/);

    // Closed cleanly: the WAL was checkpointed away, and the data is all there.
    assert.ok(!existsSync(join(data, 'index.db-wal')), 'the -wal file was checkpointed and removed');
    const db = new Database(join(data, 'index.db'), { readonly: true, fileMustExist: true });
    assert.equal((db.prepare('SELECT count(*) AS n FROM uploads').get() as { n: number }).n, 1);
    db.close();
    const again = cli(['serve', '--listen', '127.0.0.1:0', '--data', data]);
    const url2 = (await again.listening).url;
    const status = await fetch(`${url2}${location}`);
    assert.equal(status.headers.get('range'), `0-${body.length - 1}`);
    const fin = await fetch(`${url2}${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, { method: 'PUT' });
    assert.equal(fin.status, 201);
    const blob = Buffer.from(await (await fetch(`${url2}/v2/cli/graceful/blobs/${digest}`)).arrayBuffer());
    assert.ok(blob.equals(body));
    assert.equal(await stopped(again, signal), 0);
  });
}

test('the executable sizes the thread pool to the machine (layers gzip on all cores), unless UV_THREADPOOL_SIZE is set', { timeout: 60_000 }, async () => {
  const cases: [string | undefined, string][] = [[undefined, String(Math.max(4, availableParallelism() + 2))], ['3', '3']];
  for (const [given, want] of cases) {
    const r = await spawnRegistry({ data: dir(), env: { UV_THREADPOOL_SIZE: given } });
    try {
      const stats = await (await fetch(`${r.url}/nixreg/stats`)).json() as { threadPool: string | null };
      assert.equal(stats.threadPool, want, `UV_THREADPOOL_SIZE=${given}`);
    } finally {
      await r.stop();
    }
  }
});
