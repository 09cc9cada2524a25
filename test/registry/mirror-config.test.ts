// The pull-through cache's configuration: --mirror PREFIX=URL (NIXREG_MIRROR) and the
// --mirror-config file, each fault one line that names the key; and the CLI's exit 2.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { serveConfig } from '../../src/config.js';
import { MirrorConfigError, mirrorUpstreams, parseMirrorFlag } from '../../src/registry/mirror/config.js';
import { CLI, tempDir } from '../helpers/registry.js';

const dir = tempDir('nixreg-mirror-config-');
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

test('--mirror PREFIX=URL, repeatable; NIXREG_MIRROR comma- or space-separated; the flag wins', () => {
  assert.deepEqual(serveConfig({}, {}).mirrors, []);
  assert.deepEqual(serveConfig({}, { NIXREG_MIRROR: 'hub=https://registry-1.docker.io, ghcr=https://ghcr.io quay=https://quay.io' }).mirrors,
    ['hub=https://registry-1.docker.io', 'ghcr=https://ghcr.io', 'quay=https://quay.io']);
  assert.deepEqual(serveConfig({ mirror: ['a=http://x'] }, { NIXREG_MIRROR: 'b=http://y' }).mirrors, ['a=http://x']);
  assert.equal(serveConfig({}, { NIXREG_MIRROR_CONFIG: 'm.yaml' }).mirrorConfig, join(process.cwd(), 'm.yaml'));
  const u = parseMirrorFlag('mirrors/hub=https://registry-1.docker.io/');
  assert.equal(u.prefix, 'mirrors/hub');
  assert.equal(u.origin, 'https://registry-1.docker.io');
  assert.equal(u.freshnessMs, 60_000);
  assert.equal(u.credentials, undefined);
});

test('a bad --mirror is one line saying what is wrong', () => {
  for (const [v, re] of [
    ['https://x', /PREFIX=URL/],
    ['Hub=https://x', /PREFIX=URL/],
    ['hub=ftp://x', /http\(s\)/],
    ['hub=https://x/v2', /no path/],
    ['hub=https://u:secret@x', /credentials go in the mirror file/],
  ] as const) {
    assert.throws(() => parseMirrorFlag(v), (e: Error) => e instanceof MirrorConfigError && re.test(e.message) && !e.message.includes('secret'), v);
  }
});

test('the mirror file: credentials (password or passwordFile), namespaces, freshness, timeout and CA, relative to the file', () => {
  file('pw', 'hunter2\nignored\n');
  file('ca.pem', '-----BEGIN CERTIFICATE-----\n');
  const f = file('m.yaml', [
    'upstreams:',
    '  - prefix: dockerhub',
    '    url: https://registry-1.docker.io',
    '    namespaces: [docker.io]',
    '    username: bob',
    '    passwordFile: pw',
    '    freshness: 300',
    '    timeout: 10',
    '  - prefix: private',
    '    url: https://reg.internal:5000',
    '    caFile: ca.pem',
    '    freshness: 0',
  ].join('\n'));
  const [hub, priv] = mirrorUpstreams(['quay=https://quay.io'], f).slice(1);
  assert.deepEqual(hub!.credentials, { username: 'bob', password: 'hunter2' });
  assert.deepEqual(hub!.namespaces, ['docker.io']);
  assert.equal(hub!.freshnessMs, 300_000);
  assert.equal(hub!.timeoutMs, 10_000);
  assert.equal(priv!.ca!.toString(), '-----BEGIN CERTIFICATE-----\n');
  assert.equal(priv!.freshnessMs, 0);
  // JSON is YAML too.
  const j = file('m.json', JSON.stringify({ upstreams: [{ prefix: 'g', url: 'https://ghcr.io', username: 'u', password: 'p' }] }));
  assert.deepEqual(mirrorUpstreams([], j)[0]!.credentials, { username: 'u', password: 'p' });
});

test('faults in the mirror file name the key; prefixes and namespaces are claimed once', () => {
  const cases: [string, RegExp][] = [
    ['upstreams:\n  - prefix: a\n    url: https://x\n    colour: red\n', /upstreams\.0: Unrecognized key/],
    ['upstreams:\n  - prefix: A B\n    url: https://x\n', /upstreams\.0\.prefix: a prefix is a repository name/],
    ['upstreams:\n  - prefix: a\n    url: https://x\n    username: u\n', /username and password go together/],
    ['upstreams:\n  - prefix: a\n    url: https://x\n    caFile: nowhere.pem\n', /caFile .*nowhere\.pem: ENOENT/],
    ['upstreams:\n  - prefix: a\n    url: https://x\n  - prefix: a/b\n    url: https://y\n', /prefixes a and a\/b overlap/],
    ['upstreams:\n  - prefix: a\n    url: https://x\n    namespaces: [docker.io]\n  - prefix: b\n    url: https://y\n    namespaces: [docker.io]\n', /namespace docker\.io is mirrored by both a and b/],
    ['upstreams: [\n', /mirror file .*: /],
  ];
  for (const [i, [text, re]] of cases.entries()) {
    assert.throws(() => mirrorUpstreams([], file(`bad${i}.yaml`, text)), (e: Error) => e instanceof MirrorConfigError && re.test(e.message), `${text} → ${re}`);
  }
  assert.throws(() => mirrorUpstreams(['a=https://x', 'a=https://y'], undefined), /prefixes a and a overlap/);
});

test('nixreg serve with a faulty mirror file exits 2 with one line', () => {
  const f = file('bad.yaml', 'upstreams:\n  - prefix: a\n    url: https://x\n    password: Secret-in-file\n    colour: red\n');
  const r = spawnSync(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--data', join(dir, 'data'), '--mirror-config', f], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /^error: mirror file .*bad\.yaml: upstreams\.0: Unrecognized key/m);
  assert.ok(!r.stderr.includes('Secret-in-file'));
});
