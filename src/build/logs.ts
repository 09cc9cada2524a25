// Records of recent builds and their logs (the registry serves them at /nixreg/builds
// and /nixreg/builds/<id>/log). The last `keep` builds are kept (records in memory, log
// files under <data>/logs); older logs are deleted. Knows nothing of HTTP.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { createWriteStream, promises as fs, type WriteStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Layout } from '../blobs/layout.js';

export type BuildStatus = 'queued' | 'running' | 'succeeded' | 'failed';

export interface BuildRecord {
  id: string;
  repo: string;
  tag: string;
  status: BuildStatus;
  started: string;
  finished?: string | undefined;
  /** The derivation that failed, or the first one of the image. */
  drv?: string | undefined;
  error?: string | undefined;
  digest?: string | undefined;
  log: string;
}

export class BuildLog {
  private stream: WriteStream;
  constructor(readonly record: BuildRecord, path: string) {
    this.stream = createWriteStream(path, { flags: 'w' });
    this.stream.on('error', () => { /* a lost log line must not fail the build */ });
  }
  write(chunk: string | Buffer): void { this.stream.write(chunk); }
  line(s: string): void { this.stream.write(`[nixreg] ${s}\n`); }
  close(): Promise<void> {
    return new Promise((r) => this.stream.end(() => r()));
  }
}

export class BuildLogs {
  private readonly records: BuildRecord[] = [];

  constructor(private readonly layout: Layout, private readonly keep = 100) {
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

  start(repo: string, tag: string): BuildLog {
    // Sortable by time, unguessable enough that ids do not collide across restarts.
    const id = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
    const record: BuildRecord = { id, repo, tag, status: 'running', started: new Date().toISOString(), log: `/nixreg/builds/${id}/log` };
    this.records.push(record);
    while (this.records.length > this.keep) {
      const old = this.records.shift()!;
      void fs.rm(this.layout.logPath(old.id), { force: true });
    }
    return new BuildLog(record, this.layout.logPath(id));
  }

  list(): BuildRecord[] { return [...this.records].reverse(); }
  get(id: string): BuildRecord | undefined { return this.records.find((r) => r.id === id); }

  /** The log file of a recent build. */
  logPath(id: string): string | undefined {
    const rec = this.get(id);
    return rec && this.layout.logPath(rec.id);
  }
}
