// Jobs shared by replicas (--database postgres://…): every replica answers for every
// build. The replica running a job writes its record (the view /nixreg/builds/<id>
// shows) through the index's JobStore when it changes, at most every BEAT_MS, and at least
// every HEARTBEAT_MS as a heartbeat; its log goes along in chunks of at most 64 KiB every
// BEAT_MS. A replica asked for a job it does not run reads the record, and a follower of
// its log polls for new chunks every POLL_MS until the record says the job ended. A
// record whose heartbeat is older than STALE_MS belongs to a replica that stopped (killed,
// or cut off from the database): it reads as failed, and listings make that durable.
//
// Without a shared index none of this exists: jobs.ts keeps its jobs in memory, as ever.
//
// Room: build/jobs. Of build, imports only the shared errors.ts, types.ts and semaphore.ts; may import
// src/blobs and src/oci; never src/registry.
import { hostname } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import type { JobRecord, JobStore, StoredJob } from '../../blobs/storage.js';
import { describeView, type BuildLogHandle, type Job, type JobView, type JobWatcher, type Jobs, type LogReader } from './jobs.js';

export const BEAT_MS = 500;
export const HEARTBEAT_MS = 2_000;
/** A running job not heard of for this long is taken as failed: its replica stopped. */
export const STALE_MS = 15_000;
export const POLL_MS = 500;
const CHUNK_BYTES = 64 * 1024;
/** The copy of one job's log in the database; beyond it, the log goes on in the running replica's file only. */
export const MAX_SHARED_LOG = 16 * 1024 * 1024;
/** A job's log waiting for the database (slow or away); beyond it, bytes are left out of the copy and counted. */
const MAX_PENDING = 1024 * 1024;
/** Listings end stale records at most this often per process. */
const EXPIRE_EVERY_MS = 5_000;

interface Live {
  job: Job;
  pending: Buffer[];
  pendingBytes: number;
  seq: number;
  /** Bytes sent to the database (or queued for it). */
  shared: number;
  /** Bytes left out of the copy since the last note saying so. */
  dropped: number;
  cut: boolean;
  lastView: string;
  lastPut: number;
}

/** A view's content without its clocks, to tell whether it changed. */
const content = (v: JobView) => JSON.stringify({ ...v, seconds: 0, progress: { ...v.progress, stageSeconds: 0 } });

export class SharedJobs implements JobWatcher {
  readonly replica = `${hostname()}:${process.pid}`;
  private readonly live = new Map<string, Live>();
  private timer: NodeJS.Timeout | undefined;
  /** The database's work, in order: a job's record before its chunks, its chunks before its end. */
  private chain: Promise<void> = Promise.resolve();
  private busy = false;
  private lastExpire = 0;

  /** `staleMs`: STALE_MS but in tests. */
  constructor(private readonly store: JobStore, private readonly keep: number, private readonly logsDir: string, private readonly staleMs = STALE_MS) {}

  started(job: Job): void {
    const l: Live = { job, pending: [], pendingBytes: 0, seq: -1, shared: 0, dropped: 0, cut: false, lastView: '', lastPut: 0 };
    this.live.set(job.id, l);
    job.tap = (b) => this.tapped(l, b);
    if (!this.timer) { this.timer = setInterval(() => this.beat(), BEAT_MS); this.timer.unref(); }
    // Listed by every replica from the start, not at the first beat.
    this.enqueue(() => this.store.put([this.record(l)]));
  }

  ended(job: Job): void {
    const l = this.live.get(job.id);
    if (!l) return;
    this.live.delete(job.id);
    job.tap = undefined;
    this.flushLog(l);
    if (job.keep) {
      this.enqueue(() => this.store.put([this.record(l)]));
      this.enqueue(() => this.store.prune(this.keep));
    } else {
      this.enqueue(() => this.store.remove(job.id));
    }
    if (!this.live.size && this.timer) { clearInterval(this.timer); this.timer = undefined; }
  }

  /** Resolves once what is queued for the database is written (or failed). */
  settled(): Promise<void> { return this.chain; }

  close(): void { if (this.timer) clearInterval(this.timer); this.timer = undefined; }

  private record(l: Live): JobRecord {
    const v = l.job.view();
    l.lastView = content(v);
    l.lastPut = Date.now();
    return { id: l.job.id, repo: l.job.repo, tag: l.job.tag, replica: this.replica, view: JSON.stringify(v), created: l.job.created, finished: l.job.finished ?? null };
  }

  private tapped(l: Live, b: Buffer): void {
    if (l.cut) return;
    if (l.shared + l.pendingBytes + b.length > MAX_SHARED_LOG) {
      l.cut = true;
      const note = `\n[nixreg] the log is cut here at ${MAX_SHARED_LOG / 1048576} MiB for other replicas; the whole log is ${this.logsDir}/${l.job.id}.log on ${this.replica}\n`;
      l.pending.push(Buffer.from(note));
      l.pendingBytes += note.length;
      return;
    }
    if (l.pendingBytes + b.length > MAX_PENDING) { l.dropped += b.length; return; }
    l.pending.push(b);
    l.pendingBytes += b.length;
  }

  private flushLog(l: Live): void {
    if (l.dropped) {
      const note = Buffer.from(`\n[nixreg] ${l.dropped} bytes of the log are left out here (the database was slow); the whole log is ${this.logsDir}/${l.job.id}.log on ${this.replica}\n`);
      l.pending.push(note);
      l.pendingBytes += note.length;
      l.dropped = 0;
    }
    if (!l.pendingBytes) return;
    const all = Buffer.concat(l.pending);
    l.pending = [];
    l.shared += l.pendingBytes;
    l.pendingBytes = 0;
    for (let at = 0; at < all.length; at += CHUNK_BYTES) {
      const seq = ++l.seq;
      const bytes = all.subarray(at, at + CHUNK_BYTES);
      this.enqueue(() => this.store.appendLog(l.job.id, seq, bytes));
    }
  }

  /** Every BEAT_MS while jobs run here: their logs so far, and the records that changed or are due a heartbeat. */
  private beat(): void {
    // A database slower than the beat: wait for it; the logs wait in `pending` (bounded).
    if (this.busy) return;
    const now = Date.now();
    const due: Live[] = [];
    for (const l of this.live.values()) {
      this.flushLog(l);
      if (now - l.lastPut >= HEARTBEAT_MS || content(l.job.view()) !== l.lastView) due.push(l);
    }
    if (due.length) this.enqueue(() => this.store.put(due.map((l) => this.record(l))));
  }

  private enqueue(fn: () => Promise<unknown>): void {
    this.busy = true;
    const p = this.chain.then(fn).then(() => {}, () => { /* a record or log line lost to the database must not fail the build */ });
    this.chain = p;
    void p.then(() => { if (this.chain === p) this.busy = false; });
  }

  // ------------------------------------------------------------------ reading (any replica)

  /** Every replica's running jobs and the last `keep` finished, newest first; this one's own as it sees them now. */
  async views(jobs: Jobs): Promise<JobView[]> {
    if (Date.now() - this.lastExpire >= EXPIRE_EVERY_MS) {
      this.lastExpire = Date.now();
      await this.store.expireStale(this.staleMs);
    }
    const out = new Map<string, JobView>();
    for (const r of await this.store.list(this.keep)) out.set(r.id, jobs.get(r.id)?.view() ?? viewOf(r, this.staleMs));
    // Started here a moment ago, and not yet written.
    for (const j of jobs.list()) if (j.finished === undefined && !out.has(j.id)) out.set(j.id, j.view());
    const t = (s: string | undefined) => (s ? Date.parse(s) : Infinity);
    // Ended in the same ms (or both running): the later created first, then by id, as the database orders them.
    return [...out.values()].sort((a, b) => t(b.finished) - t(a.finished) || Date.parse(b.created) - Date.parse(a.created)
      || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  }

  async view(id: string): Promise<JobView | undefined> {
    const r = await this.store.get(id);
    return r && viewOf(r, this.staleMs);
  }

  /** The log of a job another replica runs (or ran), read from the database. */
  async handle(id: string, publicUrl: string): Promise<BuildLogHandle | undefined> {
    let r = await this.store.get(id);
    if (!r) return undefined;
    const store = this.store;
    let failingSince: number | undefined;
    let away = false;
    const stale = this.staleMs;
    const ended = () => away || !r || r.finished !== null || r.heartbeatAge > stale;
    return {
      repo: r.repo,
      finished: ended,
      describe: () => (r ? describeView(viewOf(r, stale), publicUrl) : ''),
      changed: async (ms) => {
        await delay(Math.max(0, Math.min(ms, POLL_MS)));
        try {
          r = await store.get(id);
          failingSince = undefined;
        } catch {
          // The database away: the follow ends once it has been away as long as a replica may be.
          failingSince ??= Date.now();
          if (Date.now() - failingSince > stale) away = true;
        }
      },
      reader: (): LogReader => {
        let seq = -1;
        let told = false;
        return {
          async read() {
            // A failed read is tried again (once here, then at the next poll); changed() tells
            // when the database has been away too long.
            const page = () => store.logAfter(id, seq, 1024 * 1024);
            const chunks = await page().catch(async () => { await delay(POLL_MS); return page().catch(() => []); });
            if (chunks.length) {
              seq = chunks[chunks.length - 1]!.seq;
              return Buffer.concat(chunks.map((c) => c.bytes));
            }
            if (!told && ended()) {
              told = true;
              if (away) return Buffer.from('[nixreg] the database does not answer: follow the log again later\n');
              if (r && isStopped(r, stale)) return Buffer.from(`[nixreg] ${stoppedWords(r)}\n`);
            }
            return Buffer.alloc(0);
          },
          async close() {},
        };
      },
    };
  }
}

const isStopped = (r: StoredJob, staleMs: number) => r.stopped || (r.finished === null && r.heartbeatAge > staleMs);
const stoppedWords = (r: StoredJob) => `the replica building it (${r.replica}) stopped: no word from it for ${Math.round(r.heartbeatAge / 1000)} s`;

/** A record as /nixreg/builds shows it: its clocks brought to now, or failed if its replica stopped. */
export function viewOf(r: StoredJob, staleMs: number): JobView {
  const v = JSON.parse(r.view) as JobView;
  if (isStopped(r, staleMs)) {
    return { ...v, status: 'failed', error: stoppedWords(r), finished: new Date(Date.now() - r.heartbeatAge).toISOString() };
  }
  if (r.finished !== null) return v;
  const late = r.heartbeatAge / 1000;
  return { ...v, seconds: Math.round((v.seconds + late) * 10) / 10, progress: { ...v.progress, stageSeconds: Math.round((v.progress.stageSeconds + late) * 10) / 10 } };
}
