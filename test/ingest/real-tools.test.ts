// Archives written by real tools, each wrapped as a derivation's output and served by a
// real nixreg process: `docker save` from the test engine, and skopeo's docker-archive:
// and oci-archive: outputs of the same image. Pulled back by Docker and run.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { startDockerd, type Dockerd } from '../helpers/dockerd.js';
import { requireTool, run } from '../helpers/exec.js';
import { NIX_TEST_ENV } from '../helpers/nix.js';
import { spawnRegistry, tempDir, type RegistryProcess } from '../helpers/registry.js';

let dockerd: Dockerd;
let reg: RegistryProcess;
let images: string;
let work: string;
let sourceId: string;

/** An image expression: a derivation that copies `archive` (a test-made file) to $out. */
function wrap(name: string, archive: string) {
  writeFileSync(join(images, `${name}.nix`), `derivation {
  name = "${name}.tar";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  src = ${JSON.stringify(archive)};
  args = [ "-c" "cp \\"$src\\" \\"$out\\"" ];
}
`);
}

before(async () => {
  await Promise.all(['nix-build', 'skopeo'].map(requireTool));
  images = tempDir('nixreg-realtools-images-');
  work = tempDir('nixreg-realtools-');
  [dockerd, reg] = await Promise.all([startDockerd(), spawnRegistry({ images, env: NIX_TEST_ENV })]);

  // A two-layer image made offline: an imported busybox root, then a committed change.
  const root = join(work, 'root');
  mkdirSync(join(root, 'bin'), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  await run('tar', ['-C', root, '-cf', join(work, 'rootfs.tar'), '.']);
  await dockerd.docker(['import', join(work, 'rootfs.tar'), 'ingest-base:1']);
  await dockerd.docker(['run', '--name', 'c1', '--network', 'none', 'ingest-base:1', '/bin/busybox', 'sh', '-c', 'echo second layer > /msg']);
  await dockerd.docker(['commit', '-c', 'CMD ["/bin/busybox","cat","/msg"]', 'c1', 'ingest-src:1']);
  await dockerd.docker(['rm', 'c1']);
  sourceId = (await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', 'ingest-src:1'])).stdout.trim();

  const saved = join(work, 'saved.tar');
  await dockerd.docker(['save', '-o', saved, 'ingest-src:1']);
  await run('skopeo', ['copy', '--quiet', `docker-archive:${saved}`, `docker-archive:${join(work, 'skopeo-docker.tar')}:skopeo/src:1`]);
  await run('skopeo', ['copy', '--quiet', `docker-archive:${saved}`, `oci-archive:${join(work, 'skopeo-oci.tar')}:1`]);
  // Nix builders run as a build user: let it read the archives.
  await run('chmod', ['-R', 'a+rX', work]);
  wrap('docker-save', saved);
  wrap('skopeo-docker', join(work, 'skopeo-docker.tar'));
  wrap('skopeo-oci', join(work, 'skopeo-oci.tar'));
});

after(async () => {
  await Promise.allSettled([dockerd?.stop(), reg?.stop()]);
  for (const d of [images, work, reg?.data]) if (d) rmSync(d, { recursive: true, force: true });
});

async function pullAndRun(name: string): Promise<string> {
  const ref = `${reg.host}/${name}:latest`;
  await dockerd.docker(['pull', ref]);
  const out = await dockerd.docker(['run', '--rm', '--network', 'none', ref]);
  assert.equal(out.stdout, 'second layer\n', name);
  return (await dockerd.docker(['image', 'inspect', '--format', '{{.Id}}', ref])).stdout.trim();
}

/** A member of a tar file, read whole (test archives are small). */
async function member(file: string, name: string): Promise<Buffer | undefined> {
  const extract = tar.extract();
  Readable.from([readFileSync(file)]).pipe(extract as unknown as NodeJS.WritableStream);
  let found: Buffer | undefined;
  for await (const e of extract) {
    const chunks: Buffer[] = [];
    for await (const c of e) chunks.push(c as Buffer);
    if (e.header.name.replace(/^\.\//, '') === name) found = Buffer.concat(chunks);
  }
  return found;
}

test('docker save: pulled back with the same image ID and both layers', async () => {
  assert.equal(await pullAndRun('docker-save'), sourceId);
  const m = await (await fetch(`${reg.url}/v2/docker-save/manifests/latest`, {
    headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' },
  })).json() as { layers: unknown[] };
  assert.equal(m.layers.length, 2);
});

test("skopeo's docker-archive: pulls, runs, same image ID", async () => {
  assert.equal(await pullAndRun('skopeo-docker'), sourceId);
});

test("skopeo's oci-archive: pulls and runs; its OCI manifest is served byte for byte", async () => {
  await pullAndRun('skopeo-oci');
  const archive = join(work, 'skopeo-oci.tar');
  const index = JSON.parse((await member(archive, 'index.json'))!.toString()) as { manifests: { digest: string }[] };
  const written = await member(archive, `blobs/sha256/${index.manifests[0]!.digest.slice(7)}`);
  const m = JSON.parse(written!.toString()) as { layers: { mediaType: string }[] };
  const r = await fetch(`${reg.url}/v2/skopeo-oci/manifests/latest`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  const served = Buffer.from(await r.arrayBuffer());
  // skopeo compresses layers for OCI destinations, so nixreg stores them as they are.
  assert.ok(m.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+gzip'), JSON.stringify(m.layers));
  assert.equal(r.headers.get('content-type'), 'application/vnd.oci.image.manifest.v1+json');
  assert.deepEqual(served, written, 'the manifest byte for byte');
  // skopeo reads it back from nixreg as well.
  await run('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/skopeo-oci:latest`]);
});
