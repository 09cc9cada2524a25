// What a user reads when their image does not evaluate or build, whichever Nix runs:
// Nix 2.8 prints the error first, 2.18+ print nixreg's eval.nix frames first and the
// error last, indented. First against both versions' real output (test/fixtures/
// nix-errors, captured by capture.sh there, from the same image files), then end to
// end: pulls of those files from a registry over the Nix on PATH (2.8 on the host,
// 2.26 in .ci/nix-2.26's root).
import assert from 'node:assert/strict';
import { cpSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { sandboxHint } from '../../src/build/nix/nix-health.js';
import { describeError, essentialError, readJsonLog } from '../../src/build/nix/nix-errors.js';
import { NIX_VERSION } from '../helpers/nix.js';
import { ROOT } from '../helpers/registry.js';
import { Images, PKGS, errorOf, get, nixStr, nonce, startNixRegistry } from './helpers.js';

const FIXTURES = join(ROOT, 'test/fixtures/nix-errors');
const VERSIONS = readdirSync(FIXTURES).filter((d) => d.startsWith('nix-')).sort();
const OWN = ['/nixreg/src/build/nix/eval.nix'];
const mine = (f: string) => f.startsWith('/images/');

/** Per image file: the error's words, and where the user is sent (by either version: the error's position or a frame's). */
const CASES: Record<string, { error: RegExp; at?: string; atOn?: Record<string, string> }> = {
  'syntax': { error: /syntax error, unexpected ';'/, at: 'syntax.nix:2:16' },
  'undefined': { error: /undefined variable 'undefinedThing'/, at: 'undefined.nix:2:16' },
  'type': { error: /cannot add a string to an integer/, at: 'type.nix:1:13' },
  'missing-attr': { error: /attribute 'nosuchpackage' missing/, at: 'missing-attr.nix:2:16' },
  'assert': { error: /assertion '\(__lessThan 1 x\)' failed/, at: 'assert.nix:1:16' },
  'imported': { error: /list index 0 is out of bounds|'builtins\.head' called on an empty list/, at: 'lib/empty-head.nix:1:17' },
  'abort': { error: /evaluation aborted with the following error message: 'no config for you'/, atOn: { 'nix-2.8': 'abort.nix:1:19', 'nix-2.26': 'abort.nix:1:28' } },
  // Nix 2.8 gives a thrown error no position, and its trace none in the file.
  'throw': { error: /the image is not ready/, atOn: { 'nix-2.26': 'throw.nix:1:17' } },
  'multi-line': { error: /first line\n {7}second line/, atOn: { 'nix-2.26': 'multi-line.nix:1:17' } },
  // 2.8 overflows its C stack and writes plain text only; 2.18+ count the depth.
  'recursion': { error: /stack overflow/, atOn: { 'nix-2.26': 'recursion.nix:1:12' } },
  'not-a-spec': { error: /\/images\/not-a-spec\.nix must evaluate to an image spec/ },
  // Where the value is data, not code, Nix names eval.nix: said so, without its source.
  'fake-drv': { error: /attribute 'drvPath' missing/ },
};

describe('against captured output of each Nix version', () => {
  test('the fixtures: both versions, every image file', () => {
    assert.deepEqual(VERSIONS, ['nix-2.26', 'nix-2.8']);
    const images = readdirSync(join(FIXTURES, 'images')).filter((f) => f.endsWith('.nix')).map((f) => f.replace(/\.nix$/, ''));
    assert.deepEqual(images.sort(), Object.keys(CASES).sort());
  });

  for (const v of VERSIONS) {
    const read = (f: string) => readFileSync(join(FIXTURES, v, f), 'utf8');
    for (const [name, c] of Object.entries(CASES)) {
      test(`${v}: ${name}`, () => {
        const { text, error } = readJsonLog(read(`${name}.json`));
        const at = c.at ?? c.atOn?.[v];
        // The record where Nix wrote one; its plain text otherwise (2.8's stack overflow).
        const said = error ? describeError(error, OWN, mine) : essentialError(text);
        assert.match(said, new RegExp(`^error: ${c.error.source}`, 'm'));
        assert.match(said, /^error: /, 'the error comes first');
        if (at) assert.match(said, new RegExp(`^ +at /images/${at.replace(/\./g, '\\.')}:?$`, 'm'), said);
        else assert.doesNotMatch(said, /\/images\/[^ ]*:\d+:\d+/, said);
        if (name !== 'fake-drv') assert.doesNotMatch(said, /eval\.nix/, `no frame of nixreg's own: ${said}`);
        else assert.match(said, /\n {7}at \/nixreg\/src\/build\/nix\/eval\.nix:\d+:\d+$/, 'the position alone, not our source');
        assert.doesNotMatch(said, /\x1b|stack trace truncated|--show-trace/);
        // An excerpt is of the error's own position, in the user's file.
        if (c.at && error?.pos) assert.match(said, /\n {12}\d+\| .*\n {13}\| +\^/);
        // The plain text alone, the fallback: the error itself, never a frame.
        const plain = essentialError(read(`${name}.txt`));
        assert.match(plain, new RegExp(`^error: ${c.error.source}`, 'm'));
        assert.doesNotMatch(plain, /^\s*…/m);
        if (name !== 'fake-drv') assert.doesNotMatch(plain, /eval\.nix/);
      });
    }

    test(`${v}: builds: the builder's failure; /bin/sh hidden by the sandbox gets its hint`, () => {
      assert.match(essentialError(read('build-fails.txt')), /^error: builder for '\/nix\/store\/[^']+-fails-\d+\.drv' failed with exit code 7$/);
      const sh = read('sandbox-sh.txt');
      assert.match(essentialError(sh), /^error: builder for '\/nix\/store\/[^']+-sh-\d+\.drv' failed with exit code 1$/);
      assert.match(sandboxHint(sh), /its builder runs \/bin\/sh, a program outside the Nix store/);
    });

    test(`${v}: the readable text of a log keeps warnings and errors, not records`, () => {
      const { text } = readJsonLog(read('recursion.json'));
      assert.doesNotMatch(text, /@nix|\x1b/);
      assert.match(text, /stack overflow/);
    });
  }

  test('an error record: positions of either form, «none», a cut line', () => {
    const line = (r: object) => `@nix ${JSON.stringify({ action: 'msg', level: 0, msg: 'error: x', ...r })}`;
    const pos = (r: object) => readJsonLog(line(r)).error?.pos;
    assert.deepEqual(pos({ file: '/a/b.nix', line: 3, column: 4 }), { file: '/a/b.nix', line: 3, column: 4 });
    assert.deepEqual(pos({ file: '/a/b.nix:3:4', line: 3, column: 4 }), { file: '/a/b.nix', line: 3, column: 4 });
    assert.equal(pos({ file: '«none»:0', line: 0, column: 0 }), undefined);
    assert.equal(pos({ file: '«string»:1:2', line: 1, column: 2 }), undefined);
    assert.equal(pos({ file: null, line: null, column: null }), undefined);
    // A line the tail kept only the end of is no record: the text stays as it is.
    const cut = readJsonLog(`${'x'.repeat(100_000)}"raw_msg":"lost"}\n${line({ raw_msg: 'kept' })}`);
    assert.equal(cut.error?.message, 'kept');
    assert.equal(cut.text, 'error: x', 'the cut line is dropped from the text');
    // A thrown megabyte reaches the client cut.
    assert.equal(readJsonLog(line({ raw_msg: 'y'.repeat(1 << 20) })).error?.message.length, 4097);
    assert.equal(readJsonLog('error: plain\n').error, undefined);
  });
});

describe(`pulls under the Nix on PATH (${NIX_VERSION.join('.')})`, () => {
  let images: Images;
  let r: Awaited<ReturnType<typeof startNixRegistry>>;
  before(async () => {
    images = new Images();
    cpSync(join(FIXTURES, 'images'), images.dir, { recursive: true });
    r = await startNixRegistry(images.dir);
  });
  after(async () => { await r?.stop(); images?.cleanup(); });

  async function failure(repo: string): Promise<string> {
    const res = await get(`${r.url}/v2/${repo}/manifests/latest`);
    assert.equal(res.status, 404, res.text);
    const e = errorOf(res);
    assert.equal(e.code, 'MANIFEST_UNKNOWN');
    assert.ok(!e.message.includes(images.dir) && !e.message.includes(ROOT), `no host path: ${e.message}`);
    return e.message;
  }

  for (const name of ['syntax', 'undefined', 'type', 'missing-attr', 'imported', 'throw']) {
    test(`${name}: the user's error and their file's line, relative to --images; none of nixreg's frames`, async () => {
      const c = CASES[name]!;
      const at = c.at ?? c.atOn?.[`nix-${NIX_VERSION.join('.')}`];
      const message = await failure(name);
      assert.match(message, new RegExp(`^evaluating ${name} failed:\nerror: ${c.error.source}`));
      if (at) assert.match(message, new RegExp(`^ +at ${at.replace(/\./g, '\\.')}:?$`, 'm'));
      assert.doesNotMatch(message, /eval\.nix|…(?! while calling the '\w+' builtin\n {9}at [\w/.-]+:\d+:\d+$)/m);
    });
  }

  test('a failing build: the builder\'s failure and the build log', async () => {
    images.write('fails.nix', `let pkgs = import ${PKGS} { nonce = ${nixStr(nonce())}; }; in { contents = [ pkgs.broken ]; }\n`);
    const message = await failure('fails');
    assert.match(message, /^building fails failed: builder for '\/nix\/store\/\w{32}-broken\.drv' failed with exit code 7; build log: http/);
  });
});
