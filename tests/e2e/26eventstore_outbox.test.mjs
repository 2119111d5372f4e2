// End-to-end tests of the event store's push subscriptions (the outbox): delivery in order,
// retries with the same idempotency key, dead letters, filters, restarts after SIGKILL, and
// URLs naming a service found in the registry.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BIN, SANITIZED, ms, sleep, watchOutput, withDeadline } from './lib/trellis.mjs';
import { request, until } from './lib/gateway.mjs';
import { startStore } from './lib/eventstore.mjs';
import { startRegistry, call } from './lib/registry.mjs';

function api(store, method, p, body) {
  const text = body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body));
  return request(store.port, p, { method, body: text, headers: { 'content-type': 'application/json' },
    timeout: ms(10000) });
}

/**
 * A node HTTP receiver: records every POST ({path, key, type, event}) and answers with
 * `answer(rec)` (a status, or a promise of one); resolves {url(path), got, close()}.
 */
function startReceiver(answer = () => 200) {
  const got = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', async () => {
      const rec = {
        path: req.url,
        key: req.headers['idempotency-key'],
        type: req.headers['x-event-type'],
        ctype: req.headers['content-type'],
        event: JSON.parse(Buffer.concat(chunks).toString('utf8')),
      };
      got.push(rec);
      const status = await answer(rec);
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end('ok');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: (p) => `http://127.0.0.1:${server.address().port}${p}`,
    got,
    on: (p) => got.filter((r) => r.path === p),
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
  })));
}

async function append(store, stream, events) {
  const r = await api(store, 'POST', `/api/streams/${stream}`, events);
  assert.equal(r.status, 201, r.text);
  return r.json;
}

async function subscribe(store, def, status = 201) {
  const r = await api(store, 'POST', '/api/subscriptions', def);
  assert.equal(r.status, status, r.text);
  return r.json;
}

let dir;
let store;
let rx;

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-outbox-'));
  store = await startStore(dir);
  rx = await startReceiver((rec) => rx.answer(rec));
  rx.answer = () => 200;
});

after(async () => {
  if (store) await store.stop().catch(() => store.proc.kill('SIGKILL'));
  if (rx) await rx.close();
  rmSync(dir, { recursive: true, force: true });
});

test('every event arrives in order, exactly once, as the read API serves it', async () => {
  const s = await subscribe(store, { name: 'normal', stream: 'norm-1', url: rx.url('/normal') });
  assert.equal(s.name, 'normal');
  assert.equal(s.from, 'end');
  assert.equal(s.max_attempts, 10);
  await append(store, 'norm-1', [{ type: 'A', data: 1 }, { type: 'B', data: { x: 2 } }]);
  await append(store, 'norm-1', [{ type: 'C', data: 3, metadata: { m: true } }]);
  await append(store, 'norm-2', { type: 'A', data: 'other stream' });
  await append(store, 'norm-1', { type: 'D\r\nx-injected: 1', data: 4 });
  await until(() => rx.on('/normal').length >= 4, { timeout: ms(10000), what: '4 deliveries' });
  await sleep(ms(300));
  const got = rx.on('/normal');
  assert.equal(got.length, 4, 'no duplicate in the normal case');
  const read = await api(store, 'GET', '/api/streams/norm-1');
  assert.deepEqual(got.map((r) => r.event), read.json.events);
  assert.deepEqual(got.map((r) => r.type), ['A', 'B', 'C', 'D??x-injected: 1']);
  assert.equal(got[3].event.type, 'D\r\nx-injected: 1', 'the body keeps the type as it is');
  for (const r of got) {
    assert.equal(r.key, `normal:${r.event.position}`);
    assert.equal(r.ctype, 'application/json');
  }
  const st = await api(store, 'GET', '/api/subscriptions/normal');
  assert.equal(st.status, 200);
  await until(async () => (await api(store, 'GET', '/api/subscriptions/normal')).json.checkpoint
    >= got[3].event.position, { what: 'checkpoint' });
  assert.equal(st.json.dead_letters, 0);
  // The same definition again is 200; another one under the same name is 409.
  await subscribe(store, { name: 'normal', stream: 'norm-1', url: rx.url('/normal'), from: 'end' }, 200);
  const c = await api(store, 'POST', '/api/subscriptions', { name: 'normal', stream: 'norm-2', url: rx.url('/normal') });
  assert.equal(c.status, 409, c.text);
  const list = await api(store, 'GET', '/api/subscriptions');
  assert.ok(list.json.subscriptions.some((x) => x.name === 'normal'));
});

test('a receiver that fails 3 times gets the event on the 4th attempt, same key', async () => {
  let fails = 0;
  rx.answer = (rec) => (rec.path === '/flaky' && fails++ < 3 ? 503 : 200);
  await subscribe(store, { name: 'flaky', stream: 'flaky-1', url: rx.url('/flaky') });
  const a = await append(store, 'flaky-1', { type: 'A', data: 1 });
  await append(store, 'flaky-1', { type: 'B', data: 2 });
  await until(() => rx.on('/flaky').length >= 5, { timeout: ms(15000), what: 'retries' });
  await sleep(ms(200));
  const got = rx.on('/flaky');
  assert.equal(got.length, 5);
  assert.deepEqual(got.slice(0, 4).map((r) => r.key), Array(4).fill(`flaky:${a.position}`));
  assert.equal(got[4].type, 'B');
  rx.answer = () => 200;
});

test('always failing: dead letter after max_attempts, the next event flows, then retry', async () => {
  let healthy = false;
  rx.answer = (rec) => (rec.path === '/dead' && rec.type === 'Bad' && !healthy ? 500 : 200);
  await subscribe(store, { name: 'dead', stream: 'dead-1', url: rx.url('/dead'), max_attempts: 3 });
  const bad = await append(store, 'dead-1', { type: 'Bad', data: 1 });
  await append(store, 'dead-1', { type: 'Good', data: 2 });
  await until(() => rx.on('/dead').some((r) => r.type === 'Good'), { timeout: ms(15000), what: 'Good' });
  assert.equal(rx.on('/dead').filter((r) => r.type === 'Bad').length, 3, 'max_attempts sends');
  let st = await api(store, 'GET', '/api/subscriptions/dead');
  assert.equal(st.json.dead_letters, 1);
  const dl = await api(store, 'GET', '/api/subscriptions/dead/dead-letters');
  assert.equal(dl.status, 200);
  assert.equal(dl.json.dead_letters.length, 1);
  assert.equal(dl.json.dead_letters[0].position, bad.position);
  assert.equal(dl.json.dead_letters[0].attempts, 3);
  assert.match(dl.json.dead_letters[0].error, /500/);
  healthy = true;
  const r = await api(store, 'POST', `/api/subscriptions/dead/dead-letters/${bad.position}/retry`);
  assert.equal(r.status, 202, r.text);
  await until(() => rx.on('/dead').filter((x) => x.type === 'Bad').length === 4, { what: 'retried dead letter' });
  await until(async () => (await api(store, 'GET', '/api/subscriptions/dead')).json.dead_letters === 0,
    { what: 'dead letter gone' });
  const missing = await api(store, 'POST', `/api/subscriptions/dead/dead-letters/${bad.position}/retry`);
  assert.equal(missing.status, 404);
  rx.answer = () => 200;
});

test('from start delivers history; prefix and type filters', async () => {
  await append(store, 'hist-1', [{ type: 'A', data: 1 }, { type: 'B', data: 2 }]);
  await append(store, 'pf-1', [{ type: 'A', data: 'pf1a' }, { type: 'B', data: 'pf1b' }]);
  await append(store, 'pfx1', { type: 'A', data: 'not the prefix' });
  await subscribe(store, { name: 'hist', stream: 'hist-1', url: rx.url('/hist'), from: 'start' });
  await subscribe(store, { name: 'pf', stream: 'pf-*', types: ['A'], url: rx.url('/pf'), from: 'start' });
  await append(store, 'pf-2', [{ type: 'B', data: 'pf2b' }, { type: 'A', data: 'pf2a' }]);
  await until(() => rx.on('/hist').length >= 2, { what: 'history' });
  assert.deepEqual(rx.on('/hist').map((r) => r.event.data), [1, 2]);
  await until(() => rx.on('/pf').length >= 2, { what: 'filtered' });
  await sleep(ms(300));
  assert.deepEqual(rx.on('/pf').map((r) => r.event.data), ['pf1a', 'pf2a']);
});

test('service:NAME/PATH delivers to the passing instances of a registered service', async () => {
  const reg = await startRegistry();
  const sdir = mkdtempSync(path.join(os.tmpdir(), 'trellis-outbox-svc-'));
  const svcStore = await startStore(sdir, ['--registry', `127.0.0.1:${reg.port}`]);
  const [a, b] = [await startReceiver(), await startReceiver()];
  try {
    // No instance yet: attempts fail (and retry) with the reason.
    await subscribe(svcStore, { name: 'to-svc', stream: 'svc-1', url: 'service:listener/events?x=1', max_attempts: 1000 });
    await append(svcStore, 'svc-1', { type: 'E', data: 0 });
    await until(async () => /no passing instance of service 'listener'/.test((await api(svcStore, 'GET', '/api/subscriptions/to-svc')).json.last_error || ''),
      { timeout: ms(10000), what: 'the reason on the subscription' });
    for (const [i, rx2] of [a, b].entries()) {
      const port = Number(new URL(rx2.url('/')).port);
      const r = await call(reg, 'PUT', '/v1/agent/service/register', { body: JSON.stringify({ ID: `listener-${i}`, Name: 'listener', Address: '127.0.0.1', Port: port }) });
      assert.equal(r.status, 200, r.text);
    }
    for (let i = 1; i <= 5; i++) await append(svcStore, 'svc-1', { type: 'E', data: i });
    await until(() => a.got.length + b.got.length >= 6, { timeout: ms(20000), what: '6 deliveries' });
    const all = [...a.got, ...b.got].sort((x, y) => x.event.position - y.event.position);
    assert.deepEqual(all.map((r) => r.event.data), [0, 1, 2, 3, 4, 5], 'each event once, the waiting one first');
    assert.ok(all.every((r) => r.path === '/events?x=1'));
    assert.ok(a.got.length > 0 && b.got.length > 0, `round robin over both instances (${a.got.length}/${b.got.length})`);
    const bad = await api(svcStore, 'POST', '/api/subscriptions', { name: 'bad-svc', stream: 'x', url: 'service:has space/p' });
    assert.equal(bad.status, 422, bad.text);
    assert.match(bad.json.detail, /service:NAME\/PATH/);
  } finally {
    await svcStore.stop();
    await a.close();
    await b.close();
    await reg.cleanup();
    rmSync(sdir, { recursive: true, force: true });
  }
});

test('bad definitions are 422, bad JSON 400, unknown names 404', async () => {
  const url = rx.url('/x');
  const bad = [
    { stream: 'a', url },
    { name: 'has space', stream: 'a', url },
    { name: 'b', stream: '$foo', url },
    { name: 'b', url },
    { name: 'b', stream: 'a', url: 'https://127.0.0.1:1/x' },
    { name: 'b', stream: 'a', url: 'http://localhost:1/x' },
    { name: 'b', stream: 'a', url: '127.0.0.1:1/x' },
    { name: 'b', stream: 'a', url, types: [] },
    { name: 'b', stream: 'a', url, types: [''] },
    { name: 'b', stream: 'a', url, from: 'middle' },
    { name: 'b', stream: 'a', url, max_attempts: 0 },
    { name: 'b', stream: 'a', url, extra: 1 },
    [1],
  ];
  for (const def of bad) {
    const r = await api(store, 'POST', '/api/subscriptions', def);
    assert.equal(r.status, 422, `${JSON.stringify(def)}: ${r.text}`);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.ok(r.json.detail.length > 0);
  }
  assert.equal((await api(store, 'POST', '/api/subscriptions', '{nope')).status, 400);
  assert.equal((await api(store, 'GET', '/api/subscriptions/none')).status, 404);
  assert.equal((await api(store, 'DELETE', '/api/subscriptions/none')).status, 404);
  assert.equal((await api(store, 'GET', '/api/subscriptions/b')).status, 404);
  assert.equal((await api(store, 'GET', '/api/subscriptions/normal/dead-letters/1/retry/x')).status, 404);
  assert.equal((await api(store, 'GET', '/api/subscriptions/normal/')).status, 404);
  assert.equal((await api(store, 'GET', '/api/subscriptions/normal/dead-letters/1/retry')).status, 405);
  assert.equal((await api(store, 'PUT', '/api/subscriptions')).status, 405);
});

test('delete stops delivery', async () => {
  await subscribe(store, { name: 'gone', stream: 'gone-1', url: rx.url('/gone') });
  await append(store, 'gone-1', { type: 'A', data: 1 });
  await until(() => rx.on('/gone').length === 1, { what: 'first delivery' });
  const d = await api(store, 'DELETE', '/api/subscriptions/gone');
  assert.equal(d.status, 204);
  await append(store, 'gone-1', { type: 'A', data: 2 });
  await sleep(ms(500));
  assert.equal(rx.on('/gone').length, 1);
  assert.equal((await api(store, 'GET', '/api/subscriptions/gone')).status, 404);
});

test('subscriptions, checkpoints and dead letters survive a restart', async () => {
  await store.stop();
  store = await startStore(dir);
  const st = await api(store, 'GET', '/api/subscriptions/dead');
  assert.equal(st.status, 200);
  const before = rx.on('/normal').length;
  await append(store, 'norm-1', { type: 'E', data: 5 });
  await until(() => rx.on('/normal').length === before + 1, { what: 'delivery after restart' });
  await sleep(ms(300));
  assert.equal(rx.on('/normal').length, before + 1, 'nothing delivered twice after a clean stop');
});

test('SIGTERM with a send in flight stops at once; the event is sent again after a restart', async () => {
  const hdir = mkdtempSync(path.join(os.tmpdir(), 'trellis-outbox-hang-'));
  let hang = true;
  const pending = [];
  const hrx = await startReceiver((rec) => (hang ? new Promise((r) => pending.push(() => r(200))) : 200));
  let hs = await startStore(hdir);
  try {
    await subscribe(hs, { name: 'hang', stream: 'h-1', url: hrx.url('/h') });
    const a = await append(hs, 'h-1', { type: 'A', data: 1 });
    await until(() => hrx.got.length === 1, { what: 'the send in flight' });
    const t0 = Date.now();
    await hs.stop();
    assert.ok(Date.now() - t0 < ms(5000), 'a send in flight does not hold up the stop');
    hang = false;
    for (const p of pending) p();
    hs = await startStore(hdir);
    await until(() => hrx.got.length === 2, { what: 'the resend after the restart' });
    assert.equal(hrx.got[1].key, `hang:${a.position}`);
    assert.equal(hrx.got[1].key, hrx.got[0].key);
    await until(async () => (await api(hs, 'GET', '/api/subscriptions/hang')).json.checkpoint === a.position,
      { what: 'checkpoint after the resend' });
  } finally {
    await hs.stop().catch(() => hs.proc.kill('SIGKILL'));
    await hrx.close();
    rmSync(hdir, { recursive: true, force: true });
  }
});

test('SIGKILL during delivery: after a restart no event is missed', async () => {
  const kdir = mkdtempSync(path.join(os.tmpdir(), 'trellis-outbox-kill-'));
  const krx = await startReceiver(async () => { await sleep(5); return 200; });
  let ks = await startStore(kdir);
  try {
    await subscribe(ks, { name: 'kill', stream: 'k-*', url: krx.url('/k') });
    const N = 200;
    const positions = [];
    for (let i = 0; i < N; i += 20) {
      const evs = Array.from({ length: 20 }, (_, j) => ({ type: 'K', data: i + j }));
      const r = await append(ks, `k-${i % 3}`, evs);
      for (let p = r.position - 19; p <= r.position; p++) positions.push(p);
    }
    await until(() => krx.got.length >= 20, { what: 'some deliveries before the kill' });
    await ks.stop('SIGKILL');
    const seen = krx.got.length;
    assert.ok(seen < N, `killed during delivery (${seen} of ${N} sent)`);
    ks = await startStore(kdir);
    await until(() => new Set(krx.got.map((r) => r.event.position)).size === N,
      { timeout: ms(30000), what: 'every event after the restart' });
    for (const r of krx.got) assert.equal(r.key, `kill:${r.event.position}`);
    assert.deepEqual([...new Set(krx.got.map((r) => r.event.position))].sort((a, b) => a - b), positions);
    // Each first delivery is in position order.
    const firsts = [];
    const s = new Set();
    for (const r of krx.got) if (!s.has(r.event.position)) { s.add(r.event.position); firsts.push(r.event.position); }
    assert.deepEqual(firsts, positions);
  } finally {
    await ks.stop().catch(() => ks.proc.kill('SIGKILL'));
    await krx.close();
    rmSync(kdir, { recursive: true, force: true });
  }
});
