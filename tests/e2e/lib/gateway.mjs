// Helpers for the gateway end-to-end tests: write a config to a temp dir, run
// `trellis gateway` on free ports, run `trellis echo` upstreams, and speak HTTP with
// node's client (every wait has a deadline).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { BIN, SANITIZED, ms, sleep, withDeadline, startEcho } from './trellis.mjs';

export { BIN, SANITIZED, SLOW, ms, sleep, withDeadline, startEcho } from './trellis.mjs';

const SANITIZER_RE = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/;

/** A config object is written as JSON (YAML's subset); a string is written as-is. */
function render(config) {
  return typeof config === 'string' ? config : JSON.stringify(config, null, 2) + '\n';
}

/**
 * Writes `config` to <tmpdir>/gateway.yaml and starts
 * `trellis gateway -c FILE --listen 127.0.0.1:0 --admin 127.0.0.1:0 --workers 2 --log-format json`,
 * reading the bound addresses from the "listening" log line (`addr`, `admin`).
 * Returns {port, adminPort, file, dir, url(p), adminUrl(p), write(config), reload(), hup(),
 * stderr(), stdout(), waitLog(re), stop(), kill(), cleanup()}.
 */
export async function startGateway(config, { workers = 2, args = [], startTimeout = ms(10000) } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-gateway-'));
  const file = path.join(dir, 'gateway.yaml');
  writeFileSync(file, render(config));
  const argv = ['gateway', '-c', file, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0',
    '--workers', String(workers), '--log-format', 'json', ...args];
  const proc = spawn(BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let out = '';
  const waiters = new Set();
  const exited = new Promise((resolve) => { proc.on('exit', (code, signal) => resolve({ code, signal })); });
  proc.on('error', (e) => { err += `spawn error: ${e.message}\n`; });
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; for (const w of [...waiters]) w(); });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { err += d; for (const w of [...waiters]) w(); });
  const waitLog = (re, timeout = ms(5000)) => withDeadline(new Promise((resolve, reject) => {
    const check = () => {
      const line = (err + out).split('\n').find((l) => re.test(l));
      if (line !== undefined) { waiters.delete(check); resolve(line); }
    };
    waiters.add(check);
    exited.then(({ code, signal }) => {
      check();
      waiters.delete(check);
      reject(new Error(`trellis gateway exited (code ${code}, signal ${signal}) before logging ${re}; stderr:\n${err}`));
    });
    check();
  }), timeout, `trellis gateway log line ${re}; stderr so far:\n${err}`);

  let line;
  try {
    line = await waitLog(/"msg":"listening"/, startTimeout);
  } catch (e) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const rec = JSON.parse(line);
  const port = Number(String(rec.addr).split(':').pop());
  const adminPort = Number(String(rec.admin).split(':').pop());
  assert.ok(port > 0 && adminPort > 0, `listening line has addr and admin: ${line}`);

  let stopped = null;
  const gw = {
    port, adminPort, file, dir, proc, pid: proc.pid, exited, waitLog,
    stderr: () => err,
    stdout: () => out,
    url: (p) => `http://127.0.0.1:${port}${p}`,
    adminUrl: (p) => `http://127.0.0.1:${adminPort}${p}`,
    /** Rewrites the config file (a reload still has to be triggered, or the watcher picks it up). */
    write(cfg) { writeFileSync(file, render(cfg)); },
    /** POST /admin/reload; resolves {status, json, text, headers}. */
    reload() { return request(adminPort, '/admin/reload', { method: 'POST' }); },
    hup() { proc.kill('SIGHUP'); },
    admin(p) { return request(adminPort, p); },
    async stop({ timeout = ms(15000) } = {}) {
      if (!stopped) {
        stopped = (async () => {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
          try {
            return await withDeadline(exited, timeout, 'trellis gateway exit after SIGTERM');
          } catch (e) {
            proc.kill('SIGKILL');
            await exited;
            throw e;
          } finally {
            rmSync(dir, { recursive: true, force: true });
          }
        })();
      }
      const res = await stopped;
      assert.deepEqual(res, { code: 0, signal: null }, `trellis gateway exit status; stderr:\n${err.slice(-4000)}`);
      if (SANITIZED) {
        const bad = err.split('\n').filter((l) => SANITIZER_RE.test(l));
        assert.deepEqual(bad, [], 'sanitizer reports in trellis gateway stderr');
      }
      return res;
    },
    kill() { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); },
  };
  return gw;
}

/**
 * One HTTP request with node's client. Resolves {status, headers, body (Buffer), text,
 * json (when it parses), elapsed (ms), socket}. Rejects on socket errors or the deadline.
 */
export function request(port, p, { method = 'GET', headers = {}, body, agent = false, timeout = ms(10000), host = '127.0.0.1' } = {}) {
  const started = process.hrtime.bigint();
  let req;
  return withDeadline(new Promise((resolve, reject) => {
    req = http.request({ host, port, path: p, method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => {
        const buf = Buffer.concat(chunks);
        const text = buf.toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({
          status: res.statusCode, headers: res.headers, body: buf, text, json,
          elapsed: Number(process.hrtime.bigint() - started) / 1e6, socket: req.socket,
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body && typeof body.pipe === 'function') body.pipe(req);
    else req.end(body);
  }), timeout, `${method} 127.0.0.1:${port}${p}`).catch((e) => { if (req) req.destroy(); throw e; });
}

/** Asserts a gateway problem+json answer: status, `x-trellis-error: reason`, a problem body. */
export function assertGatewayError(res, status, reason) {
  assert.equal(res.status, status, `status (expected ${status} ${reason}); headers ${JSON.stringify(res.headers)}; body: ${res.text}`);
  assert.equal(res.headers['x-trellis-error'], reason, `x-trellis-error; body: ${res.text}`);
  assert.equal(res.headers['content-type'], 'application/problem+json', `content-type; body: ${res.text}`);
  const p = res.json;
  assert.ok(p && typeof p === 'object', `problem body is JSON: ${res.text}`);
  assert.equal(p.status, status);
  assert.equal(typeof p.type, 'string');
  assert.equal(typeof p.title, 'string');
  assert.equal(typeof p.detail, 'string');
  return p;
}

/** A port on 127.0.0.1 that nothing listens on (bound then released). */
export async function freePort() {
  return withDeadline(new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  }), ms(5000), 'free port');
}

/** Starts n `trellis echo --workers 1` processes. */
export async function startEchoes(n, args = []) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(await startEcho(['--workers', '1', ...args]));
  return out;
}

/** Reads `trellis_echo_requests_total{endpoint="<endpoint>"}` from an echo's /metrics. */
export async function echoCount(echo, endpoint) {
  const res = await request(echo.port, '/metrics');
  assert.equal(res.status, 200);
  const re = new RegExp(`^trellis_echo_requests_total\\{endpoint="${endpoint}"\\} (\\d+)`, 'm');
  const m = re.exec(res.text);
  return m ? Number(m[1]) : 0;
}

/** Runs `fn(i)` for i in [0, n) with at most `concurrency` in flight; returns results in order. */
export async function pool(n, concurrency, fn) {
  const results = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      try { results[i] = await fn(i); } catch (e) { results[i] = { error: e }; }
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
  return results;
}

/** Polls `fn` until it returns a truthy value or the deadline passes (then throws `what`). */
export async function until(fn, { timeout = ms(10000), every = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await fn(); } catch (e) { last = e; }
    if (last && !(last instanceof Error)) return last;
    if (Date.now() > end) throw new Error(`deadline of ${timeout} ms passed waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    await sleep(every);
  }
}

/** Runs `trellis gateway` with args to completion; resolves {code, signal, stdout, stderr}. */
export function runGateway(args, { timeout = ms(10000) } = {}) {
  const proc = spawn(BIN, ['gateway', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { err += d; });
  return withDeadline(new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal, stdout: out, stderr: err }));
  }), timeout, `trellis gateway ${args.join(' ')}`).catch((e) => { proc.kill('SIGKILL'); throw e; });
}

/** Writes a file into a fresh temp dir; returns {file, dir, cleanup()}. */
export function tempFile(name, text) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-gwcfg-'));
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return { file, dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export { sleep as delay };
