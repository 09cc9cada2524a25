// Builds as jobs across replicas (issue 24 item 3): two `nixreg serve` replicas over one
// PostgreSQL index and one data directory, with real Nix. A slow build started through
// replica A is listed by B, its stage read through B, and its log followed live through
// B (Nix's lines arrive while the build runs); after kill -9 of A the job reads failed on
// B, saying its replica stopped, within the bound (15 s of silence), and B's follower ends.
// Access control holds through B as through A: a user who may not read the repository is
// not shown the build, and gets 404 for it and its log.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { waitFor } from '../helpers/exec.js';
import { Images, nonce, sleeper } from '../build/helpers.js';
import { basicAuth, writeAuth } from '../helpers/auth.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { startPostgres, type Postgres } from '../helpers/postgres.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';

let pg: Postgres;
let a: RegistryProcess;
let b: RegistryProcess;
const images = new Images();
const data = tempDir('nixreg-jobs-replicas-');

before(async () => {
  pg = await startPostgres({ durable: false });
  const auth = writeAuth(data, `htpasswd: ./htpasswd
accessControl:
  repositories:
    "slow": { policies: [ { users: [alice], actions: [read] } ], defaultPolicy: [] }
    "**": { defaultPolicy: [read] }
`, { alice: 'alice-pw', bob: 'bob-pw' });
  const args = ['--database', await pg.createDatabase(), '--gc-interval', '0', '--build-timeout', '120', '--auth', auth];
  a = await spawnRegistry({ data, images: images.dir, env: NIX_TEST_ENV, args });
  b = await spawnRegistry({ data, images: images.dir, env: NIX_TEST_ENV, args });
});

after(async () => {
  await a?.stop();
  await b?.stop();
  await pg?.stop();
  images.cleanup();
  rmSync(data, { recursive: true, force: true });
});

/** Every process below `pid` (the Nix processes a killed replica leaves behind). */
function descendants(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const ppid = Number(readFileSync(`/proc/${d}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')[1]);
      if (ppid === pid) out.push(Number(d), ...descendants(Number(d)));
    } catch { /* gone */ }
  }
  return out;
}

const ALICE = basicAuth('alice', 'alice-pw');
const BOB = basicAuth('bob', 'bob-pw');
const json = async (url: string, headers = ALICE) => { const r = await fetch(url, { headers }); return { status: r.status, body: await r.json() as any }; };

test('a build on replica A is listed, read and followed live through B; kill -9 of A and B shows it failed', { timeout: 120_000 }, async () => {
  const name = `slow-${nonce()}`;
  images.write('slow.nix', sleeper(name, 60));
  const started = await fetch(`${a.url}/nixreg/builds`, { method: 'POST', headers: { 'content-type': 'application/json', ...ALICE }, body: JSON.stringify({ repository: 'slow' }) });
  assert.equal(started.status, 202);
  const id = ((await started.json()) as { id: string }).id;

  const listed = await waitFor('B lists the build', async () => (await json(`${b.url}/nixreg/builds`)).body.builds.find((v: any) => v.id === id));
  assert.equal(listed.repository, 'slow');

  // B follows the log live: Nix's first line arrives while the build runs.
  const follow = await fetch(`${b.url}/nixreg/builds/${id}/log?follow=1`, { headers: ALICE });
  assert.equal(follow.status, 200);
  const reader = follow.body!.getReader();
  let text = '';
  const readAll = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      text += Buffer.from(value).toString();
    }
  })();
  await waitFor('the build\'s first line through B', async () => (text.includes(`${name}: started`) ? true : undefined));
  const during = (await json(`${b.url}/nixreg/builds/${id}`)).body;
  assert.equal(during.status, 'building', JSON.stringify(during));
  assert.equal(during.id, id);
  assert.ok(during.seconds > 0);
  // A and B say the same of it.
  assert.equal((await json(`${a.url}/nixreg/builds/${id}`)).body.status, 'building');
  const plain = await (await fetch(`${b.url}/nixreg/builds/${id}/log`, { headers: ALICE })).text();
  assert.match(plain, new RegExp(`${name}: started`));
  // Bob may not read `slow`: through B the build is none of his business.
  assert.equal((await json(`${b.url}/nixreg/builds`, BOB)).body.builds.some((v: any) => v.id === id), false);
  assert.equal((await json(`${b.url}/nixreg/builds/${id}`, BOB)).status, 404);
  assert.equal((await fetch(`${b.url}/nixreg/builds/${id}/log`, { headers: BOB })).status, 404);

  // A dies mid-build.
  const orphans = descendants(a.child.pid!);
  const killed = Date.now();
  await a.stop('SIGKILL');
  for (const p of orphans) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
  const failed = await waitFor('B shows the build failed', async () => {
    const v = (await json(`${b.url}/nixreg/builds/${id}`)).body;
    return v.status === 'failed' ? v : undefined;
  }, 40_000);
  const took = (Date.now() - killed) / 1000;
  assert.ok(took >= 10 && took < 15 + 5, `failed after ${took} s`);
  assert.match(failed.error, /the replica building it \(.+\) stopped: no word from it for \d+ s/);
  const row = (await json(`${b.url}/nixreg/builds`)).body.builds.find((v: any) => v.id === id);
  assert.equal(row.status, 'failed');
  // The follower on B ends too, saying why.
  await readAll;
  assert.match(text, /\[nixreg\] the replica building it .* stopped/);
  console.log(`# failed on B ${took.toFixed(1)} s after kill -9 of A`);
});
