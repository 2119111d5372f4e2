// Helpers for the `trellis up` end-to-end tests: write a topology into a temp dir with
// every port free, run `trellis up` on it, wait for "all services ready", read the
// control-plane API and the process tree (every wait has a deadline).
import { spawn } from 'node:child_process';
import http from 'node:http';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { BIN, SANITIZED, ms, sleep, withDeadline } from './trellis.mjs';
import { freePort, request, until } from './gateway.mjs';

const SANITIZER_RE = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/;

/** A service that runs this trellis binary as `trellis echo` on its PORT. */
export function echoService(extra = {}) {
  return { command: 'trellis', args: ['echo', '--listen', '127.0.0.1:${PORT}'], ...extra };
}

/**
 * Fills in a topology object: control_plane on free ports with data_dir in `dir`, and the
 * gateway's listen on a free port with the admin API off (unless given). Returns
 * {topology, gatewayPort, apiPort}.
 */
async function complete(topology, dir) {
  const t = structuredClone(topology);
  const apiPort = await freePort();
  t.control_plane = {
    listen: `127.0.0.1:${apiPort}`,
    otlp: `127.0.0.1:${await freePort()}`,
    zipkin: `127.0.0.1:${await freePort()}`,
    data_dir: path.join(dir, 'data'),
    ...(t.control_plane || {}),
  };
  let gatewayPort = 0;
  if (t.gateway) {
    gatewayPort = await freePort();
    t.gateway = { listen: `127.0.0.1:${gatewayPort}`, admin: { listen: 'off' }, ...t.gateway };
  }
  return { topology: t, gatewayPort, apiPort };
}

/**
 * Writes `topology` (an object, written as JSON — YAML's subset) to <tmp>/topology.yaml and
 * starts `trellis up FILE --log-format json`, then waits for `"msg":"up: all services ready"`.
 * Returns {dir, file, proc, pid, apiPort, apiUrl, gatewayPort, readyMs (spawn to the
 * all-ready line, measured here), readyLine (parsed), logs() (stderr), stdout(), waitLog(re),
 * api(path), services(), instance(id), passing(svc), exited, stop(), kill(), cleanup()}.
 */
export async function startUp(topology, { args = [], startTimeout = ms(15000), waitReady = true, env = {} } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-up-'));
  const { topology: full, gatewayPort, apiPort } = await complete(topology, dir);
  const file = path.join(dir, 'topology.yaml');
  writeFileSync(file, JSON.stringify(full, null, 2) + '\n');
  const t0 = process.hrtime.bigint();
  const proc = spawn(BIN, ['up', file, '--log-format', 'json', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1', ...env },
  });
  let err = '';
  let out = '';
  const waiters = new Set();
  const exited = new Promise((resolve) => { proc.on('exit', (code, signal) => resolve({ code, signal })); });
  proc.on('error', (e) => { err += `spawn error: ${e.message}\n`; });
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; for (const w of [...waiters]) w(); });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { err += d; for (const w of [...waiters]) w(); });

  /** Resolves with the first log line matching re (seen already or later). */
  const waitLog = (re, timeout = ms(10000)) => withDeadline(new Promise((resolve, reject) => {
    const check = () => {
      const line = err.split('\n').find((l) => re.test(l));
      if (line !== undefined) { waiters.delete(check); resolve(line); }
    };
    waiters.add(check);
    exited.then(({ code, signal }) => {
      check();
      waiters.delete(check);
      reject(new Error(`trellis up exited (code ${code}, signal ${signal}) before logging ${re}; stderr:\n${err.slice(-6000)}`));
    });
    check();
  }), timeout, `trellis up log line ${re}; stderr so far:\n${err.slice(-6000)}`);

  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  const kill = () => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); };
  let readyMs = null;
  let readyLine = null;
  if (waitReady) {
    try {
      const line = await waitLog(/"msg":"up: all services ready"/, startTimeout);
      readyMs = Number(process.hrtime.bigint() - t0) / 1e6;
      readyLine = JSON.parse(line);
    } catch (e) {
      const pids = childPids(proc.pid);
      kill();
      for (const p of pids) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
      await exited;
      cleanup();
      throw e;
    }
  }

  const api = (p, opts) => request(apiPort, p, opts);
  let stopped = null;
  const up = {
    dir, file, proc, pid: proc.pid, apiPort, apiUrl: `http://127.0.0.1:${apiPort}`, gatewayPort,
    readyMs, readyLine, exited, waitLog, api, kill, cleanup,
    logs: () => err,
    stdout: () => out,
    /** GET /api/services (asserts 200). */
    async services() {
      const r = await api('/api/services');
      assert.equal(r.status, 200, `/api/services: ${r.text}`);
      return r.json;
    },
    /** One instance record of /api/services by id ("svc-0"). */
    async instance(id) {
      for (const s of await up.services()) for (const i of s.instances) if (i.id === id) return i;
      throw new Error(`no instance ${id} in /api/services`);
    },
    /** Service IDs in /v1/health/service/<svc>?passing, sorted. */
    async passing(svc) {
      const r = await api(`/v1/health/service/${svc}?passing`);
      assert.equal(r.status, 200, `/v1/health/service/${svc}?passing: ${r.text}`);
      return r.json.map((e) => e.Service.ID).sort();
    },
    /** SIGTERM (or `signal`), wait for the exit within the deadline (SIGKILL after it). */
    async stop({ timeout = ms(20000), signal = 'SIGTERM', expect = { code: 0, signal: null } } = {}) {
      if (!stopped) {
        stopped = (async () => {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
          try {
            return await withDeadline(exited, timeout, `trellis up exit after ${signal}`);
          } catch (e) {
            kill();
            await exited;
            throw e;
          }
        })();
      }
      const res = await stopped;
      if (expect) assert.deepEqual(res, expect, `trellis up exit status; stderr:\n${err.slice(-6000)}`);
      if (SANITIZED) {
        const bad = err.split('\n').filter((l) => SANITIZER_RE.test(l));
        assert.deepEqual(bad, [], 'sanitizer reports in trellis up stderr');
      }
      return res;
    },
  };
  return up;
}

/** Parent pid of `pid` from /proc/PID/stat, or null when it is gone. */
export function ppidOf(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may contain spaces: read after the last ')'.
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(rest[1]);
  } catch {
    return null;
  }
}

/** Whether `pid` exists and is not a zombie. */
export function alive(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = s.slice(s.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Pids of the live (non-zombie) direct children of `pid`, read from /proc/ * /stat. */
export function childPids(pid) {
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const p = Number(name);
    if (ppidOf(p) === pid && alive(p)) out.push(p);
  }
  return out.sort((a, b) => a - b);
}

/** Waits until none of `pids` is alive; resolves the ones still alive at the deadline ([] = all gone). */
export async function waitGone(pids, timeout) {
  const end = Date.now() + timeout;
  for (;;) {
    const left = pids.filter(alive);
    if (!left.length || Date.now() > end) return left;
    await sleep(25);
  }
}

/** Runs `trellis up` with args to completion; resolves {code, signal, stdout, stderr}. */
export function runUp(args, { timeout = ms(10000) } = {}) {
  return runTrellis(['up', ...args], { timeout });
}

/** Runs `trellis ARGS…` to its end (deadline: SIGKILL); resolves {code, signal, stdout, stderr, pid}. */
export function runTrellis(args, { timeout = ms(10000) } = {}) {
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  let out = '';
  let err = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { err += d; });
  return withDeadline(new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal, stdout: out, stderr: err, pid: proc.pid }));
  }), timeout, `trellis ${args.join(' ')}`).catch((e) => { proc.kill('SIGKILL'); throw e; });
}

/** Writes text to <tmp>/<name>; returns {file, dir, cleanup()}. */
export function writeTopology(text, name = 'topology.yaml') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-up-bad-'));
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return { file, dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export { freePort, request, until };

/**
 * Runs `clients` concurrent keep-alive clients doing GET `p` on the gateway until stop();
 * stop() resolves {total, ok, non2xx, errors, samples} (samples: the first failures).
 */
export function startLoad(port, p, { clients = 16 } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  const st = { total: 0, ok: 0, non2xx: 0, errors: 0, samples: [] };
  let running = true;
  const one = async () => {
    while (running) {
      st.total++;
      try {
        const r = await request(port, p, { agent, timeout: ms(5000) });
        if (r.status >= 200 && r.status < 300) st.ok++;
        else {
          st.non2xx++;
          if (st.samples.length < 10) st.samples.push(`${r.status} ${r.headers['x-trellis-error'] || ''} ${r.text.slice(0, 200)}`);
        }
      } catch (e) {
        st.errors++;
        if (st.samples.length < 10) st.samples.push(`socket error: ${e.code || ''} ${e.message}`);
      }
    }
  };
  const done = Promise.all(Array.from({ length: clients }, one));
  return {
    stats: st,
    async stop() {
      running = false;
      await done;
      agent.destroy();
      return st;
    },
  };
}

