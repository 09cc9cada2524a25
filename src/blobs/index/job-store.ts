// The seam through which replicas share build jobs (src/build/jobs/): each job's record
// (what /nixreg/builds/<id> shows, as JSON the build room writes and reads back) and its
// log, in chunks. Only a shared index has one (Index.jobs; postgres-jobs.ts): the
// embedded default keeps its jobs in the process, as it always did, and pays nothing.
//
// The replica running a job is its only writer: it upserts the record when it changes
// and as a heartbeat, and appends the log's chunks in order. Any replica reads. A record
// whose heartbeat is older than a bound belongs to a replica that stopped: readers show
// it failed, and expireStale() makes that durable, so that no job stays running forever.
//
// Room: blobs. May import src/oci; never src/build or src/registry.

export interface JobRecord {
  id: string;
  repo: string;
  tag: string;
  /** Which process runs it (host and pid), for messages. */
  replica: string;
  /** The build room's view of the job, as JSON (opaque here). */
  view: string;
  /** Ms since the epoch by the writer's clock: listings' order only. */
  created: number;
  /** When it ended (ms, the writer's clock; a stopped replica's: its last heartbeat); null while running. */
  finished: number | null;
}

export interface StoredJob extends JobRecord {
  /** Ms since the last heartbeat, by the database's clock. */
  heartbeatAge: number;
  /** Its replica stopped before it ended (expireStale found it so). */
  stopped: boolean;
}

export interface LogChunk { seq: number; bytes: Buffer }

export interface JobStore {
  /** Records (or replaces) these jobs' records, all in one statement, and stamps their heartbeat now. */
  put(records: JobRecord[]): Promise<void>;
  /** Appends chunk `seq` (counted from 0 by the job's writer) of job `id`'s log. */
  appendLog(id: string, seq: number, bytes: Buffer): Promise<void>;
  /** One job's record; undefined if there is none (never was, or pruned). */
  get(id: string): Promise<StoredJob | undefined>;
  /** The running jobs, newest first, then the last `keep` finished, the latest finished first. */
  list(keep: number): Promise<StoredJob[]>;
  /** The log chunks of `id` after `afterSeq`, in order, at most `maxBytes` (at least one chunk if any). */
  logAfter(id: string, afterSeq: number, maxBytes: number): Promise<LogChunk[]>;
  /** Removes a job's record and its log (a job not worth keeping, once ended). */
  remove(id: string): Promise<void>;
  /** Finished jobs beyond the newest `keep` are removed with their logs. */
  prune(keep: number): Promise<void>;
  /** Running jobs whose heartbeat is older than `staleMs` are ended as stopped (finished at their last heartbeat). */
  expireStale(staleMs: number): Promise<number>;
}
