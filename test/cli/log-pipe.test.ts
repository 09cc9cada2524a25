// Found by the fuzzing sessions: when the process reading nixreg's stdout dies, logging
// must not hang the server. Before, pino's exit flush retried EPIPE forever and SIGTERM
// never stopped `nixreg serve`.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { test } from 'node:test';
import { tempDir } from '../helpers/registry.js';
import { reap, spawnCli } from './spawn.js';

test('with its stdout reader gone, nixreg still serves and stops on SIGTERM', async () => {
  const data = tempDir();
  const p = spawnCli(['serve', '--listen', '127.0.0.1:0', '--data', data, '--images', data]);
  try {
    const { url } = await p.listening;
    // The read end of the pipe closes: every later log write fails with EPIPE.
    p.child.stdout!.destroy();
    for (let i = 0; i < 5; i++) {
      // Each of these logs a line (a 404 for a name, a request for a missing endpoint).
      assert.equal((await fetch(`${url}/v2/`)).status, 200);
      await fetch(`${url}/v2/nope/manifests/x`);
    }
    p.kill('SIGTERM');
    const code = await Promise.race([p.exited, new Promise((r) => setTimeout(() => r('hung'), 10_000))]);
    assert.equal(code, 0);
  } finally {
    await reap(p);
    rmSync(data, { recursive: true, force: true });
  }
});
