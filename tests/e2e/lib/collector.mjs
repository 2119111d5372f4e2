// Starting `trellis collector` for end-to-end tests.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { BIN, SANITIZED, ms, withDeadline } from './trellis.mjs';

/** Starts `trellis collector` on free ports; resolves {query, otlp, zipkin, stop(), ...}. */
export async function startCollector(dataDir, args = []) {
  const argv = ['collector', '--listen', '127.0.0.1:0', '--otlp', '127.0.0.1:0', '--zipkin',
    '127.0.0.1:0', '--data-dir', dataDir, '--log-format', 'json', ...args];
  const proc = spawn(BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const listening = new Promise((resolve, reject) => {
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      err += d;
      const line = err.split('\n').find((l) => l.includes('"msg":"listening"'));
      if (line) resolve(JSON.parse(line));
    });
    exited.then((s) => reject(new Error(`collector exited ${JSON.stringify(s)}: ${err}`)));
  });
  const rec = await withDeadline(listening, ms(10000), `collector start; stderr: ${err}`);
  const base = (addr) => `http://${addr}`;
  return {
    query: base(rec.addr),
    otlp: base(rec.otlp),
    zipkin: base(rec.zipkin),
    stderr: () => err,
    async stop() {
      proc.kill('SIGTERM');
      const res = await withDeadline(exited, ms(15000), 'collector exit');
      assert.deepEqual(res, { code: 0, signal: null }, `collector exit; stderr:\n${err}`);
      if (SANITIZED) assert.doesNotMatch(err, /ERROR: AddressSanitizer|runtime error:/);
    },
    kill() { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); },
  };
}

