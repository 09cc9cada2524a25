// The Prometheus metrics of one app, in a registry of its own (two servers in one
// process must not share counters): every request by method, route and status, its
// duration and the bytes it sent; builds, from the image source's listener; what
// storage, the build queue and garbage collection hold, read when scraped; and how blob
// bodies go out (sendfile or copied: send-file.ts counts, a scrape reads).
//
// A request costs one 'finish' listener, two hrtime readings and a few additions to plain
// numbers, in series resolved once per (route, method, status), which a scrape hands to
// prom-client (bench/metrics measured what prom-client's own per-call updates cost).
// Labels stay bounded whatever clients send: the route is the endpoint id of routes.ts
// or `unmatched`, never the path; the method is one of a fixed few or `other`.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.
import type { NextFunction, Request, Response } from 'express';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Storage } from '../blobs/storage.js';
import type { ImageSource } from '../build/image-source.js';
import type { BodyBytes } from './send-file.js';

export const UNMATCHED = 'unmatched';
const METHODS = new Set(['GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS']);
/** res.locals keys: the endpoint that took the request, and bytes written without a Content-Length. */
const ROUTE = 'nixregRoute';
const WRITTEN = 'nixregWritten';
/** Of request durations: from a cached manifest (~1 ms) to a blob download or a pull that waits for its build. */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

interface Inc { inc(n?: number): void }

export interface MetricsOptions {
  storage: Storage;
  source?: ImageSource | undefined;
  /** The endpoint ids of routes.ts: every route label there can be, with `unmatched`. */
  routes: string[];
  /** Whether this app sends blob bodies by sendfile, and the bytes sent each way so far. */
  blobBodies?: { sendfile: boolean; bytes: BodyBytes } | undefined;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'method' | 'route' | 'status'>;
  private readonly duration: DurationHistogram;
  private readonly bytes: Counter<'route'>;
  private readonly routes = new Map<string, RouteSeries>();
  private readonly unmatched: RouteSeries;
  private readonly sync: (() => void | Promise<void>)[] = [];
  private defaults = false;

  constructor(private readonly o: MetricsOptions) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'nixreg_http_requests_total', help: 'HTTP requests answered, by method, endpoint id and status', labelNames: ['method', 'route', 'status'], registers });
    this.duration = new DurationHistogram('nixreg_http_request_duration_seconds',
      'Time from a request\'s arrival to the end of its response, by method and endpoint id', DURATION_BUCKETS);
    this.registry.registerMetric(this.duration as unknown as Histogram);
    this.bytes = new Counter({ name: 'nixreg_http_response_bytes_total', help: 'Response body bytes sent, by endpoint id', labelNames: ['route'], registers });
    for (const id of [...o.routes, UNMATCHED]) this.routes.set(id, new RouteSeries(id, this.requests, this.duration, this.bytes));
    this.unmatched = this.routes.get(UNMATCHED)!;

    const builds = new Counter({ name: 'nixreg_builds_total', help: 'Image builds finished, by result', labelNames: ['result'], registers });
    const buildSeconds = new Histogram({
      name: 'nixreg_build_duration_seconds', help: 'Time an image build took, realisation to stored layers', registers,
      buckets: [1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
    });
    // Both results from the start, so that rate() sees the first failure as one.
    builds.labels('succeeded').inc(0);
    builds.labels('failed').inc(0);
    o.source?.onBuildFinished((result, seconds) => { builds.labels(result).inc(); buildSeconds.observe(seconds); });

    const gauge = (name: string, help: string, read: () => number) => {
      const g = new Gauge({ name, help, registers });
      this.sync.push(() => g.set(read()));
    };
    const source = () => o.source?.stats() ?? {};
    gauge('nixreg_build_queue_length', 'Builds waiting for a build slot (--max-builds)', () => num(source().queued));
    this.counterOf('nixreg_evaluations_total', 'Evaluations of image expressions started', () => num(source().evaluationsStarted));
    let totals = { blobs: 0, bytes: 0 };
    // One query for both gauges, run just before them (a scrape runs `sync` in order).
    this.sync.push(async () => { totals = await o.storage.index.totals(); });
    gauge('nixreg_storage_blobs', 'Blobs stored, manifests included (from the index)', () => totals.blobs);
    gauge('nixreg_storage_bytes', 'Bytes of the blobs stored (from the index)', () => totals.bytes);
    // Cumulative since the start, kept by storage (blobs/storage.ts gcTotals).
    const gc = o.storage.gcTotals;
    this.counterOf('nixreg_gc_runs_total', 'Garbage collection runs', () => gc.runs);
    this.counterOf('nixreg_gc_freed_bytes_total', 'Bytes of blob files garbage collection removed', () => gc.freedBytes);
    this.counterOf('nixreg_cache_evictions_total', 'Built images the cache quota evicted', () => gc.evictions);
    this.counterOf('nixreg_cache_evicted_bytes_total', 'Bytes of blob files the cache quota removed', () => gc.evictedBytes);
    // So that a deployment (and CI) can see the fast path is really in use.
    const bodies = o.blobBodies;
    gauge('nixreg_blob_sendfile', 'Whether blob GET bodies are sent by sendfile(2) (1) or copied through user space (0)', () => (bodies?.sendfile ? 1 : 0));
    const bodyBytes = new Counter({ name: 'nixreg_blob_body_bytes_total', help: 'Blob GET body bytes sent, by how: sendfile or copy', labelNames: ['via'], registers });
    for (const via of ['sendfile', 'copy'] as const) {
      const t = new Tally(bodyBytes.labels(via));
      bodyBytes.labels(via).inc(0);
      this.sync.push(() => { t.n = bodies?.bytes[via] ?? 0; t.flush(); });
    }
  }

  /** A counter mirroring a cumulative count kept elsewhere; it never goes down. */
  private counterOf(name: string, help: string, read: () => number): void {
    const c = new Counter({ name, help, registers: [this.registry] });
    let last = 0;
    this.sync.push(() => {
      last = Math.max(last, read());
      c.reset();
      c.inc(last);
    });
  }

  /** Times and counts the request once its response has been sent. */
  time(req: Request, res: Response): void {
    const start = process.hrtime.bigint();
    // 'finish' comes once: on() spares the wrapper that once() allocates per request.
    res.on('finish', () => this.record(req, res, start));
  }

  /** `guard`, preceded by naming the endpoint `id` as the request's route label. */
  labelled<F extends (req: Request, res: Response, next: NextFunction) => unknown>(id: string, guard: F) {
    return (req: Request, res: Response, next: NextFunction) => {
      res.locals[ROUTE] = id;
      return guard(req, res, next);
    };
  }

  /**
   * Counts the bytes of responses streamed without a Content-Length (a build log), on
   * `proto`, the prototype of this app's responses only: no wrapper per request. `end` is
   * left alone: every response sent whole in `end(body)` here carries a Content-Length
   * (express's send, the handlers, the error handler), and wrapping it would cost every
   * request a call.
   */
  countWrites(proto: Response): void {
    // Node's write(chunk, encoding, cb) tells its arguments by type, so passing all three
    // (some undefined) is the same as passing fewer, and spares an arguments object.
    const write = proto.write as (this: Response, chunk: unknown, encoding: unknown, cb: unknown) => boolean;
    proto.write = function (this: Response, chunk: unknown, encoding?: unknown, cb?: unknown) {
      if (!this.hasHeader('content-length')) this.locals[WRITTEN] = (this.locals[WRITTEN] ?? 0) + byteLength(chunk, encoding);
      return write.call(this, chunk, encoding, cb);
    } as typeof proto.write;
  }

  /** The text exposition of every metric, the process's own among them. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    // Only once scraped: the event-loop monitor behind them wakes every 10 ms, which a
    // registry that nobody scrapes (a test's, a benchmark's) need not pay.
    if (!this.defaults) { collectDefaultMetrics({ register: this.registry }); this.defaults = true; }
    this.flush();
    for (const s of this.sync) await s();
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  private record(req: Request, res: Response, start: bigint): void {
    try {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      const route = this.routes.get(res.locals[ROUTE]) ?? this.unmatched;
      const series = route.method(req.method);
      series.duration.observe(seconds);
      series.status(res.statusCode).n++;
      route.bytes.n += bodyBytes(req, res);
    } catch {
      // A fault in counting must never become a fault in serving (this runs in an event).
    }
  }

  /** Hands the counts of the requests since the last scrape to prom-client. */
  private flush(): void {
    for (const r of this.routes.values()) r.flush();
  }
}

/**
 * A count kept as a plain number and handed to its prom-client counter at scrape time:
 * an inc() on a labelled child hashes its label values on every call, which a request
 * should not pay for each of its counters.
 */
class Tally {
  n = 0;
  private flushed = 0;
  constructor(private readonly child: Inc) {}
  flush(): void {
    if (this.n > this.flushed) this.child.inc(this.n - this.flushed);
    this.flushed = this.n;
  }
}

/** The series of one route, resolved once. */
class RouteSeries {
  readonly bytes: Tally;
  private readonly methods = new Map<string, MethodSeries>();

  constructor(readonly id: string, private readonly requests: Counter<'method' | 'route' | 'status'>,
    private readonly duration: DurationHistogram, bytes: Counter<'route'>) {
    this.bytes = new Tally(bytes.labels(id));
  }

  method(raw: string): MethodSeries {
    let s = this.methods.get(raw);
    if (s) return s;
    // Keyed by label, never by what the client sent: an unknown method joins `other`.
    const method = METHODS.has(raw) ? raw : 'other';
    s = this.methods.get(method);
    if (!s) this.methods.set(method, s = new MethodSeries(method, this.id, this.requests, this.duration));
    return s;
  }

  flush(): void {
    this.bytes.flush();
    for (const m of this.methods.values()) m.flush();
  }
}

class MethodSeries {
  readonly duration: Durations;
  private readonly statuses = new Map<number, Tally>();

  constructor(private readonly method: string, private readonly route: string,
    private readonly requests: Counter<'method' | 'route' | 'status'>, duration: DurationHistogram) {
    this.duration = duration.series(method, route);
  }

  /** Statuses are the server's own (at most a few dozen), so the map stays small. */
  status(code: number): Tally {
    let c = this.statuses.get(code);
    if (!c) this.statuses.set(code, c = new Tally(this.requests.labels(this.method, this.route, String(code))));
    return c;
  }

  flush(): void {
    for (const t of this.statuses.values()) t.flush();
  }
}

/**
 * Request durations as plain numbers per series, shown to prom-client's registry as a
 * histogram: what prom-client's own Histogram keeps, without its observe(), which
 * builds a label hash string and two objects on every call. The registry reads a metric
 * through get() (its typings' MetricObjectWithValues), as it reads its own.
 */
class DurationHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly all: Durations[] = [];

  constructor(readonly name: string, readonly help: string, private readonly buckets: number[]) {}

  series(method: string, route: string): Durations {
    const d = new Durations({ method, route }, this.buckets);
    this.all.push(d);
    return d;
  }

  async get() {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    for (const d of this.all) {
      let below = 0;
      for (let i = 0; i < this.buckets.length; i++) {
        below += d.counts[i]!;
        values.push({ labels: { le: this.buckets[i]!, ...d.labels }, value: below, metricName: `${this.name}_bucket` });
      }
      values.push({ labels: { le: '+Inf', ...d.labels }, value: d.count, metricName: `${this.name}_bucket` });
      values.push({ labels: d.labels, value: d.sum, metricName: `${this.name}_sum` });
      values.push({ labels: d.labels, value: d.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

class Durations {
  /** Observations per bucket (not cumulative); those above the last bucket only in `count`. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(readonly labels: { method: string; route: string }, private readonly buckets: number[]) {
    this.counts = new Float64Array(buckets.length);
  }

  observe(seconds: number): void {
    const b = this.buckets;
    let i = 0;
    while (i < b.length && seconds > b[i]!) i++;
    if (i < b.length) this.counts[i]!++;
    this.sum += seconds;
    this.count++;
  }
}

function bodyBytes(req: Request, res: Response): number {
  if (req.method === 'HEAD' || res.statusCode === 204 || res.statusCode === 304) return 0;
  const length = res.getHeader('content-length');
  const n = length !== undefined ? Number(length) : res.locals[WRITTEN] ?? 0;
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

function byteLength(chunk: unknown, encoding: unknown): number {
  if (typeof chunk === 'string') return Buffer.byteLength(chunk, typeof encoding === 'string' ? encoding as BufferEncoding : 'utf8');
  return chunk instanceof Uint8Array ? chunk.byteLength : 0;
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0;
}
