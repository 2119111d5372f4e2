// Helpers for the event store's end-to-end tests: run `trellis eventstore` on a free port.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { BIN, SANITIZED, ms, watchOutput, withDeadline } from './trellis.mjs';

const SANITIZER_RE = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/;

/** Starts `trellis eventstore` on `port` (0: any free one) over dataDir; resolves {port, proc, out, stop}. */
export async function startStore(dataDir, args = [], port = 0) {
  const proc = spawn(BIN, ['eventstore', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir,
    '--log-format', 'json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = watchOutput(proc, 'trellis eventstore');
  let line;
  try {
    line = await out.waitLog(/"msg":"listening"/, ms(10000));
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  const bound = Number(JSON.parse(line).addr.split(':').pop());
  assert.ok(bound > 0, `listening line has a port: ${line}`);
  const store = {
    port: bound,
    proc,
    out,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const res = await withDeadline(out.exited, ms(15000), `eventstore exit after ${signal}`);
      if (signal === 'SIGTERM') {
        assert.deepEqual(res, { code: 0, signal: null }, `exit status; stderr:\n${out.stderr()}`);
        if (SANITIZED) {
          const bad = out.stderr().split('\n').filter((l) => SANITIZER_RE.test(l));
          assert.deepEqual(bad, [], `sanitizer reports:\n${out.stderr()}`);
        }
      }
      return res;
    },
  };
  return store;
}
