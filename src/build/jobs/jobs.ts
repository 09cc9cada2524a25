// Builds as jobs: each pipeline run for an image (`repo:tag`) is a Job with an id, a
// stage, live progress and a log file, that lives apart from whichever requests wait
// for it. A request may stop waiting (src/registry answers 429 after --pull-wait) or
// its client may go away; the job goes on, and the next request for the same image
// joins it. Only the build timeout ends a job early.
//
// This module owns the records of jobs (running ones, and the last `keep` finished ones
// worth showing), their log files under <data>/logs, and the words a waiting client is
// told. The registry serves them at /nixreg/builds (through image-source.ts, which
// re-exports the views of this module); knows nothing of HTTP. Sub-room jobs/ knows no
// stage of the pipeline: what a job runs is the work the pipeline's top hands it.
//
// Room: build/jobs. Of build, imports only the shared errors.ts, types.ts and semaphore.ts; may import
// src/blobs and src/oci; never src/registry.
import { EventEmitter } from 'node:events';
import { createWriteStream, promises as fs, type WriteStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { BuiltImage } from '../types.js';

/** Where the logs go (Storage's build facade, or a Layout). */
export interface LogFiles {
  readonly logsDir: string;
  logPath(id: string): string;
}

/** Reads a log onwards from where it stands: the next bytes, or none when nothing more is there yet. */
export interface LogReader {
  read(): Promise<Buffer>;
  close(): Promise<void>;
}

/** A build's log as the registry follows it (ImageSource.buildLog): this replica's file, or another's through the index (shared.ts). */
export interface BuildLogHandle {
  repo: string;
  reader(): LogReader;
  /** Whether the build has ended, so that its log will not grow any more. */
  finished(): boolean;
  /** Resolves when the log grows or the build ends, or after `ms`. */
  changed(ms: number): Promise<void>;
  /** A line on where the build stands (for a follower when the log is quiet). */
  describe(): string;
}

export type Stage = 'queued' | 'evaluating' | 'building' | 'assembling';
export type JobStatus = Stage | 'done' | 'failed';

export interface Count { done: number; total: number }

/**
 * Live progress of one build, shared by every job that waits for it. `paths` are the
 * derivations Nix builds while `building`, then the store paths packed into layers;
 * `bytes` are the closure's bytes packed so far (known while `assembling`).
 */
export class Progress {
  stage: Stage = 'queued';
  paths: Count = { done: 0, total: 0 };
  layers: Count = { done: 0, total: 0 };
  /** Bytes of finished layers; those being packed are counted live from their streams. */
  bytesFinished = 0;
  bytesTotal = 0;
  /** Byte counters of the layers being packed now (read, never written, by progress). */
  readonly live = new Set<{ readonly bytes: number }>();
  /** When the stage began (ms), for throughput and ETA. */
  since = Date.now();

  enter(stage: Stage): void { this.stage = stage; this.since = Date.now(); }

  bytes(): Count {
    let done = this.bytesFinished;
    for (const l of this.live) done += l.bytes;
    // A tar is a little larger than the NAR sizes that make the total.
    return { done: Math.min(done, this.bytesTotal), total: this.bytesTotal };
  }

  snapshot(): ProgressView {
    return { stage: this.stage, paths: { ...this.paths }, layers: { ...this.layers }, bytes: this.bytes(), stageSeconds: secondsSince(this.since) };
  }
}

export interface ProgressView { stage: Stage; paths: Count; layers: Count; bytes: Count; stageSeconds: number }

/** What /nixreg/builds shows of a job. */
export interface JobView {
  id: string;
  repository: string;
  tag: string;
  status: JobStatus;
  url: string;
  /** The log that holds the build's output (another job's, where this one joined it). */
  log: string;
  created: string;
  finished?: string | undefined;
  /** When this job's own build ran (a job that joined another's, or found the image built, has none). */
  buildStarted?: string | undefined;
  buildEnded?: string | undefined;
  seconds: number;
  progress: ProgressView;
  hash?: string | undefined;
  digest?: string | undefined;
  /** The derivation that failed, or the first one of the image. */
  drv?: string | undefined;
  error?: string | undefined;
}

/** What a build at `p` is doing, in words: the 429's message and `nixreg build`'s line both say it so. */
export function stageWords(p: ProgressView): string {
  switch (p.stage) {
    case 'queued': return 'waiting for a free build slot';
    case 'evaluating': return 'evaluating its expression';
    case 'building': return p.paths.total
      ? `building derivation ${Math.min(p.paths.done + 1, p.paths.total)} of ${p.paths.total}` : 'building with Nix';
    case 'assembling': return `assembling layer ${Math.min(p.layers.done + 1, p.layers.total)} of ${p.layers.total}`;
  }
}

/** A running build's line, from its view (of this replica's job, or another's read through the index). */
export function describeView(v: JobView, publicUrl: string): string {
  const p = v.progress;
  const pct = p.stage === 'assembling' && p.bytes.total ? ` (${Math.floor((100 * p.bytes.done) / p.bytes.total)}%)` : '';
  return `building ${v.repository}:${v.tag}: ${stageWords(p)}${pct}, ${Math.round(v.seconds)} s so far; log: ${publicUrl}${v.log}`;
}

/** Reads a log file from its start; a file not there (yet, or pruned) reads as empty. */
export function fileReader(path: string): LogReader {
  let file: FileHandle | undefined;
  let pos = 0;
  const buf = Buffer.allocUnsafe(64 * 1024);
  return {
    async read() {
      file ??= await open(path, 'r').catch(() => undefined);
      if (!file) return Buffer.alloc(0);
      const n = (await file.read(buf, 0, buf.length, pos)).bytesRead;
      pos += n;
      return Buffer.from(buf.subarray(0, n));
    },
    async close() { await file?.close(); },
  };
}

const iso = (t: number | undefined) => (t !== undefined ? new Date(t).toISOString() : undefined);
const secondsSince = (t: number) => Math.round((Date.now() - t) / 100) / 10;

export class Job {
  readonly created = Date.now();
  finished: number | undefined;
  buildStarted: number | undefined;
  buildEnded: number | undefined;
  progress = new Progress();
  /** The job whose log holds the build's output: this one, unless it joined another's build. */
  logOf: Job = this;
  result: { hash: string; digest: string } | undefined;
  error: string | undefined;
  drv: string | undefined;
  /**
   * Worth listing once finished: it built (or joined a build), its own evaluation
   * failed, or it was asked for by name. A pull that only re-evaluated, or was answered
   * from the caches (a failure remembered for --negative-ttl included), leaves no
   * record: a busy `latest` or a flood of failing pulls must not push the builds out.
   */
  keep = false;
  /** It ran an evaluation of its own (not one from the cache). */
  evaluated = false;
  /** Settles with the job; never rejects unhandled (nobody may be waiting). */
  done!: Promise<BuiltImage>;
  /** Set once the log's last line is on disk: followers may stop reading then. */
  logClosed = false;
  /** 'data' when the log grows, 'end' when the job ends: log followers wait on these. */
  readonly events = new EventEmitter();
  private readonly stream: WriteStream;
  /** Sees every byte written, as it is written (shared.ts: the log's copy in the index). */
  tap: ((chunk: Buffer) => void) | undefined;

  constructor(readonly id: string, readonly repo: string, readonly tag: string, readonly logPath: string) {
    this.events.setMaxListeners(0);
    this.stream = createWriteStream(logPath, { flags: 'w' });
    this.stream.on('error', () => { /* a lost log line must not fail the build */ });
  }

  get status(): JobStatus {
    if (this.finished === undefined) return this.progress.stage;
    return this.error !== undefined ? 'failed' : 'done';
  }

  get url(): string { return `/nixreg/builds/${this.id}`; }
  get logUrl(): string { return `/nixreg/builds/${this.logOf.id}/log`; }

  write(chunk: string | Buffer): void {
    if (this.finished !== undefined) return;
    this.tap?.(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    this.stream.write(chunk, () => this.events.emit('data'));
  }

  line(s: string): void { this.write(`[nixreg] ${s}\n`); }

  /** Waits for the build `other` is running, showing its progress and its log. */
  join(other: Job): void {
    if (other === this) return;
    this.progress = other.progress;
    this.logOf = other.logOf;
    this.line(`the build is already under way as ${other.id}: its log is ${other.logUrl}`);
  }

  async finish(result: BuiltImage | undefined, error: string | undefined): Promise<void> {
    if (result) this.result = { hash: result.hash, digest: result.manifest.digest };
    this.error = error;
    if (error !== undefined) { this.line(`failed: ${error}`); if (this.evaluated) this.keep = true; }
    else if (result) this.line(`done: ${this.repo}:${result.hash} is ${result.manifest.digest}`);
    this.finished = Date.now();
    await new Promise<void>((r) => this.stream.end(() => r()));
    this.logClosed = true;
    this.events.emit('end');
  }

  /** The log as /nixreg/builds/<id>/log serves it (image-source.ts). */
  logHandle(publicUrl: string): BuildLogHandle {
    return {
      repo: this.repo,
      reader: () => fileReader(this.logPath),
      finished: () => this.logClosed,
      changed: (ms) => new Promise<void>((r) => {
        if (this.logClosed) { r(); return; }
        const done = () => { clearTimeout(t); this.events.off('data', done); this.events.off('end', done); r(); };
        const t = setTimeout(done, ms);
        this.events.once('data', done);
        this.events.once('end', done);
      }),
      describe: () => this.describe(publicUrl),
    };
  }

  view(): JobView {
    return {
      id: this.id, repository: this.repo, tag: this.tag, status: this.status, url: this.url, log: this.logUrl,
      created: new Date(this.created).toISOString(),
      finished: iso(this.finished), buildStarted: iso(this.buildStarted), buildEnded: iso(this.buildEnded),
      seconds: secondsSince(this.created) - (this.finished !== undefined ? secondsSince(this.finished) : 0),
      progress: this.progress.snapshot(),
      hash: this.result?.hash, digest: this.result?.digest, drv: this.drv, error: this.error,
    };
  }

  /**
   * What a client that stopped waiting is told: "building hello:latest: assembling
   * layer 12 of 40 (61%), 38 s so far; log: URL".
   */
  describe(publicUrl: string): string { return describeView(this.view(), publicUrl); }

  /** Seconds a client should wait before asking again: the ETA where one is known. */
  retryAfter(): number {
    const p = this.progress;
    const b = p.bytes();
    if (p.stage === 'assembling' && b.done > 0 && b.total > b.done) {
      const rate = b.done / Math.max(0.1, (Date.now() - p.since) / 1000);
      return Math.min(30, Math.max(2, Math.ceil((b.total - b.done) / rate)));
    }
    return 10;
  }
}

/** Jobs running at once (all stages, queued ones included); beyond it a new one is refused. */
export const MAX_RUNNING_JOBS = 256;

export class JobsFull extends Error {}

/** Told of each job as it starts and as it ends (shared.ts: its record and log in the index, for other replicas). */
export interface JobWatcher {
  started(job: Job): void;
  /** After the job's last line is written and `keep` is decided. */
  ended(job: Job): void;
}

export class Jobs {
  private readonly running = new Map<string, Job>();
  private readonly byId = new Map<string, Job>();
  /** Finished jobs worth showing, oldest first. */
  private readonly kept: Job[] = [];

  constructor(private readonly layout: LogFiles, private readonly keep = 100, private readonly watcher?: JobWatcher) {
    void this.prune();
  }

  /** Logs of earlier runs: records are in memory only, so keep just the newest files. */
  private async prune(): Promise<void> {
    try {
      const dir = this.layout.logsDir;
      const files = await Promise.all((await fs.readdir(dir)).filter((n) => n.endsWith('.log'))
        .map(async (n) => ({ n, t: (await fs.stat(join(dir, n))).mtimeMs })));
      files.sort((a, b) => b.t - a.t);
      for (const f of files.slice(this.keep)) await fs.rm(join(dir, f.n), { force: true });
    } catch { /* nothing to prune */ }
  }

  /** The job running for `repo:tag`, if any. */
  find(repo: string, tag: string): Job | undefined { return this.running.get(`${repo}\0${tag}`); }

  /**
   * The job for `repo:tag`: the running one, or a new one that runs `work`. Throws
   * JobsFull when MAX_RUNNING_JOBS are running already.
   */
  start(repo: string, tag: string, work: (job: Job) => Promise<BuiltImage>, errorText: (e: unknown) => string): Job {
    const key = `${repo}\0${tag}`;
    const existing = this.running.get(key);
    if (existing) return existing;
    if (this.running.size >= MAX_RUNNING_JOBS) throw new JobsFull(`${MAX_RUNNING_JOBS} builds are running or queued already`);
    // Sortable by time, unguessable enough that ids do not collide across restarts.
    const id = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
    const job = new Job(id, repo, tag, this.layout.logPath(id));
    this.running.set(key, job);
    this.byId.set(id, job);
    this.watcher?.started(job);
    job.done = (async () => {
      // Not inline: `work` may throw before `job.done` is assigned.
      await Promise.resolve();
      return work(job);
    })();
    // Out of the running ones the moment it settles: a request right after must start
    // a new job (the file may have changed), not join one that has ended.
    const end = (r: BuiltImage | undefined, error: string | undefined) => {
      this.running.delete(key);
      // finish() settles the job before its first await; the log file closes after. The
      // job moves to the kept ones at once, so no listing made meanwhile misses it.
      const closing = job.finish(r, error);
      this.retire(job);
      this.watcher?.ended(job);
      return closing;
    };
    job.done.then((r) => end(r, undefined), (e: unknown) => end(undefined, errorText(e)));
    // Whoever started it may not wait; the rejection is theirs to see if they do.
    job.done.catch(() => {});
    return job;
  }

  private retire(job: Job): void {
    if (!job.keep) {
      this.byId.delete(job.id);
      void fs.rm(job.logPath, { force: true });
      return;
    }
    this.kept.push(job);
    while (this.kept.length > this.keep) {
      const old = this.kept.shift()!;
      // A job another one joined keeps its log while the joiner is still listed.
      this.byId.delete(old.id);
      void fs.rm(old.logPath, { force: true });
    }
  }

  /** Running jobs, then the kept finished ones, newest first. */
  list(): Job[] {
    return [...[...this.running.values()].sort((a, b) => b.created - a.created), ...[...this.kept].reverse()];
  }

  get(id: string): Job | undefined { return this.byId.get(id); }

  get runningCount(): number { return this.running.size; }
}
