// Helpers for the registry end-to-end tests: run `trellis registry` on a fresh data
// directory, restart it on the same directory, and speak its Consul HTTP API with fetch.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { BIN, SANITIZED, ms, withDeadline } from './trellis.mjs';

export { BIN, SANITIZED, SLOW, ms, sleep, withDeadline } from './trellis.mjs';

const SANITIZER_RE = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/;

/** Spawns one registry process on `dataDir` and waits for its JSON "listening" line. */
async function spawnRegistry(dataDir, args, startTimeout) {
  const argv = ['registry', '--listen', '127.0.0.1:0', '--log-format', 'json',
    '--data-dir', dataDir, ...args];
  const proc = spawn(BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let out = '';
  const waiters = new Set();
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }));
  });
  proc.on('error', (e) => { err += `spawn error: ${e.message}\n`; });
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    err += d;
    for (const w of [...waiters]) w();
  });
  /** Resolves with the first stderr line matching re (already seen or future). */
  const waitLog = (re, timeout = ms(5000)) => withDeadline(new Promise((resolve, reject) => {
    const check = () => {
      const line = err.split('\n').find((l) => re.test(l));
      if (line !== undefined) {
        waiters.delete(check);
        resolve(line);
      }
    };
    waiters.add(check);
    exited.then(({ code, signal }) => {
      check();
      waiters.delete(check);
      reject(new Error(`trellis registry exited (code ${code}, signal ${signal}) before logging ${re}; stderr:\n${err}`));
    });
    check();
  }), timeout, `trellis registry log line ${re}; stderr so far:\n${err}`);

  let line;
  try {
    line = await waitLog(/"msg":"listening"/, startTimeout);
  } catch (e) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
    throw e;
  }
  const rec = JSON.parse(line);
  assert.equal(typeof rec.addr, 'string', `listening line has an addr: ${line}`);
  const port = Number(rec.addr.split(':').pop());
  assert.ok(port > 0, `listening line has a port: ${line}`);
  return { proc, port, exited, waitLog, stderr: () => err, stdout: () => out };
}

/**
 * Starts `trellis registry --listen 127.0.0.1:0 --log-format json --data-dir <fresh dir>`.
 * Returns a handle {port, dataDir, proc, pid, base, url(p), stderr(), waitLog(re),
 * stop({signal}), restart({signal}), kill(), cleanup()}. port/proc/base change on restart.
 *   stop()                      SIGTERM; asserts exit 0 and (sanitized build) no reports.
 *   stop({signal:'SIGKILL'})    kill -9; asserts it died of SIGKILL.
 *   restart({signal})           stop (SIGTERM by default) then start on the same data dir.
 *   cleanup()                   kills whatever runs and removes the data dir (for after()).
 */
export async function startRegistry({ args = [], dataDir, startTimeout = ms(10000) } = {}) {
  const ownDir = !dataDir;
  const dir = dataDir || mkdtempSync(path.join(os.tmpdir(), 'trellis-registry-'));
  let cur;
  try {
    cur = await spawnRegistry(dir, args, startTimeout);
  } catch (e) {
    if (ownDir) rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  let stopped = null;
  const reg = {
    dataDir: dir,
    get port() { return cur.port; },
    get proc() { return cur.proc; },
    get pid() { return cur.proc.pid; },
    get exited() { return cur.exited; },
    get base() { return `http://127.0.0.1:${cur.port}`; },
    url(p) { return `http://127.0.0.1:${cur.port}${p}`; },
    stderr: () => cur.stderr(),
    waitLog: (re, timeout) => cur.waitLog(re, timeout),
    /** Asserts stderr has no sanitizer report (only meaningful on the sanitized build). */
    checkSanitizer() {
      const bad = cur.stderr().split('\n').filter((l) => SANITIZER_RE.test(l));
      assert.deepEqual(bad, [], `sanitizer reports in trellis registry stderr:\n${cur.stderr()}`);
    },
    async stop({ signal = 'SIGTERM', timeout = ms(15000) } = {}) {
      const { proc, exited } = cur;
      if (stopped) signal = stopped.signal; // already stopping: check against the first signal
      else {
        stopped = { signal };
        stopped.done = (async () => {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
          try {
            return await withDeadline(exited, timeout, `trellis registry exit after ${signal}`);
          } catch (e) {
            proc.kill('SIGKILL');
            await exited;
            throw e;
          }
        })();
      }
      const res = await stopped.done;
      if (signal === 'SIGKILL') {
        assert.deepEqual(res, { code: null, signal: 'SIGKILL' }, `trellis registry killed; stderr:\n${cur.stderr()}`);
      } else {
        assert.deepEqual(res, { code: 0, signal: null }, `trellis registry exit status after ${signal}; stderr:\n${cur.stderr()}`);
        if (SANITIZED) reg.checkSanitizer();
      }
      return res;
    },
    async restart({ signal = 'SIGTERM' } = {}) {
      await reg.stop({ signal });
      cur = await spawnRegistry(dir, args, startTimeout);
      stopped = null;
      return reg;
    },
    /** Kills without checks; for cleanup after a failed test. */
    kill() {
      const { proc } = cur;
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    },
    /** Kills anything still running, waits for it, removes the data dir if we made it. */
    async cleanup() {
      reg.kill();
      await cur.exited;
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return reg;
}

/**
 * fetch() against the registry with a deadline. Returns {status, headers, text, body (Buffer),
 * json (parsed when the body parses), index (X-Consul-Index as a Number or undefined), elapsed}.
 */
export async function call(reg, method, p, { body, timeout = ms(5000), signal } = {}) {
  const started = Date.now();
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error(`deadline of ${timeout} ms passed: ${method} ${p}`)), timeout);
  const onAbort = () => ac.abort(signal.reason);
  if (signal) signal.addEventListener('abort', onAbort, { once: true });
  try {
    const res = await fetch(reg.url(p), { method, body, signal: ac.signal });
    const buf = Buffer.from(await res.arrayBuffer());
    const elapsed = Date.now() - started;
    const text = buf.toString('utf8');
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    const idx = res.headers.get('x-consul-index');
    return {
      status: res.status,
      headers: res.headers,
      body: buf,
      text,
      json,
      index: idx === null ? undefined : Number(idx),
      elapsed,
    };
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener('abort', onAbort);
  }
}

/** Asserts a trellis problem+json answer with this status; returns the parsed problem. */
export function assertProblemJson(res, status, slug) {
  assert.equal(res.status, status, `status; body: ${res.text}`);
  assert.equal(res.headers.get('content-type'), 'application/problem+json', `content-type; body: ${res.text}`);
  const p = res.json;
  assert.ok(p && typeof p === 'object', `problem body is JSON: ${res.text}`);
  assert.equal(p.status, status);
  assert.match(p.type, /^https:\/\/trellis\.dev\/problems\/[a-z0-9-]+$/);
  if (slug) assert.equal(p.type, `https://trellis.dev/problems/${slug}`);
  assert.equal(typeof p.title, 'string');
  assert.ok(p.title.length > 0, 'problem has a title');
  assert.equal(typeof p.detail, 'string');
  assert.ok(p.detail.length > 0, 'problem has a detail');
  return p;
}
