// Helpers for end-to-end tests: run `trellis echo`, speak raw HTTP, read process RSS.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = path.dirname(fileURLToPath(import.meta.url));

export const BIN = process.env.TRELLIS_BIN || path.resolve(here, '../../../build/trellis');
export const SANITIZED = !!process.env.TRELLIS_SANITIZED;
/** Deadlines stretch under the sanitizer build, which runs several times slower. */
export const SLOW = SANITIZED ? 3 : 1;
export const ms = (n) => n * SLOW;

export const sleep = (n) => new Promise((r) => setTimeout(r, n));

/** Rejects with `what` if `promise` has not settled within `timeout` ms. */
export function withDeadline(promise, timeout, what) {
  let timer;
  const dl = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`deadline of ${timeout} ms passed: ${what}`)), timeout);
  });
  return Promise.race([promise, dl]).finally(() => clearTimeout(timer));
}

/**
 * Starts `trellis echo` on a free 127.0.0.1 port with JSON logs and waits for its
 * "listening" line. Returns {port, proc, pid, stderr(), waitLog(re), stop(), exited}.
 */
/**
 * Collects a child's stdout and stderr. Returns {exited (resolves {code, signal}),
 * waitLog(re, timeout) (the first stderr line matching re, already seen or future; rejects
 * at the deadline or when the child exits first), stderr(), stdout()}.
 */
export function watchOutput(proc, what = 'trellis') {
  let err = '';
  let out = '';
  const waiters = [];
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }));
  });
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    err += d;
    for (const w of waiters.slice()) w();
  });
  const waitLog = (re, timeout = ms(5000)) => withDeadline(new Promise((resolve, reject) => {
    const check = () => {
      const line = err.split('\n').find((l) => re.test(l));
      if (line !== undefined) {
        waiters.splice(waiters.indexOf(check), 1);
        resolve(line);
      }
    };
    waiters.push(check);
    exited.then(({ code, signal }) => {
      check();
      reject(new Error(`${what} exited (code ${code}, signal ${signal}) before logging ${re}; stderr:\n${err}`));
    });
    check();
  }), timeout, `${what} log line ${re}; stderr so far:\n${err}`);
  return { exited, waitLog, stderr: () => err, stdout: () => out };
}

export async function startEcho(args = [], { startTimeout = ms(5000) } = {}) {
  const argv = ['echo', '--listen', '127.0.0.1:0', '--log-format', 'json', ...args];
  const proc = spawn(BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  const { exited, waitLog, stderr, stdout } = watchOutput(proc);
  let line;
  try {
    line = await waitLog(/"msg":"listening"/, startTimeout);
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  const rec = JSON.parse(line);
  const port = Number(rec.addr.split(':').pop());
  assert.ok(port > 0, `listening line has a port: ${line}`);

  let stopped = null;
  const srv = {
    port,
    proc,
    pid: proc.pid,
    exited,
    waitLog,
    stderr,
    stdout,
    /** Asserts stderr has no sanitizer report (only meaningful on the sanitized build). */
    checkSanitizer() {
      const bad = stderr().split('\n').filter((l) => /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/.test(l));
      assert.deepEqual(bad, [], `sanitizer reports in trellis stderr:\n${stderr()}`);
    },
    /** SIGTERM, wait (SIGKILL after the deadline), assert a clean exit 0. */
    async stop({ timeout = ms(15000), signal = 'SIGTERM' } = {}) {
      if (!stopped) {
        stopped = (async () => {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
          let res;
          try {
            res = await withDeadline(exited, timeout, 'trellis exit after ' + signal);
          } catch (e) {
            proc.kill('SIGKILL');
            await exited;
            throw e;
          }
          return res;
        })();
      }
      const res = await stopped;
      assert.deepEqual(res, { code: 0, signal: null }, `trellis exit status; stderr:\n${stderr()}`);
      if (SANITIZED) srv.checkSanitizer();
      return res;
    },
    /** Kills without checks; for cleanup after a failed test. */
    kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    },
  };
  return srv;
}

/** Resident set size of a process in bytes, from /proc/PID/status (VmRSS). */
export function rssBytes(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(s);
  assert.ok(m, `VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** Samples RSS every `every` ms until stop() is called; stop() returns {max, samples}. */
export function sampleRss(pid, every = 200) {
  let max = rssBytes(pid);
  let samples = 1;
  const timer = setInterval(() => {
    try {
      max = Math.max(max, rssBytes(pid));
      samples++;
    } catch { /* process gone */ }
  }, every);
  timer.unref(); // never keeps a test file alive on its own
  return {
    stop() {
      clearInterval(timer);
      try { max = Math.max(max, rssBytes(pid)); samples++; } catch { /* gone */ }
      return { max, samples };
    },
  };
}

/** Connects a raw socket to 127.0.0.1:port (with a deadline). */
export function connect(port, timeout = ms(5000)) {
  return withDeadline(new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.removeListener('error', reject); resolve(s); });
    s.once('error', reject);
  }), timeout, `connect to 127.0.0.1:${port}`);
}

/**
 * Opens a socket, writes `bytes` (a string, Buffer or array of pieces, written with
 * `gap` ms between them), collects everything until the server closes or `timeout`
 * ms pass. Returns {data (latin1 string), closed, error, elapsed}.
 */
export async function rawExchange(port, bytes, { timeout = ms(5000), gap = 0, endAfterWrite = false } = {}) {
  const started = Date.now();
  const sock = await connect(port);
  const chunks = [];
  let error = null;
  const done = new Promise((resolve) => {
    let timer = setTimeout(() => { timer = null; resolve(false); }, timeout);
    sock.on('data', (d) => chunks.push(d));
    sock.on('error', (e) => { error = e; });
    sock.on('close', () => { if (timer) clearTimeout(timer); resolve(true); });
  });
  const pieces = Array.isArray(bytes) ? bytes : [bytes];
  (async () => {
    for (let i = 0; i < pieces.length; i++) {
      if (sock.destroyed) return;
      sock.write(typeof pieces[i] === 'string' ? Buffer.from(pieces[i], 'latin1') : pieces[i]);
      if (gap && i < pieces.length - 1) await sleep(gap);
    }
    if (endAfterWrite && !sock.destroyed) sock.end();
  })();
  const closed = await done;
  sock.destroy();
  return { data: Buffer.concat(chunks).toString('latin1'), closed, error, elapsed: Date.now() - started };
}

/** rawExchange returning only the bytes received. */
export async function rawRequest(port, bytes, opts) {
  return (await rawExchange(port, bytes, opts)).data;
}

/**
 * Parses a sequence of HTTP/1.1 responses from a latin1 string. Each is
 * {status, reason, version, headers (lowercased, last wins), rawHeaders [[name, value]], body}.
 * Bodies are framed by Content-Length, chunked encoding, or (otherwise) the rest of input.
 * `headMethods` lists, per response, whether it answers a HEAD (no body). Returns
 * {responses, rest} where rest is any unparsed tail (an incomplete response).
 */
export function parseResponses(data, { head = [] } = {}) {
  const responses = [];
  let pos = 0;
  while (pos < data.length) {
    const end = data.indexOf('\r\n\r\n', pos);
    if (end < 0) break;
    const lines = data.slice(pos, end).split('\r\n');
    const m = /^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$/.exec(lines[0]);
    if (!m) throw new Error(`not a status line at offset ${pos}: ${JSON.stringify(lines[0].slice(0, 80))}`);
    const headers = {};
    const rawHeaders = [];
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      if (i <= 0) throw new Error(`bad header line ${JSON.stringify(l)}`);
      const name = l.slice(0, i);
      const value = l.slice(i + 1).trim();
      rawHeaders.push([name, value]);
      headers[name.toLowerCase()] = value;
    }
    const status = Number(m[2]);
    let p = end + 4;
    let body = '';
    const isHead = head[responses.length] === true;
    if (status < 200 || status === 204 || status === 304 || isHead) {
      // no body
    } else if (/chunked/i.test(headers['transfer-encoding'] || '')) {
      let complete = false;
      for (;;) {
        const le = data.indexOf('\r\n', p);
        if (le < 0) break;
        const size = parseInt(data.slice(p, le), 16);
        if (Number.isNaN(size)) throw new Error(`bad chunk size ${JSON.stringify(data.slice(p, le))}`);
        if (size === 0) {
          const te = data.indexOf('\r\n\r\n', le);
          if (te < 0) break;
          p = te + 4;
          complete = true;
          break;
        }
        if (le + 2 + size + 2 > data.length) break;
        body += data.slice(le + 2, le + 2 + size);
        p = le + 2 + size + 2;
      }
      if (!complete) return { responses, rest: data.slice(pos) };
    } else if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      if (p + n > data.length) return { responses, rest: data.slice(pos) };
      body = data.slice(p, p + n);
      p += n;
    } else {
      body = data.slice(p);
      p = data.length;
    }
    responses.push({ version: m[1], status, reason: m[3] || '', headers, rawHeaders, body, end: p });
    pos = p;
  }
  return { responses, rest: data.slice(pos) };
}

/** Parses exactly the responses in data; asserts no leftover bytes. */
export function parseAll(data, opts) {
  const { responses, rest } = parseResponses(data, opts);
  assert.equal(rest, '', `unparsed bytes after ${responses.length} responses: ${JSON.stringify(rest.slice(0, 200))}`);
  return responses;
}

/** Asserts a response is the problem+json answer with this status and slug (or one of slugs). */
export function assertProblem(res, status, slug) {
  assert.ok(res, `expected a ${status} ${slug} response, got none`);
  assert.equal(res.status, status, `status; body: ${res.body}`);
  assert.equal(res.headers['content-type'], 'application/problem+json');
  const p = JSON.parse(res.body);
  if (Array.isArray(slug)) {
    assert.ok(slug.map((x) => `https://trellis.dev/problems/${x}`).includes(p.type), `problem type ${p.type} is one of ${slug}`);
  } else {
    assert.equal(p.type, `https://trellis.dev/problems/${slug}`);
  }
  assert.equal(p.status, status);
  assert.equal(typeof p.title, 'string');
  assert.ok(p.title.length > 0, 'problem has a title');
  assert.equal(typeof p.detail, 'string');
  assert.ok(p.detail.length > 0, 'problem has a detail');
  return p;
}

/** A minimal GET request. */
export function get(pathname, extra = '') {
  return `GET ${pathname} HTTP/1.1\r\nHost: t\r\n${extra}\r\n`;
}

/**
 * A keep-alive client over one raw socket: send(bytes) then next(n) to await the n
 * next complete responses. Useful to check that the same connection is reused.
 */
export async function openClient(port) {
  const sock = await connect(port);
  let buf = '';
  let closed = false;
  const wake = new Set();
  sock.on('data', (d) => { buf += d.toString('latin1'); for (const w of wake) w(); });
  sock.on('close', () => { closed = true; for (const w of wake) w(); });
  sock.on('error', () => {});
  const client = {
    sock,
    get closed() { return closed; },
    send(bytes) { sock.write(Buffer.from(bytes, 'latin1')); },
    /** Awaits n complete responses (head: flags per response for HEAD requests). */
    next(n = 1, { timeout = ms(5000), head } = {}) {
      return withDeadline(new Promise((resolve, reject) => {
        const check = () => {
          const { responses } = parseResponses(buf, { head });
          if (responses.length >= n) {
            wake.delete(check);
            buf = buf.slice(responses[n - 1].end);
            resolve(responses.slice(0, n));
          } else if (closed) {
            wake.delete(check);
            reject(new Error(`connection closed after ${responses.length} of ${n} responses; got ${JSON.stringify(buf.slice(0, 300))}`));
          }
        };
        wake.add(check);
        check();
      }), timeout, `${n} responses`);
    },
    /** Resolves true when the server closes the connection within timeout, else false. */
    waitClose(timeout = ms(5000)) {
      return new Promise((resolve) => {
        if (closed) return resolve(true);
        const t = setTimeout(() => { wake.delete(check); resolve(false); }, timeout);
        const check = () => { if (closed) { clearTimeout(t); wake.delete(check); resolve(true); } };
        wake.add(check);
      });
    },
    pending: () => buf,
    close() { sock.destroy(); },
  };
  return client;
}

