// Fuzzing of image ingestion (src/build/ingest/ingest.ts): a few hundred seeded mutations of
// valid docker-archive and OCI-layout tarballs (archive-gen.ts), each ingested into a
// real Storage. Every one must either be ingested or be refused with ArchiveError —
// never another error, never a hang — and leave nothing in the store's tmp dir; no
// name or link in an archive may make ingestion write or read outside its temp dirs.
//
// NIXREG_FUZZ_SEED (default "ci-1") and NIXREG_FUZZ_ARCHIVES (default 500) change the run.
import assert from 'node:assert/strict';
import { constants, existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Storage } from '../../src/blobs/storage.js';
import { ArchiveError } from '../../src/build/errors.js';
import { ingestImageOutput } from '../../src/build/ingest/ingest.js';
import { tempDir } from '../helpers/registry.js';
import { bases, mutate, type Base, type Canary } from './archive-gen.js';
import { Rng } from './prng.js';

const SEED = process.env.NIXREG_FUZZ_SEED ?? 'ci-1';
const CASES = Number(process.env.NIXREG_FUZZ_ARCHIVES ?? 500);
/** Far above what any of these small archives needs; only a hang reaches it. */
const CASE_TIMEOUT_MS = 20_000;
const OPTS = { hash: '0123456789abcdfghijklmnpqrsvwxyz', timeoutMs: 10_000 };

let base: string;
let canary: Canary;
let secret: Buffer;
let storage: Storage;
let all: Base[];

before(async () => {
  // base/{archives,data,canary}: an ingest temp dir is base/data/tmp/ingest-<uuid>, three
  // levels below base, so `../../../canary/x` from there is the canary.
  base = tempDir('nixreg-fuzz-ingest-');
  for (const d of ['archives', 'canary']) mkdirSync(join(base, d));
  secret = Buffer.from(`canary ${randomBytes(16).toString('hex')}\n`);
  canary = { dir: join(base, 'canary'), secret: join(base, 'canary', 'secret'), fifo: join(base, 'canary', 'fifo'), depth: 3 };
  writeFileSync(canary.secret, secret);
  execFileSync('mkfifo', [canary.fifo]);
  storage = await Storage.open(join(base, 'data'));
  all = await bases();
});
after(async () => {
  await storage?.close();
  if (base) rmSync(base, { recursive: true, force: true });
});

/** Whether some process has the FIFO open for reading (a writer can open it without blocking). */
function fifoHasReader(): boolean {
  try { closeSync(openSync(canary.fifo, constants.O_WRONLY | constants.O_NONBLOCK)); return true; } catch { return false; }
}

type Outcome = { ok: true } | { ok: false; error: unknown } | { hang: true };

async function ingest(path: string): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<Outcome>((r) => { timer = setTimeout(() => r({ hang: true }), CASE_TIMEOUT_MS); });
  try {
    return await Promise.race([
      ingestImageOutput(storage, 'fuzz/ingest', path, OPTS).then((): Outcome => ({ ok: true }), (error: unknown): Outcome => ({ ok: false, error })),
      hang,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

test(`${CASES} mutated archives (seed ${SEED}): ingested or refused with ArchiveError, nothing left behind`, { timeout: CASES * CASE_TIMEOUT_MS }, async (t) => {
  const problems: string[] = [];
  let accepted = 0;
  const t0 = Date.now();
  for (let i = 0; i < CASES; i++) {
    const rng = new Rng(`${SEED}/archive/${i}`);
    const m = await mutate(rng, all, canary);
    const path = join(base, 'archives', `case-${i}.tar`);
    writeFileSync(path, m.bytes);
    const where = `case ${i} (${m.what.slice(0, 300)}; ${m.bytes.length} bytes; replay: NIXREG_FUZZ_SEED=${SEED})`;
    const r = await ingest(path);
    if ('hang' in r) {
      problems.push(`${where}: no result after ${CASE_TIMEOUT_MS} ms${fifoHasReader() ? ' — and the canary FIFO outside the store is open for reading' : ''}`);
      // Whatever blocks on the FIFO gets its end of file, so the run can go on.
      if (fifoHasReader()) closeSync(openSync(canary.fifo, constants.O_WRONLY | constants.O_NONBLOCK));
    } else if (r.ok) {
      accepted++;
    } else if (!(r.error instanceof ArchiveError)) {
      const e = r.error as Error;
      problems.push(`${where}: rejected with ${e?.constructor?.name} instead of ArchiveError: ${String(e?.stack ?? e).slice(0, 1500)}`);
    }
    const left = readdirSync(storage.layout.tmpDir);
    if (left.length) {
      problems.push(`${where}: left in the store's tmp dir: ${left.join(', ')}`);
      for (const f of left) rmSync(join(storage.layout.tmpDir, f), { recursive: true, force: true });
    }
    rmSync(path);
  }
  t.diagnostic(`${CASES} archives in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${accepted} ingested, ${CASES - accepted} refused or failing`);
  assert.deepEqual(problems, []);
  assert.ok(accepted > 0 && accepted < CASES, `${accepted} of ${CASES} accepted: the mutations should leave some archives valid`);
});

test('nothing outside the temp dirs was written or read', () => {
  assert.deepEqual(readdirSync(base).sort(), ['archives', 'canary', 'data']);
  assert.deepEqual(readdirSync(canary.dir).sort(), ['fifo', 'secret']);
  assert.deepEqual(readFileSync(canary.secret), secret);
  assert.equal(existsSync('/tmp/nixreg-fuzz-pwned'), false);
  // The secret, had a link led to it, would be in a stored blob (as it is, or gzipped).
  const blobs = readdirSync(storage.layout.blobsDir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
  for (const e of blobs) {
    const b = readFileSync(join(e.parentPath, e.name));
    let plain = b;
    try { plain = gunzipSync(b); } catch { /* not gzip */ }
    assert.ok(!b.includes(secret) && !plain.includes(secret), `blob ${e.name} holds the canary secret`);
  }
  assert.equal(fifoHasReader(), false, 'something still reads the canary FIFO');
});
