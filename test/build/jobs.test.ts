// Builds as jobs, against real Nix: a pull that would wait longer than --pull-wait gets
// 429 with Retry-After while the build goes on; builds started ahead with POST
// /nixreg/builds are served by hash without Nix; logs can be followed; an edit to an
// imported file is seen by the next pull; --prebuild builds before anyone pulls; a
// flood of made-up hash tags costs one evaluation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { mkdirSync, promises as fs, readFileSync, rmSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { Layout } from '../../src/blobs/layout.js';
import { Jobs, JobsFull, MAX_RUNNING_JOBS } from '../../src/build/jobs/jobs.js';
import { nixProcessCount } from '../../src/build/nix/nix.js';
import type { BuiltImage } from '../../src/build/types.js';
import { tempDir } from '../helpers/registry.js';
import { Images, OCI, get, nonce, sleeper, startNixRegistry } from './helpers.js';

const post = (url: string, body: unknown) => fetch(`${url}/nixreg/builds`, {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body),
});

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(200);
  }
}

describe('a 45 s build and a client that waits 30 s for response headers', () => {
  let images: Images;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    images.write('slow.nix', sleeper('slow', 45));
    r = await startNixRegistry(images.dir);
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  test('gets 429 with Retry-After within 30 s, the build goes on, and a retry after it gets the manifest', { timeout: 180_000 }, async () => {
    const builds = r.source.builder.buildsStarted;
    // A client that gives up after 1 s: it must not cancel the build.
    const quitter = fetch(`${r.url}/v2/slow/manifests/latest`, { headers: { accept: OCI }, signal: AbortSignal.timeout(1000) });
    await assert.rejects(quitter);

    const t0 = Date.now();
    const res = await fetch(`${r.url}/v2/slow/manifests/latest`, { headers: { accept: OCI }, signal: AbortSignal.timeout(30_000) });
    const waited = Date.now() - t0;
    assert.equal(res.status, 429, await res.clone().text());
    assert.ok(waited < 30_000 && waited >= 20_000, `answered after ${waited} ms`);
    const retryAfter = Number(res.headers.get('retry-after'));
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After: ${res.headers.get('retry-after')}`);
    const body = await res.json() as { errors: { code: string; message: string; detail: { build: string; log: string } }[] };
    const e = body.errors[0]!;
    assert.equal(e.code, 'TOOMANYREQUESTS');
    assert.match(e.message, new RegExp(`^building slow:latest: building derivation 1 of 1, \\d+ s so far; log: ${r.url}/nixreg/builds/[^/ ]+/log$`));

    // The build is a job one can see and follow while it runs.
    const job = await (await fetch(`${r.url}${e.detail.build}`)).json() as { status: string; repository: string; tag: string; log: string };
    assert.equal(job.status, 'building');
    assert.deepEqual([job.repository, job.tag], ['slow', 'latest']);
    const listed = await (await fetch(`${r.url}/nixreg/builds`)).json() as { builds: { url: string; status: string }[] };
    assert.equal(listed.builds.find((b) => b.url === e.detail.build)?.status, 'building');
    const followed = fetch(`${r.url}${job.log}?follow=1`).then((x) => x.text());
    const plain = await (await fetch(`${r.url}${job.log}`)).text();
    assert.match(plain, /slow: started/);
    assert.doesNotMatch(plain, /slow: slept/, 'the plain log is what is written so far');

    // Retry as a client would, as Retry-After says, until the manifest comes.
    let final: Response;
    for (;;) {
      final = await fetch(`${r.url}/v2/slow/manifests/latest`, { headers: { accept: OCI }, signal: AbortSignal.timeout(30_000) });
      if (final.status !== 429) break;
      await delay(Number(final.headers.get('retry-after')) * 1000);
    }
    assert.equal(final.status, 200, await final.text());
    assert.ok(Date.now() - t0 >= 40_000, 'the build ran its 45 s');
    assert.equal(r.source.builder.buildsStarted - builds, 1, 'one build for the quitter, the waiter and every retry');
    const digest = final.headers.get('docker-content-digest');

    const log = await followed;
    assert.match(log, /slow: started[\s\S]*slow: slept[\s\S]*done: slow:[0-9a-z]{32} is sha256:/, 'the followed log ends with the build');
    const done = await (await fetch(`${r.url}${e.detail.build}`)).json() as { status: string; hash: string; digest: string; progress: { layers: { done: number; total: number } } };
    assert.equal(done.status, 'done');
    assert.equal(done.digest, digest);
    assert.ok(done.progress.layers.total >= 2 && done.progress.layers.done === done.progress.layers.total, JSON.stringify(done.progress));

    const procs = nixProcessCount();
    const byHash = await get(`${r.url}/v2/slow/manifests/${done.hash}`, OCI);
    assert.equal(byHash.status, 200);
    assert.equal(nixProcessCount(), procs, 'the hash of a finished build is served without Nix');
  });
});

describe('builds ahead of pulls', () => {
  let images: Images;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    r = await startNixRegistry(images.dir, { pullWaitMs: 2000 });
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  test('POST /nixreg/builds starts a build, joins one under way, and the result is served by hash with no Nix process', { timeout: 120_000 }, async () => {
    images.write('ahead.nix', sleeper('ahead', 3));
    const first = await post(r.url, { repository: 'ahead', tag: 'latest' });
    assert.equal(first.status, 202, await first.clone().text());
    const view = await first.json() as { id: string; repository: string; tag: string; status: string; url: string };
    assert.equal(first.headers.get('location'), `/nixreg/builds/${view.id}`);
    assert.deepEqual([view.repository, view.tag, view.url], ['ahead', 'latest', `/nixreg/builds/${view.id}`]);
    assert.ok(['queued', 'evaluating', 'building'].includes(view.status), view.status);
    const again = await (await post(r.url, { repository: 'ahead' })).json() as { id: string };
    assert.equal(again.id, view.id, 'the same build is joined, not started twice');

    const done = await until('the build', async () => {
      const v = await (await fetch(`${r.url}${view.url}`)).json() as { status: string; hash?: string; digest?: string };
      return v.status === 'done' || v.status === 'failed' ? v : undefined;
    });
    assert.equal(done.status, 'done', JSON.stringify(done));
    assert.match(done.hash!, /^[0-9a-z]{32}$/);

    const procs = nixProcessCount();
    const evals = r.source.evaluator.evaluationsStarted;
    const byHash = await get(`${r.url}/v2/ahead/manifests/${done.hash}`, OCI);
    assert.equal(byHash.status, 200, byHash.text);
    assert.equal(byHash.headers.get('docker-content-digest'), done.digest);
    assert.equal(nixProcessCount(), procs, 'no Nix process for a pre-built image');
    assert.equal(r.source.evaluator.evaluationsStarted, evals);
  });

  test('bad build requests are 4xx with an OCI error', async () => {
    const cases: [unknown, number, string][] = [
      ['not json', 400, 'UNSUPPORTED'],
      [{ tag: 'latest' }, 400, 'UNSUPPORTED'],
      [{ repository: 'Bad/Name' }, 400, 'NAME_INVALID'],
      [{ repository: 'nothere' }, 404, 'NAME_UNKNOWN'],
      [{ repository: 'ahead', tag: 'v1' }, 404, 'MANIFEST_UNKNOWN'],
      [{ repository: 'ahead', tag: '-bad' }, 400, 'TAG_INVALID'],
    ];
    for (const [body, status, code] of cases) {
      const res = await post(r.url, body);
      assert.equal(res.status, status, `${JSON.stringify(body)}: ${await res.clone().text()}`);
      assert.equal((await res.json() as { errors: { code: string }[] }).errors[0]!.code, code, JSON.stringify(body));
    }
    const unknown = await fetch(`${r.url}/nixreg/builds/nosuchbuild`);
    assert.equal(unknown.status, 404);
  });

  test('a failed build is a job with its error; its log ends with it', { timeout: 60_000 }, async () => {
    images.write('fails.nix', `derivation { name = "fails"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "echo about to fail; exit 3" ]; }\n`);
    const view = await (await post(r.url, { repository: 'fails' })).json() as { url: string; log: string };
    const log = await (await fetch(`${r.url}${view.log}?follow=1`)).text();
    assert.match(log, /about to fail/);
    assert.match(log, /failed: building fails failed/);
    const v = await (await fetch(`${r.url}${view.url}`)).json() as { status: string; error: string; drv: string };
    assert.equal(v.status, 'failed');
    assert.match(v.error, /building fails failed/);
    assert.match(v.drv, /-fails\.drv$/);
  });

  test('records: a failed evaluation leaves one, pulls answered from the caches or that only re-evaluate leave none', { timeout: 60_000 }, async () => {
    const records = async (repo: string) => ((await (await fetch(`${r.url}/nixreg/builds`)).json()) as { builds: { repository: string; status: string }[] })
      .builds.filter((b) => b.repository === repo);
    images.write('undef.nix', '{ contents = [ undefinedThing ]; }\n');
    for (let i = 0; i < 5; i++) assert.equal((await get(`${r.url}/v2/undef/manifests/latest`, OCI)).status, 404);
    assert.deepEqual((await records('undef')).map((b) => b.status), ['failed'], 'one evaluation, one record');

    const file = images.write('again.nix', sleeper('again', 0));
    assert.equal((await get(`${r.url}/v2/again/manifests/latest`, OCI)).status, 200);
    const evals = r.source.evaluator.evaluationsStarted;
    // The same content with a new mtime: evaluated again, the same image, nothing built.
    images.write('again.nix', readFileSync(file, 'utf8'));
    utimesSync(file, new Date(), new Date(Date.now() + 5000));
    assert.equal((await get(`${r.url}/v2/again/manifests/latest`, OCI)).status, 200);
    assert.equal(r.source.evaluator.evaluationsStarted - evals, 1);
    assert.deepEqual((await records('again')).map((b) => b.status), ['done'], 'the build, not the re-evaluation');
  });

  test('a flood of distinct never-built hash tags costs one evaluation', { timeout: 60_000 }, async () => {
    images.write('flood.nix', sleeper('flood', 0));
    const evals = r.source.evaluator.evaluationsStarted;
    const tags = Array.from({ length: 300 }, (_, i) => `${'0'.repeat(28)}${String(i).padStart(4, '0')}`.replace(/[eotu]/g, '0'));
    const res = await Promise.all(tags.map((t) => get(`${r.url}/v2/flood/manifests/${t}`, OCI)));
    for (const x of res) assert.equal(x.status, 404, x.text);
    assert.equal(r.source.evaluator.evaluationsStarted - evals, 1);
    assert.equal(r.source.jobs.runningCount, 0, 'no job for a tag the expression does not yield');
  });
});

describe('the images directory is watched', () => {
  let images: Images;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    // A long TTL: only the watcher can make the next pull evaluate again.
    r = await startNixRegistry(images.dir, { evalTtlMs: 600_000 });
    await r.source.watcher!.ready;
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  test('an edit to an imported file changes the very next latest', { timeout: 60_000 }, async () => {
    images.write('lib/greeting.nix', `"${nonce()}"\n`);
    images.write('imports.nix', `derivation { name = "imports"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir -p $out; echo \${import ./lib/greeting.nix} > $out/greeting" ]; }\n`);
    const first = await get(`${r.url}/v2/imports/manifests/latest`, OCI);
    assert.equal(first.status, 200, first.text);
    const again = await get(`${r.url}/v2/imports/manifests/latest`, OCI);
    assert.equal(again.headers.get('docker-content-digest'), first.headers.get('docker-content-digest'));

    const changes = r.source.watcher!.changes;
    images.write('lib/greeting.nix', `"${nonce()}"\n`);
    await until('the watcher to see the edit', async () => (r.source.watcher!.changes > changes ? true : undefined), 5000);
    const next = await get(`${r.url}/v2/imports/manifests/latest`, OCI);
    assert.equal(next.status, 200, next.text);
    assert.notEqual(next.headers.get('docker-content-digest'), first.headers.get('docker-content-digest'), 'the next latest is the edited one');
  });
});

describe('--prebuild', () => {
  let images: Images;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    images.write('early.nix', sleeper('early', 0));
    // Not an image: evaluating it fails, and prebuild goes on.
    images.write('helper.nix', '{ a }: a\n');
    r = await startNixRegistry(images.dir, { prebuild: true });
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  test('builds what is there at start, and what changes after, before anyone pulls', { timeout: 120_000 }, async () => {
    const s = r.source;
    const b = s.builder;
    const built = (repo: string) => until(`${repo} to be prebuilt`, async () => {
      const ev = s.evaluator.cached(s.origins.find(repo));
      return ev && await s.records.lookup(repo, ev.hash) ? true : undefined;
    }, 60_000);
    await built('early');
    images.write('later.nix', sleeper('later', 0));
    await built('later');
    const builds = b.buildsStarted;
    const pulled = await get(`${r.url}/v2/later/manifests/latest`, OCI);
    assert.equal(pulled.status, 200, pulled.text);
    assert.equal(b.buildsStarted, builds, 'the pull found it built');
    const listed = await (await fetch(`${r.url}/nixreg/builds`)).json() as { builds: { repository: string; status: string }[] };
    assert.deepEqual(listed.builds.filter((x) => x.status === 'done').map((x) => x.repository).sort(), ['early', 'later']);
  });
});

describe('the bound on jobs', () => {
  test(`at most ${MAX_RUNNING_JOBS} jobs run or queue; one more is refused until one ends; a finished one leaves the running set at once`, async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'logs'));
    const jobs = new Jobs(new Layout(dir));
    const release: (() => void)[] = [];
    const work = () => new Promise<BuiltImage>((_, reject) => { release.push(() => reject(new Error('stopped'))); });
    try {
      for (let i = 0; i < MAX_RUNNING_JOBS; i++) jobs.start(`r${i}`, 'latest', work, String);
      // The same image joins the running job: no new one.
      assert.equal(jobs.start('r0', 'latest', work, String), jobs.find('r0', 'latest'));
      assert.throws(() => jobs.start('one-more', 'latest', work, String), JobsFull);
      await delay(10);
      release.shift()!();
      await jobs.find('r0', 'latest')!.done.catch(() => {});
      assert.equal(jobs.find('r0', 'latest'), undefined);
      const next = jobs.start('one-more', 'latest', work, String);
      assert.equal(next.status, 'queued');
    } finally {
      await delay(10);
      for (const r of release) r();
      await delay(50);
      // 257 log streams open on the thread pool: on a busy machine some still arrive as
      // the directory is removed (ENOTEMPTY), so it is tried again, letting them finish.
      await fs.rm(dir, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 });
    }
  });
});
