// Real clients against a real nixreg process: docker push/pull/run, containerd.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { mkdirSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { startContainerd, type Containerd } from '../helpers/containerd.js';
import { run } from '../helpers/exec.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';

let dockerd: Dockerd;
let containerd: Containerd;
let reg: RegistryProcess;

before(async () => {
  [dockerd, containerd, reg] = await Promise.all([startDockerd(), startContainerd(), spawnRegistry()]);
});

after(async () => {
  await Promise.allSettled([dockerd?.stop(), containerd?.stop(), reg?.stop()]);
});

test('docker push, pull and run through nixreg; ctr pulls it too', async () => {
  // A one-file image around the static busybox, made without any registry.
  const root = tempDir();
  mkdirSync(join(root, 'bin'));
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  const tarball = join(tempDir(), 'rootfs.tar');
  await run('tar', ['-C', root, '-cf', tarball, '.']);
  const ref = `${reg.host}/e2e/busybox:1`;
  await dockerd.docker(['import', '-c', 'CMD ["/bin/busybox","echo","hello from nixreg"]', tarball, ref]);
  await dockerd.docker(['push', ref]);
  await dockerd.docker(['rmi', ref]);
  await dockerd.docker(['pull', ref]);
  const out = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
  assert.equal(out.stdout.trim(), 'hello from nixreg');

  await containerd.ctr(['image', 'pull', '--plain-http', ref]);
  const list = await containerd.ctr(['image', 'ls', '-q']);
  assert.match(list.stdout, new RegExp(ref.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
});
