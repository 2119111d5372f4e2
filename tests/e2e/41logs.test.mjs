// Central logs over the wire: `trellis logs serve` (the store and its /api/logs API) and the
// `trellis logs` client, including follow (-f) and restarts on the same data directory.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BIN, SANITIZED, ms, sleep, withDeadline } from './lib/trellis.mjs';

const SANITIZER_RE = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/;

/** Runs `trellis logs serve` on a free port and waits for its "listening" line. */
async function startStore(dataDir) {
  const proc = spawn(BIN, ['logs', 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir,
    '--log-format', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  proc.stderr.setEncoding('utf8');
  const listening = new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      err += d;
      const line = err.split('\n').find((l) => l.includes('"msg":"listening"'));
      if (line) resolve(JSON.parse(line));
    });
    exited.then(({ code }) => reject(new Error(`trellis logs serve exited ${code}: ${err}`)));
  });
  const rec = await withDeadline(listening, ms(10000), 'trellis logs serve listening');
  const base = `http://${rec.addr}`;
  return {
    base, proc, exited, stderr: () => err,
    async stop(signal = 'SIGTERM') {
      proc.kill(signal);
      const r = await withDeadline(exited, ms(10000), 'trellis logs serve exit');
      if (signal === 'SIGTERM') assert.equal(r.code, 0, `exit code; stderr:\n${err}`);
      if (SANITIZED) assert.doesNotMatch(err, SANITIZER_RE);
      return r;
    },
  };
}

/** Runs the `trellis logs` client to completion: {code, stdout, stderr}. */
function runCli(args, { env = {} } = {}) {
  return new Promise((resolve) => {
    const p = spawn(BIN, ['logs', ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

async function post(store, body, query = '') {
  const r = await fetch(`${store.base}/api/logs${query}`, { method: 'POST', body });
  return { status: r.status, json: await r.json() };
}

async function get(store, query) {
  const r = await fetch(`${store.base}/api/logs${query}`);
  const text = await r.text();
  return { status: r.status, type: r.headers.get('content-type'), json: JSON.parse(text), text };
}

describe('trellis logs', () => {
  let dir;
  let store;
  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-logs-'));
    store = await startStore(dir);
  });
  after(async () => {
    if (store && store.proc.exitCode === null) await store.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('POST takes plain and JSON lines; GET filters by service, correlation_id and q', async () => {
    const ndjson = [
      'plain text from orders',
      JSON.stringify({ ts: '2026-11-22T10:00:00Z', level: 'warn', msg: 'stock low', correlationId: 'corr-1', traceId: 'trace-1' }),
    ].join('\n');
    const r1 = await post(store, ndjson, '?service=orders&instance=o-1');
    assert.equal(r1.status, 200);
    assert.equal(r1.json.accepted, 2);
    assert.equal(r1.json.persisted, true);
    const r2 = await post(store, JSON.stringify([
      { service: 'payments', instance: 'p-1', level: 'error', message: 'card declined', correlation_id: 'corr-1' },
      { service: 'payments', message: 'unrelated', correlation_id: 'corr-2' },
    ]));
    assert.equal(r2.status, 200);
    assert.equal(r2.json.accepted, 2);

    const bySvc = await get(store, '?service=orders');
    assert.equal(bySvc.status, 200);
    assert.match(bySvc.type, /^application\/json/);
    assert.deepEqual(bySvc.json.lines.map((l) => l.message), ['stock low', 'plain text from orders']);
    const line = bySvc.json.lines[0];
    assert.deepEqual(Object.keys(line).sort(),
      ['correlation_id', 'fields', 'instance', 'level', 'message', 'seq', 'service', 'trace_id', 'ts']);
    assert.equal(line.ts, '2026-11-22T10:00:00.000000000Z');
    assert.equal(line.level, 'warn');
    assert.equal(line.instance, 'o-1');
    assert.equal(line.trace_id, 'trace-1');
    assert.equal(line.fields.msg, 'stock low');
    assert.equal(bySvc.json.lines[1].fields, null);

    const byCorr = await get(store, '?correlation_id=corr-1&order=oldest');
    assert.deepEqual(byCorr.json.lines.map((l) => `${l.service}:${l.message}`),
      ['orders:stock low', 'payments:card declined']);
    const byQ = await get(store, '?q=CARD');
    assert.deepEqual(byQ.json.lines.map((l) => l.message), ['card declined']);
    assert.ok(Number.isInteger(byQ.json.next));
  });

  test('bad query values answer 400 problem+json saying what to fix', async () => {
    for (const q of ['?limit=0', '?since=yesterday', '?level=loud', '?order=sideways']) {
      const r = await get(store, q);
      assert.equal(r.status, 400, q);
      assert.match(r.type, /^application\/problem\+json/);
      assert.match(r.json.detail, /use /, `${q}: ${r.text}`);
    }
    const big = await fetch(`${store.base}/api/logs`, { method: 'POST', body: 'x'.repeat(2 * 1024 * 1024) })
      .then((r) => r.status, () => 413);
    assert.equal(big, 413);
  });

  test('trellis logs --correlation-id prints TIME LEVEL service/instance message', async () => {
    const r = await runCli(['--url', store.base, '--correlation-id', 'corr-1']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 2, r.stdout);
    assert.match(lines[0], /^2026-11-22T10:00:00\.000Z WARN  orders\/o-1 stock low$/);
    assert.match(lines[1], /^\S+Z ERROR payments\/p-1 card declined$/);
    assert.doesNotMatch(r.stdout, /\x1b\[/, 'no colour when stdout is not a TTY');
    // The request's trace is named, so one correlation ID leads to the trace as well.
    assert.match(r.stderr, /trace trace-1: see it with 'trellis trace trace-1'/);
    const j = await runCli(['--url', store.base, '--correlation-id', 'corr-1', '--json']);
    assert.equal(j.code, 0);
    assert.deepEqual(j.stdout.trim().split('\n').map((l) => JSON.parse(l).message), ['stock low', 'card declined']);
  });

  test('the store logs its own lines too', async () => {
    const r = await get(store, '?service=trellis&q=listening');
    assert.equal(r.json.lines.length, 1, r.text);
  });

  test('trellis logs -f prints a new line within 1 s', async () => {
    const p = spawn(BIN, ['logs', '-f', '--url', store.base, '--service', 'follow-me']);
    let out = '';
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (d) => { out += d; });
    const exited = new Promise((resolve) => p.on('exit', (code, signal) => resolve({ code, signal })));
    try {
      await sleep(ms(400)); // let it print the backlog and park its long-poll
      const t0 = Date.now();
      await post(store, 'a fresh line', '?service=follow-me&instance=f-1');
      await withDeadline((async () => {
        while (!out.includes('a fresh line')) await sleep(10);
      })(), ms(1000), `follower output; so far: ${out}`);
      assert.ok(Date.now() - t0 < ms(1000));
      assert.match(out, /INFO  follow-me\/f-1 a fresh line\n/);
    } finally {
      p.kill('SIGINT');
    }
    const r = await withDeadline(exited, ms(5000), 'trellis logs -f exits on SIGINT');
    assert.equal(r.code, 0);
  });

  test('the follow API long-polls and every wait ends at its deadline', async () => {
    const now = await get(store, '?limit=1');
    const t0 = Date.now();
    const r = await get(store, `?follow=1&after=${now.json.next}&wait=200ms&service=nobody`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.lines, []);
    assert.equal(r.json.next, now.json.next);
    assert.ok(Date.now() - t0 >= 180, 'waited');
  });

  test('lines survive a restart and kill -9 after a 200', async () => {
    const r = await post(store, 'survives kill -9', '?service=durable');
    assert.equal(r.status, 200);
    assert.equal(r.json.persisted, true);
    await store.stop('SIGKILL');
    store = await startStore(dir);
    const after1 = await get(store, '?service=durable');
    assert.deepEqual(after1.json.lines.map((l) => l.message), ['survives kill -9']);
    await store.stop();
    store = await startStore(dir);
    const all = await get(store, '?correlation_id=corr-1&order=oldest');
    assert.deepEqual(all.json.lines.map((l) => l.message), ['stock low', 'card declined']);
    const cli = await runCli(['--url', store.base, '--service', 'durable']);
    assert.match(cli.stdout, /durable survives kill -9/);
  });

  test('--help and usage errors', async () => {
    const h = await runCli(['--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout, /--correlation-id/);
    assert.match(h.stdout, /Example:/);
    const hs = await runCli(['serve', '--help']);
    assert.equal(hs.code, 0);
    assert.match(hs.stdout, /--data-dir/);
    const bad = await runCli(['--since', 'whenever']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--since/);
    const down = await runCli(['--url', 'http://127.0.0.1:1']);
    assert.equal(down.code, 1);
    assert.match(down.stderr, /cannot reach/);
  });
});
