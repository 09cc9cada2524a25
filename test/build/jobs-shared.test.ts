// The seam of jobs shared by replicas (src/build/jobs/shared.ts over the index's
// JobStore), without Nix: one contract (a job started through one replica is listed, read
// and its log followed through another, live, and ends there when it ends) run on the
// in-process default (one process: it is its own "other replica") and on PostgreSQL (two
// indexes on one database, as two replicas are); then the PostgreSQL store's bounds
// (pruning to `keep`, a job not worth keeping removed, log pages) and a replica that stops
// heartbeating: its job reads as failed within the bound, and a listing makes it durable.
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { openIndex } from '../../src/blobs/index/open.js';
import type { Index } from '../../src/blobs/index/index.js';
import type { JobStore } from '../../src/blobs/index/job-store.js';
import { Layout } from '../../src/blobs/layout.js';
import { Jobs, type BuildLogHandle, type Job, type JobView } from '../../src/build/jobs/jobs.js';
import { SharedJobs } from '../../src/build/jobs/shared.js';
import type { BuiltImage } from '../../src/build/types.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { tempDir } from '../helpers/registry.js';

const STALE = 2_000;

/** One replica as /nixreg/builds sees it: its jobs, and (shared) every other's. */
class Replica {
  readonly jobs: Jobs;
  readonly shared: SharedJobs | undefined;
  constructor(dir: string, store: JobStore | undefined) {
    const layout = new Layout(dir);
    mkdirSync(layout.logsDir, { recursive: true });
    this.shared = store && new SharedJobs(store, 3, layout.logsDir, STALE);
    this.jobs = new Jobs(layout, 3, this.shared);
  }
  async list(): Promise<JobView[]> { return this.shared ? this.shared.views(this.jobs) : this.jobs.list().map((j) => j.view()); }
  async get(id: string): Promise<JobView | undefined> { return this.jobs.get(id)?.view() ?? await this.shared?.view(id); }
  async log(id: string): Promise<BuildLogHandle | undefined> { return this.jobs.get(id)?.logHandle('http://r') ?? await this.shared?.handle(id, 'http://r'); }
}

/** A build that writes `lines` and ends when `release` is called. */
function start(r: Replica, repo: string, keep = true): { job: Job; release: (fail?: string) => void } {
  let release!: (fail?: string) => void;
  const gate = new Promise<string | undefined>((res) => { release = res; });
  const job = r.jobs.start(repo, 'latest', async (j) => {
    j.keep = keep;
    j.progress.enter('building');
    j.progress.paths = { done: 1, total: 3 };
    j.line('first line');
    const fail = await gate;
    if (fail) throw new Error(fail);
    return { hash: 'h'.repeat(32), manifest: { digest: `sha256:${'a'.repeat(64)}` } } as unknown as BuiltImage;
  }, (e) => (e instanceof Error ? e.message : String(e)));
  return { job, release };
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(50);
  }
}

/** Follows a log as the handler does: to the end of what is there, then waits, until the build ends. */
async function follow(h: BuildLogHandle, onText: (all: string) => void): Promise<string> {
  const reader = h.reader();
  let text = '';
  for (;;) {
    const ended = h.finished();
    for (let b: Buffer; (b = await reader.read()).length;) { text += b.toString(); onText(text); }
    if (ended) break;
    await h.changed(1_000);
  }
  await reader.close();
  return text;
}

function contract(name: string, replicas: () => Promise<[Replica, Replica]>) {
  describe(name, () => {
    test('a job started on one replica is listed, read and followed live on the other, and ends there', async () => {
      const [a, b] = await replicas();
      const { job, release } = start(a, `app-${name}`);
      const listed = await until('the job listed by the other', async () => (await b.list()).find((v) => v.id === job.id));
      assert.equal(listed.repository, `app-${name}`);
      const seen = await until('the stage', async () => { const v = await b.get(job.id); return v?.status === 'building' && v.progress.paths.total === 3 ? v : undefined; });
      assert.equal(seen.log, `/nixreg/builds/${job.id}/log`);
      const handle = (await b.log(job.id))!;
      assert.equal(handle.repo, `app-${name}`);
      let live = false;
      let second = 0;
      const followed = follow(handle, (t) => { if (t.includes('first line')) live = true; if (!second && t.includes('second line')) second = Date.now(); });
      await until('the first line while the build runs', async () => (live ? true : undefined));
      assert.equal(handle.finished(), false);
      const wrote = Date.now();
      job.line('second line');
      await until('the second line', async () => (second ? true : undefined));
      // A chunk goes at the next beat (0.5 s) and a follower asks every 0.5 s: about 1 s at most, with margin for a busy machine.
      const lag = second - wrote;
      assert.ok(lag < 3_000, `${lag} ms`);
      console.log(`# ${name}: a log line reached the follower in ${lag} ms`);
      release();
      const text = await followed;
      assert.match(text, /first line\n[^]*second line\n[^]*done: app-/);
      const done = await until('done', async () => { const v = await b.get(job.id); return v?.status === 'done' ? v : undefined; });
      assert.equal(done.digest, `sha256:${'a'.repeat(64)}`);
      assert.ok(done.finished);
    });

    test('the running first, then the last `keep` finished, latest first; a job not worth keeping goes once ended', async () => {
      const [a, b] = await replicas();
      const ended: string[] = [];
      for (let i = 0; i < 4; i++) {
        const { job, release } = start(a, `kept${i}-${name}`);
        release();
        await job.done;
        ended.push(job.id);
        // Apart by a few ms: builds ending in the same ms are listed by creation, then id.
        await delay(3);
      }
      const running = start(a, `running-${name}`);
      const dropped = start(a, `dropped-${name}`, false);
      dropped.release('it failed');
      await dropped.job.done.catch(() => {});
      await a.shared?.settled();
      const ids = await until('the listing', async () => {
        const l = (await b.list()).map((v) => v.id);
        return l.length === 4 && l[0] === running.job.id ? l : undefined;
      });
      assert.deepEqual(ids, [running.job.id, ended[3], ended[2], ended[1]]);
      assert.equal(await b.get(dropped.job.id), undefined);
      assert.equal(await b.get(ended[0]!), undefined, 'pruned beyond keep');
      running.release();
      await running.job.done;
    });
  });
}

const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

contract('in-process', async () => {
  const dir = tempDir('nixreg-jobs-');
  dirs.push(dir);
  const r = new Replica(dir, undefined);
  return [r, r];
});

describe('postgres', () => {
  let server: Postgres;
  const indexes: Index[] = [];
  before(async () => { server = await startPostgres({ durable: false }); });
  after(async () => {
    for (const i of indexes) await i.close();
    await server?.stop();
  });
  const open = async (url: string) => {
    const i = await openIndex({ database: url, sqlitePath: '/nonexistent/index.db' });
    indexes.push(i);
    return i;
  };
  const pair = async (): Promise<[Replica, Replica, Index]> => {
    const url = await server.createDatabase();
    const [ia, ib] = [await open(url), await open(url)];
    const [da, db] = [tempDir('nixreg-jobs-a-'), tempDir('nixreg-jobs-b-')];
    dirs.push(da, db);
    return [new Replica(da, ia.jobs), new Replica(db, ib.jobs), ia];
  };

  contract('postgres: two replicas', async () => { const [a, b] = await pair(); return [a, b]; });

  test('a replica that stops heartbeating: its job reads failed within the bound, its follower ends, a listing ends it for good', async () => {
    const [a, b] = await pair();
    const { job } = start(a, 'orphan');
    await until('listed', async () => (await b.get(job.id))?.status === 'building' || undefined);
    const handle = (await b.log(job.id))!;
    const followed = follow(handle, () => {});
    // The replica "dies": no more heartbeats (its build never ends).
    a.shared!.close();
    const t0 = Date.now();
    const failed = await until('failed', async () => { const v = await b.get(job.id); return v?.status === 'failed' ? v : undefined; });
    const took = Date.now() - t0;
    assert.ok(took < STALE + 2_500, `${took} ms`);
    assert.match(failed.error!, /the replica building it \(.+\) stopped: no word from it for \d+ s/);
    assert.ok(failed.finished);
    const text = await followed;
    assert.match(text, /first line\n[^]*\[nixreg\] the replica building it .* stopped/);
    const listed = (await b.list()).find((v) => v.id === job.id)!;
    assert.equal(listed.status, 'failed');
    const row = await b.shared!['store'].get(job.id);
    assert.equal(row?.stopped, true, 'the listing recorded it as ended');
    assert.notEqual(row?.finished, null);
  });

  test('log pages: in order, cut at maxBytes but never empty', async () => {
    const url = await server.createDatabase();
    const store = (await open(url)).jobs!;
    await store.put([{ id: 'j1', repo: 'r', tag: 't', replica: 'x', view: '{}', created: 1, finished: null }]);
    for (let i = 0; i < 20; i++) await store.appendLog('j1', i, Buffer.alloc(1000, 65 + i));
    const first = await store.logAfter('j1', -1, 2500);
    assert.deepEqual(first.map((c) => c.seq), [0, 1]);
    const big = await store.logAfter('j1', 1, 10);
    assert.deepEqual(big.map((c) => c.seq), [2]);
    const rest = await store.logAfter('j1', 2, 1 << 20);
    assert.deepEqual(rest.map((c) => c.seq), [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
    await store.remove('j1');
    assert.deepEqual(await store.logAfter('j1', -1, 1 << 20), []);
    assert.equal(await store.get('j1'), undefined);
  });
});
