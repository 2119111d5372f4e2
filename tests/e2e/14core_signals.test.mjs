// Signals: SIGTERM drains in-flight requests and stops accepting, a second SIGINT
// forces, the grace period bounds the drain, SIGHUP does not stop the server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  startEcho, connect, parseResponses, parseAll, rawExchange, get, ms, sleep, withDeadline,
} from './lib/trellis.mjs';

/** Sends one request on a new connection; resolves {data, closed} once the server closes or the deadline passes. */
async function inflight(port, bytes, timeout) {
  const s = await connect(port);
  let data = '';
  s.on('data', (d) => { data += d.toString('latin1'); });
  s.on('error', () => {});
  const done = new Promise((resolve) => {
    const timer = setTimeout(() => { resolve({ data, closed: false }); s.destroy(); }, timeout);
    s.on('close', () => { clearTimeout(timer); resolve({ data, closed: true }); });
  });
  s.write(bytes);
  return { sock: s, done };
}

/** Resolves with the error code of a connection attempt ('connected' if it succeeded). */
function tryConnect(port) {
  return withDeadline(new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('connect', () => { s.destroy(); resolve('connected'); });
    s.on('error', (e) => resolve(e.code));
  }), ms(3000), 'connection attempt');
}

test('SIGTERM under load: 200 in-flight /delay/800 requests all complete, new connections are refused', { timeout: ms(30000) }, async (t) => {
  const srv = await startEcho(['--workers', '2', '--grace', '10s']);
  try {
    const reqs = [];
    for (let i = 0; i < 200; i++) reqs.push(inflight(srv.port, get(`/delay/800?i=${i}`), ms(8000)));
    const open = await withDeadline(Promise.all(reqs), ms(5000), '200 connections');
    await sleep(200);
    const t0 = Date.now();
    srv.proc.kill('SIGTERM');
    await sleep(300);
    assert.equal(srv.proc.exitCode, null, 'still running while requests are in flight');
    const refused = await tryConnect(srv.port);
    assert.equal(refused, 'ECONNREFUSED', 'a new connection after SIGTERM is refused');

    const results = await Promise.all(open.map((o) => o.done));
    let ok = 0;
    results.forEach((r, i) => {
      assert.equal(r.closed, true, `connection ${i} closed after its answer`);
      const res = parseAll(r.data);
      assert.equal(res.length, 1, `connection ${i}: one answer`);
      assert.equal(res[0].status, 200, `connection ${i}`);
      assert.deepEqual(JSON.parse(res[0].body), { delay_ms: 800 });
      assert.equal(res[0].headers.connection, 'close', `connection ${i}: the answer says Connection: close`);
      ok++;
    });
    assert.equal(ok, 200);
    const { code, signal } = await withDeadline(srv.exited, ms(9000), 'exit within the grace period');
    const took = Date.now() - t0;
    t.diagnostic(`exited ${took} ms after SIGTERM`);
    assert.deepEqual({ code, signal }, { code: 0, signal: null });
    assert.ok(took < 10000, `exited before the 10 s grace ended (${took} ms)`);
    await srv.waitLog(/"msg":"draining"/);
    await srv.waitLog(/"msg":"stopped"/);
  } finally {
    srv.kill();
    await srv.stop().catch(() => {});
  }
});

test('SIGTERM closes idle keep-alive connections at once and exits promptly', { timeout: ms(15000) }, async () => {
  const srv = await startEcho(['--workers', '2']);
  try {
    const s = await connect(srv.port);
    let data = '';
    s.on('data', (d) => { data += d.toString('latin1'); });
    const closed = new Promise((r) => s.on('close', r));
    s.write(get('/'));
    await withDeadline((async () => { while (!data.endsWith('hello\n')) await sleep(10); })(), ms(3000), 'answer');
    const t0 = Date.now();
    srv.proc.kill('SIGTERM');
    await withDeadline(closed, ms(2000), 'idle connection closed after SIGTERM');
    assert.equal(parseAll(data).length, 1, 'no bytes on the idle close');
    await withDeadline(srv.exited, ms(2000), 'exit');
    assert.ok(Date.now() - t0 < ms(2000));
    await srv.stop();
  } finally {
    srv.kill();
  }
});

test('SIGTERM with a request longer than --grace 1s: the process still exits when grace ends', { timeout: ms(15000) }, async (t) => {
  const srv = await startEcho(['--workers', '1', '--grace', '1s']);
  try {
    const o = await inflight(srv.port, get('/delay/10000'), ms(8000));
    await sleep(200);
    const t0 = Date.now();
    srv.proc.kill('SIGTERM');
    const r = await o.done;
    const { code, signal } = await withDeadline(srv.exited, ms(5000), 'exit after grace');
    const took = Date.now() - t0;
    t.diagnostic(`exited ${took} ms after SIGTERM with --grace 1s, exit code ${code}`);
    assert.equal(r.closed, true, 'the unfinished request\'s connection is closed');
    assert.equal(parseResponses(r.data).responses.length, 0, 'no answer for the unfinished request');
    assert.equal(signal, null, 'exited by itself, not killed');
    assert.equal(code, 0);
    assert.ok(took >= 900 && took < ms(3000), `exited ${took} ms after SIGTERM`);
  } finally {
    srv.kill();
  }
});

test('SIGINT twice forces a prompt exit despite a long in-flight request', { timeout: ms(15000) }, async (t) => {
  const srv = await startEcho(['--workers', '2', '--grace', '30s']);
  try {
    const o = await inflight(srv.port, get('/delay/20000'), ms(10000));
    await sleep(200);
    srv.proc.kill('SIGINT');
    await sleep(300);
    assert.equal(srv.proc.exitCode, null, 'the first SIGINT drains: still running');
    assert.equal(await tryConnect(srv.port), 'ECONNREFUSED', 'not accepting after the first SIGINT');
    const t0 = Date.now();
    srv.proc.kill('SIGINT');
    const { code, signal } = await withDeadline(srv.exited, ms(3000), 'exit after the second SIGINT');
    const took = Date.now() - t0;
    t.diagnostic(`exited ${took} ms after the second SIGINT, code ${code}`);
    assert.equal(signal, null, 'exited by itself, not killed by the signal');
    assert.equal(code, 0);
    assert.ok(took < ms(1000), `prompt (${took} ms)`);
    const r = await o.done;
    assert.equal(r.closed, true);
    assert.equal(r.data, '', 'the forced-off request gets no partial answer');
  } finally {
    srv.kill();
  }
});

test('SIGHUP does not stop the server: it logs a reload line and keeps serving', { timeout: ms(15000) }, async () => {
  const srv = await startEcho(['--workers', '2']);
  try {
    // A keep-alive connection opened before the signal keeps working after it.
    const s = await connect(srv.port);
    let data = '';
    s.on('data', (d) => { data += d.toString('latin1'); });
    s.write(get('/status/201'));
    await withDeadline((async () => { while (parseResponses(data).responses.length < 1) await sleep(10); })(), ms(3000), 'first answer');
    srv.proc.kill('SIGHUP');
    const line = await srv.waitLog(/reload/i, ms(3000));
    assert.equal(JSON.parse(line).level, 'info');
    await sleep(200);
    assert.equal(srv.proc.exitCode, null, 'still running');
    s.write(get('/status/202'));
    await withDeadline((async () => { while (parseResponses(data).responses.length < 2) await sleep(10); })(), ms(3000), 'second answer');
    assert.deepEqual(parseAll(data).map((r) => r.status), [201, 202]);
    s.destroy();
    const { data: fresh } = await rawExchange(srv.port, get('/', 'Connection: close\r\n'));
    assert.equal(parseAll(fresh)[0].body, 'hello\n');
    srv.proc.kill('SIGHUP');
    await sleep(200);
    assert.equal(srv.proc.exitCode, null, 'a second SIGHUP does not stop it either');
    await srv.stop();
  } finally {
    srv.kill();
  }
});
