// Issue 11: /metrics, in process. The names the README lists, after real traffic; the
// route label is the endpoint id of routes.ts and stays bounded whatever paths and
// methods clients send; response bytes are what was sent; storage comes from the index;
// the GC counters storage keeps are read defensively and never go down; each app has
// its own registry; NIXREG_METRICS=off turns it all off.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { endpoints } from '../../src/registry/routes.js';
import { OCI_MANIFEST, assertError, http, raw, pushImage, sha256, startReg, type TestRegistry } from '../api/util.js';
import { parseExposition, scrape, scrapeUntil, type Exposition } from '../helpers/prometheus.js';

const REQUIRED: [string, string][] = [
  ['nixreg_http_requests_total', 'counter'],
  ['nixreg_http_request_duration_seconds', 'histogram'],
  ['nixreg_http_response_bytes_total', 'counter'],
  ['nixreg_builds_total', 'counter'],
  ['nixreg_build_duration_seconds', 'histogram'],
  ['nixreg_build_queue_length', 'gauge'],
  ['nixreg_evaluations_total', 'counter'],
  ['nixreg_storage_blobs', 'gauge'],
  ['nixreg_storage_bytes', 'gauge'],
  ['nixreg_gc_runs_total', 'counter'],
  ['nixreg_gc_freed_bytes_total', 'counter'],
  ['nixreg_cache_evictions_total', 'counter'],
  // The process's own (collectDefaultMetrics).
  ['process_cpu_seconds_total', 'counter'],
  ['process_resident_memory_bytes', 'gauge'],
  ['nodejs_eventloop_lag_seconds', 'gauge'],
  ['nodejs_heap_size_used_bytes', 'gauge'],
];

const sum = (m: Exposition, name: string) => m.all(name).reduce((n, s) => n + s.value, 0);

let reg: TestRegistry;
before(async () => { reg = await startReg(); });
after(async () => { await reg.destroy(); });

describe('metrics', () => {
  test('after traffic: every listed metric with its type, requests by endpoint id, bytes as sent, storage from the index', async () => {
    const img = await pushImage(reg.url, 'team/app', 'v1');
    const sent: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await http(reg.url, 'GET', '/v2/team/app/manifests/v1', { headers: { accept: OCI_MANIFEST } });
      assert.equal(r.status, 200);
      sent.push(r.body.length);
    }
    const missing = await http(reg.url, 'GET', '/v2/team/app/manifests/nope');
    assertError(missing, 404, 'MANIFEST_UNKNOWN');
    sent.push(missing.body.length);
    assert.equal((await http(reg.url, 'HEAD', '/v2/team/app/manifests/v1', { headers: { accept: OCI_MANIFEST } })).status, 200);
    const range = await http(reg.url, 'GET', `/v2/team/app/blobs/${sha256(img.config)}`, { headers: { range: 'bytes=0-9' } });
    assert.equal(range.status, 206);

    // The blob's last byte can reach the client before its response ends on the server.
    const m = await scrapeUntil(reg.url, (x) => x.value('nixreg_http_requests_total', { method: 'GET', route: 'end-2', status: '206' }) !== undefined);
    for (const [name, type] of REQUIRED) assert.equal(m.types.get(name), type, `${name} is a ${type}`);
    assert.equal(m.value('nixreg_http_requests_total', { method: 'GET', route: 'end-3', status: '200' }), 3);
    assert.equal(m.value('nixreg_http_requests_total', { method: 'GET', route: 'end-3', status: '404' }), 1);
    assert.equal(m.value('nixreg_http_requests_total', { method: 'HEAD', route: 'end-3', status: '200' }), 1);
    assert.equal(m.value('nixreg_http_requests_total', { method: 'PUT', route: 'end-7', status: '201' }), 1);
    assert.equal(m.value('nixreg_http_requests_total', { method: 'POST', route: 'end-4a/4b/11', status: '201' }), 2);
    assert.equal(m.value('nixreg_http_request_duration_seconds_count', { method: 'GET', route: 'end-3' }), 4);
    assert.equal(m.value('nixreg_http_request_duration_seconds_bucket', { method: 'GET', route: 'end-3', le: '+Inf' }), 4);
    assert.ok(m.value('nixreg_http_request_duration_seconds_sum', { method: 'GET', route: 'end-3' })! > 0);
    // GET bodies only: a HEAD sends none, however long its Content-Length.
    assert.equal(m.value('nixreg_http_response_bytes_total', { route: 'end-3' }), sent.reduce((a, b) => a + b));
    assert.equal(m.value('nixreg_http_response_bytes_total', { route: 'end-2' }), 10);
    assert.equal(m.value('nixreg_storage_blobs'), 3);
    assert.equal(m.value('nixreg_storage_bytes'), img.config.length + img.layer.length + img.manifest.length);
    assert.equal(m.value('nixreg_builds_total', { result: 'succeeded' }), 0);
    assert.equal(m.value('nixreg_builds_total', { result: 'failed' }), 0);
    assert.equal(m.value('nixreg_build_queue_length'), 0);
    assert.equal(m.value('nixreg_gc_runs_total'), 0);
  });

  test('route labels are endpoint ids or "unmatched", methods a fixed few or "other", whatever clients send', async () => {
    const ids = new Set([...endpoints.map((e) => e.id), 'unmatched']);
    const methods = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'PROPFIND', 'MKCOL', 'PURGE', 'SEARCH', 'LOCK', 'UNLOCK', 'REPORT', 'COPY', 'MOVE'];
    const tokens: string[] = [];
    const word = () => { const t = `q${randomBytes(6).toString('hex')}`; tokens.push(t); return t; };
    const shapes = [
      () => `/${word()}`,
      () => `/${word()}/${word()}/${word()}`,
      () => `/v2/${word()}/manifests/${word()}`,
      () => `/v2/${word()}/${word()}/blobs/sha256:${word()}`,
      () => `/v2/${word()}/blobs/uploads/${word()}`,
      () => `/v2/${word()}/tags/list?n=${word()}`,
      () => `/v2/${word()}%2f${word()}/manifests/x`,
      () => `/nixreg/builds/${word()}/log`,
      () => `/metrics/${word()}`,
      () => `/healthz?${word()}=1`,
    ];
    const N = 400;
    const before = sum(await scrape(reg.url), 'nixreg_http_requests_total');
    for (let i = 0; i < N; i++) {
      const r = await raw(reg.url, methods[i % methods.length]!, shapes[i % shapes.length]!());
      assert.ok(r.status < 500, `${r.status} for a client's request`);
    }
    const res = await fetch(`${reg.url}/metrics`);
    const text = await res.text();
    const m = parseExposition(text);
    // Every request counted (and the scrape before them), under a bounded set of series.
    assert.equal(sum(m, 'nixreg_http_requests_total') - before, N + 1);
    const series = m.all('nixreg_http_requests_total');
    for (const s of series) {
      assert.ok(ids.has(s.labels.route!), `route label ${s.labels.route}`);
      assert.ok(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'other'].includes(s.labels.method!), `method label ${s.labels.method}`);
      assert.match(s.labels.status!, /^[1-5]\d\d$/);
    }
    assert.ok(series.length < 80, `${series.length} request series after ${N} distinct paths`);
    assert.ok(m.all('nixreg_http_response_bytes_total').length <= ids.size);
    const leaked = tokens.filter((t) => text.includes(t));
    assert.deepEqual(leaked, [], 'no part of a request path reaches a label');
    assert.ok((m.value('nixreg_http_requests_total', { method: 'other', route: 'unmatched', status: '405' }) ?? 0) > 0
      || (m.value('nixreg_http_requests_total', { method: 'other', route: 'unmatched', status: '404' }) ?? 0) > 0, 'unknown methods are "other"');
    assert.ok((m.value('nixreg_http_requests_total', { method: 'GET', route: 'end-3', status: '404' }) ?? 0) >= 1);
  });

  test('the GC counters count real collections: runs and the bytes they removed', async () => {
    const gcReg = await startReg({ storage: { gcGraceMs: 0, gcIntervalMs: 0 } });
    try {
      let m = await scrape(gcReg.url);
      assert.equal(m.value('nixreg_gc_runs_total'), 0);
      const junk = randomBytes(3000);
      const up = await http(gcReg.url, 'POST', `/v2/m/junk/blobs/uploads/?digest=${sha256(junk)}`, { body: junk });
      assert.equal(up.status, 201);
      await new Promise((r) => setTimeout(r, 5));
      const report = (await http(gcReg.url, 'POST', '/nixreg/gc')).json() as { bytes: number };
      assert.equal(report.bytes, 3000);
      m = await scrape(gcReg.url);
      assert.equal(m.value('nixreg_gc_runs_total'), 1);
      assert.equal(m.value('nixreg_gc_freed_bytes_total'), 3000);
      assert.equal(m.value('nixreg_cache_evictions_total'), 0);
      // A dry run is no run.
      await http(gcReg.url, 'POST', '/nixreg/gc?dry-run=1');
      assert.equal((await scrape(gcReg.url)).value('nixreg_gc_runs_total'), 1);
    } finally { await gcReg.destroy(); }
  });

  test('two servers in one process count apart', async () => {
    const other = await startReg();
    try {
      for (let i = 0; i < 2; i++) assert.equal((await http(other.url, 'GET', '/v2/')).status, 200);
      const mine = await scrape(reg.url);
      const theirs = await scrape(other.url);
      assert.equal(theirs.value('nixreg_http_requests_total', { method: 'GET', route: 'end-1', status: '200' }), 2);
      assert.equal(mine.value('nixreg_http_requests_total', { method: 'GET', route: 'end-1', status: '200' }), undefined);
      assert.equal(theirs.value('nixreg_storage_blobs'), 0);
      assert.equal(mine.value('nixreg_storage_blobs'), 3);
    } finally {
      await other.destroy();
    }
  });

  test('NIXREG_METRICS=off: no /metrics (404), everything else as before', async () => {
    process.env.NIXREG_METRICS = 'off';
    let off: TestRegistry;
    try {
      off = await startReg();
    } finally {
      delete process.env.NIXREG_METRICS;
    }
    try {
      assertError(await http(off.url, 'GET', '/metrics'), 404, 'NAME_UNKNOWN');
      assert.equal((await http(off.url, 'GET', '/v2/')).status, 200);
      assert.equal((await http(off.url, 'GET', '/healthz')).status, 200);
      assert.equal((await http(off.url, 'GET', '/readyz')).status, 200);
    } finally {
      await off.destroy();
    }
  });
});
