// bench/build: build-on-pull of a synthetic ~800 MB closure of ~120 store paths, through
// the real CLI (`nixreg serve --images`), against `tar | pigz` and `tar | gzip`.
//
//   npm run bench:build [-- --paths 120 --mb 800 --max-layers 100 --runs 3 --extra]
//
// (a) cold build: empty data dir, GET /v2/bench/manifests/latest until the manifest is
//     stored (evaluation, realisation of an already-built closure, closure query,
//     layering, tar+gzip of every layer, manifests), vs tar -c <closure> | pigz -6 and
//     | gzip -6 over the same store paths (page cache warm for all); and the same with
//     --layer-compression none (tar + sha256, written and fsynced).
// (b) rebuild after changing one small path at the top of the closure.
// (c) warm pull by the first build's hash tag: Nix processes started (from /nixreg/stats).
// (d) peak RSS of the server process (VmHWM) over the whole run.
// Also (with --extra): the cold build with UV_THREADPOOL_SIZE=1 (one compression
// thread), which shows what the parallel gzip buys, and with maxLayers 2 (one store layer
// of 800 MB), which shows that one big layer does not fall back to one core.
//
// The closure is built once with nix-build (derivation names are fixed, so later runs
// find it in the store); the generated store paths stay in /nix/store.
import { readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { run } from '../test/helpers/exec.js';
import { NIX_TEST_ENV } from '../test/helpers/nix.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../test/helpers/registry.js';

const { values: args } = parseArgs({
  options: {
    paths: { type: 'string', default: '120' },
    mb: { type: 'string', default: '800' },
    'max-layers': { type: 'string', default: '100' },
    extra: { type: 'boolean', default: false },
    runs: { type: 'string', default: '3' },
  },
});
const N = Number(args.paths);
const TOTAL = Number(args.mb) * 1e6;
const MAX_LAYERS = Number(args['max-layers']);
const CORES = availableParallelism();
const RUNS = Math.max(1, Number(args.runs));
const OCI = 'application/vnd.oci.image.manifest.v1+json';

// Every 15th path is big; sizes are chosen so the closure totals about TOTAL bytes.
const bigCount = Math.floor((N + 7) / 15);
const BIG = Math.round((TOTAL / 2) / Math.max(1, bigCount));
const SMALL = Math.round((TOTAL / 2) / Math.max(1, N - bigCount));

// The chain: path i references path i-1; content is 40% random, 30% base64 of random,
// 30% decimal numbers, plus 16 small files and a symlink. Bench-controlled values only.
const GEN = `
{ rev ? "1" }:
let
  mk = i: prev: derivation {
    name = "nixreg-bench-\${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    size = toString (if i - (i / 15) * 15 == 7 then ${BIG} else ${SMALL});
    inherit prev;
    args = [ "-c" ''
      set -e
      mkdir -p $out/lib $out/share/small
      echo "$prev" > $out/share/prev
      head -c $((size * 4 / 10)) /dev/urandom > $out/lib/random.bin
      head -c $((size * 3 / 10 * 3 / 4)) /dev/urandom | base64 -w 76 > $out/share/b64.txt
      seq 1 100000000 | head -c $((size * 3 / 10)) > $out/share/numbers.txt
      for j in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do echo "$name $j" > $out/share/small/$j; done
      ln -s ../lib/random.bin $out/share/link
    '' ];
  };
  chain = builtins.foldl' (prev: i: mk i prev) "" (builtins.genList (i: i) ${N});
in derivation {
  name = "nixreg-bench-top-\${rev}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  inherit chain;
  args = [ "-c" "mkdir -p $out/bin; printf '#!/bin/sh\\\\necho %s\\\\n' \\"$chain\\" > $out/bin/top; chmod 555 $out/bin/top" ];
}
`;

interface Row { what: string; seconds: number; note?: string }

function ms(t0: bigint): number { return Number(process.hrtime.bigint() - t0) / 1e9; }

async function timeIt<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = process.hrtime.bigint();
  const v = await fn();
  return [ms(t0), v];
}

function hwm(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

async function pull(reg: RegistryProcess, ref: string): Promise<string> {
  const r = await fetch(`${reg.url}/v2/bench/manifests/${ref}`, { headers: { accept: OCI } });
  const body = await r.text();
  if (r.status !== 200) throw new Error(`pull ${ref}: ${r.status} ${body}\n${reg.logs().slice(-4000)}`);
  return r.headers.get('docker-content-digest')!;
}

async function nixProcesses(reg: RegistryProcess): Promise<number> {
  const r = await fetch(`${reg.url}/nixreg/stats`);
  return ((await r.json()) as { nixProcesses: number }).nixProcesses;
}

async function shellTime(script: string, paths: string[]): Promise<number> {
  const [t] = await timeIt(() => run('sh', ['-c', script, 'sh', ...paths]));
  return t;
}

async function main() {
  const work = tempDir('nixreg-bench-build-');
  const images = join(work, 'images');
  mkdirSync(images);
  const gen = join(work, 'gen.nix');
  writeFileSync(gen, GEN);
  const writeImage = (rev: string, maxLayers = MAX_LAYERS) => writeFileSync(join(images, 'bench.nix'),
    `{ contents = [ (import ${gen} { rev = ${JSON.stringify(rev)}; }) ]; config = { Cmd = [ "/bin/top" ]; }; maxLayers = ${maxLayers}; }\n`);
  const rows: Row[] = [];
  const servers: RegistryProcess[] = [];
  try {
    console.error(`# generating ${N} store paths, ~${Math.round(TOTAL / 1e6)} MB (once; cached in /nix/store)`);
    const [tGen, built] = await timeIt(() => run('nix-build', [gen, '--argstr', 'rev', '1', '--no-out-link'], { env: NIX_TEST_ENV }));
    const top = built.stdout.trim();
    const paths = (await run('nix-store', ['--query', '--requisites', top], { env: NIX_TEST_ENV })).stdout.trim().split('\n');
    const du = (await run('du', ['-scb', ...paths])).stdout.trim().split('\n').pop()!.split('\t')[0]!;
    const bytes = Number(du);
    console.error(`# closure: ${paths.length} paths, ${(bytes / 1e6).toFixed(0)} MB (nix-build ${tGen.toFixed(1)} s)`);

    // Warm the page cache for everyone. The machine may be shared: pigz and the cold
    // build alternate, RUNS times each, and the best of each is compared.
    await run('sh', ['-c', 'tar -cf - "$@" > /dev/null', 'sh', ...paths]);
    const pigzSize = Number((await run('sh', ['-c', `tar -cf - "$@" | pigz -6 -p ${CORES} | wc -c`, 'sh', ...paths])).stdout.trim());
    const tGzip = await shellTime('tar -cf - "$@" | gzip -6 > /dev/null', paths);
    writeImage('1');
    let tPigz = Infinity;
    let tCold = Infinity;
    let tNone = Infinity;
    const colds: string[] = [];
    const nones: string[] = [];
    let noneStored = 0;
    let reg!: RegistryProcess;
    let digest1 = '';
    let rssCold = 0;
    for (let i = 0; i < RUNS; i++) {
      tPigz = Math.min(tPigz, await shellTime(`tar -cf - "$@" | pigz -6 -p ${CORES} > /dev/null`, paths));
      // (a) cold build from an empty data dir, (d) peak RSS.
      if (reg) await reg.stop();
      reg = await spawnRegistry({ images, data: join(work, `data-${i}`), env: NIX_TEST_ENV });
      servers.push(reg);
      const [t, d] = await timeIt(() => pull(reg, 'latest'));
      colds.push(t.toFixed(1));
      tCold = Math.min(tCold, t);
      digest1 = d;
      rssCold = Math.max(rssCold, hwm(reg.child.pid!));
      // The same, uncompressed.
      const plain = await spawnRegistry({ images, data: join(work, `data-none-${i}`), env: { ...NIX_TEST_ENV, NIXREG_LAYER_COMPRESSION: 'none' } });
      servers.push(plain);
      const [tn, dn] = await timeIt(() => pull(plain, 'latest'));
      nones.push(tn.toFixed(1));
      tNone = Math.min(tNone, tn);
      rssCold = Math.max(rssCold, hwm(plain.child.pid!));
      const m = await (await fetch(`${plain.url}/v2/bench/manifests/${dn}`, { headers: { accept: OCI } })).json() as { layers: { size: number; mediaType: string }[] };
      if (m.layers.some((l) => l.mediaType !== 'application/vnd.oci.image.layer.v1.tar')) throw new Error('--layer-compression none stored compressed layers');
      noneStored = m.layers.reduce((n, l) => n + l.size, 0);
      await plain.stop();
    }
    const manifest = await (await fetch(`${reg.url}/v2/bench/manifests/${digest1}`, { headers: { accept: OCI } })).json() as
      { layers: { size: number }[] };
    const stored = manifest.layers.reduce((n, l) => n + l.size, 0);
    const tags = (await (await fetch(`${reg.url}/v2/bench/tags/list`)).json() as { tags: string[] }).tags;
    const hash1 = tags.find((t) => t !== 'latest')!;

    // (b) rebuild after changing the small top path.
    writeImage('2');
    const [tRebuild, digest2] = await timeIt(() => pull(reg, 'latest'));
    if (digest2 === digest1) throw new Error('the rebuild did not change the image');

    // (c) warm pull by hash.
    const before = await nixProcesses(reg);
    const [tWarm, digestWarm] = await timeIt(() => pull(reg, hash1));
    const nixDuringWarm = (await nixProcesses(reg)) - before;
    if (digestWarm !== digest1) throw new Error('warm pull by hash returned another image');
    const rssAll = hwm(reg.child.pid!);
    await reg.stop();

    // The cold build again on one compression thread.
    let tSingle: number | undefined;
    if (args.extra) {
      writeImage('1');
      const one = await spawnRegistry({ images, data: join(work, 'data-single'), env: { ...NIX_TEST_ENV, UV_THREADPOOL_SIZE: '1' } });
      servers.push(one);
      [tSingle] = await timeIt(() => pull(one, 'latest'));
      await one.stop();
    }

    // One store layer holding the whole closure: only the parallel gzip of one stream
    // can use more than one core here.
    let tOneLayer: number | undefined;
    if (args.extra) {
      writeImage('1', 2);
      const big = await spawnRegistry({ images, data: join(work, 'data-one-layer'), env: NIX_TEST_ENV });
      servers.push(big);
      [tOneLayer] = await timeIt(() => pull(big, 'latest'));
      await big.stop();
    }

    rows.push(
      { what: `tar \\| pigz -6 -p ${CORES} (best of ${RUNS})`, seconds: tPigz, note: `${(pigzSize / 1e6).toFixed(0)} MB out` },
      { what: 'tar \\| gzip -6', seconds: tGzip },
      { what: `(a) nixreg cold build, gzip (pull latest, empty data dir; best of ${RUNS})`, seconds: tCold, note: `${manifest.layers.length} layers, ${(stored / 1e6).toFixed(0)} MB stored; runs: ${colds.join(', ')} s` },
      { what: `(a‴) same, --layer-compression none (best of ${RUNS})`, seconds: tNone, note: `${(noneStored / 1e6).toFixed(0)} MB stored; runs: ${nones.join(', ')} s` },
      ...(tSingle !== undefined ? [{ what: '(a′) same, UV_THREADPOOL_SIZE=1 (one gzip thread)', seconds: tSingle }] : []),
      ...(tOneLayer !== undefined ? [{ what: '(a″) same, maxLayers 2 (one store layer of the whole closure)', seconds: tOneLayer }] : []),
      { what: '(b) rebuild after changing the small top path', seconds: tRebuild },
      { what: '(c) warm pull by hash', seconds: tWarm, note: `${nixDuringWarm} Nix processes started` },
    );
    const out: string[] = [];
    out.push(`closure: ${paths.length} store paths, ${(bytes / 1e6).toFixed(0)} MB; ${CORES} cores; maxLayers ${MAX_LAYERS}`);
    out.push('');
    out.push('| step | seconds | × pigz | × gzip | × cold | notes |');
    out.push('|---|---:|---:|---:|---:|---|');
    for (const r of rows) {
      out.push(`| ${r.what} | ${r.seconds.toFixed(2)} | ${(r.seconds / tPigz).toFixed(2)} | ${(r.seconds / tGzip).toFixed(2)} | ${(r.seconds / tCold).toFixed(3)} | ${r.note ?? ''} |`);
    }
    out.push('');
    out.push(`(d) peak RSS of the server (VmHWM): ${(rssCold / 2 ** 20).toFixed(0)} MiB after the cold build, ${(rssAll / 2 ** 20).toFixed(0)} MiB after all steps (goal < 300 MiB)`);
    out.push('');
    out.push(`goals: cold ≤ 1.05× pigz: ${tCold <= 1.05 * tPigz ? 'met' : 'NOT met'} (${(tCold / tPigz).toFixed(2)}×); ` +
      `none ≤ 0.3× pigz: ${tNone <= 0.3 * tPigz ? 'met' : 'NOT met'} (${(tNone / tPigz).toFixed(2)}×); ` +
      `rebuild ≤ 0.1× cold: ${tRebuild <= 0.1 * tCold ? 'met' : 'NOT met'} (${(tRebuild / tCold).toFixed(3)}×); ` +
      `warm pull starts no Nix process: ${nixDuringWarm === 0 ? 'met' : 'NOT met'}; RSS < 300 MiB: ${rssAll < 300 * 2 ** 20 ? 'met' : 'NOT met'}`);
    console.log(out.join('\n'));
  } finally {
    for (const s of servers) await s.stop().catch(() => {});
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
