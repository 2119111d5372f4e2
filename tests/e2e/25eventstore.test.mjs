// End-to-end tests of `trellis eventstore`: the /api/streams HTTP API over the wire,
// subscriptions (long poll and SSE), and durability across SIGKILL.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BIN, SANITIZED, ms, watchOutput, withDeadline } from './lib/trellis.mjs';
import { request, until } from './lib/gateway.mjs';
import { startStore } from './lib/eventstore.mjs';

const JSON_HDR = { 'content-type': 'application/json' };

function api(store, method, p, body, headers = {}) {
  const text = body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body));
  return request(store.port, p, { method, body: text, headers: { ...JSON_HDR, ...headers }, timeout: ms(10000) });
}

function assertProblem(res, status, slug) {
  assert.equal(res.status, status, `status; body: ${res.text}`);
  assert.equal(res.headers['content-type'], 'application/problem+json', res.text);
  assert.equal(res.json.status, status);
  if (slug) assert.equal(res.json.type, `https://trellis.dev/problems/${slug}`);
  assert.ok(res.json.detail.length > 0, 'a problem says what to fix');
  return res.json;
}

/**
 * Opens an SSE subscription; resolves {events (parsed data of each event so far, with
 * sseId), waitFor(n, timeout), close()}.
 */
function openSse(store, p, extraHeaders = {}) {
  return new Promise((resolve, reject) => {
    const events = [];
    const waiters = [];
    let buf = '';
    const req = http.get({ host: '127.0.0.1', port: store.port, path: p,
      headers: { accept: 'text/event-stream', ...extraHeaders } }, (res) => {
      if (res.statusCode !== 200 || !/text\/event-stream/.test(res.headers['content-type'])) {
        reject(new Error(`SSE answered ${res.statusCode} ${res.headers['content-type']}`));
        return;
      }
      res.setEncoding('utf8');
      res.on('data', (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const f = {};
          for (const l of frame.split('\n')) {
            const k = l.indexOf(':');
            if (k > 0) f[l.slice(0, k)] = l.slice(k + 1).trim();
          }
          if (f.event === 'event') events.push({ ...JSON.parse(f.data), sseId: Number(f.id) });
        }
        for (const w of waiters.slice()) w();
      });
      res.on('error', () => {});
      resolve({
        events,
        waitFor(n, timeout = ms(5000)) {
          return withDeadline(new Promise((ok) => {
            const check = () => {
              if (events.length >= n) { waiters.splice(waiters.indexOf(check), 1); ok(events); }
            };
            waiters.push(check);
            check();
          }), timeout, `${n} SSE events (have ${events.length})`);
        },
        close() { req.destroy(); },
      });
    });
    req.on('error', reject);
    setTimeout(() => reject(new Error('SSE did not answer in time')), ms(5000)).unref();
  });
}

let dir;
let store;

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-es-'));
  store = await startStore(dir);
});

after(async () => {
  if (store) await store.stop().catch(() => store.proc.kill('SIGKILL'));
  rmSync(dir, { recursive: true, force: true });
});

test('append, read forward and backward, versions and positions', async () => {
  let r = await api(store, 'POST', '/api/streams/order-1?expected=no_stream',
    [{ type: 'Placed', data: { total: 42 } }, { type: 'Paid', data: 1, metadata: { by: 'x' } }]);
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.stream, 'order-1');
  assert.equal(r.json.first_version, 0);
  assert.equal(r.json.last_version, 1);
  assert.ok(r.json.position > 0);
  r = await api(store, 'POST', '/api/streams/order-1?expected=1', { type: 'Shipped', data: null });
  assert.equal(r.status, 201);
  assert.equal(r.json.first_version, 2);
  r = await api(store, 'GET', '/api/streams/order-1');
  assert.equal(r.status, 200);
  assert.deepEqual(r.json.events.map((e) => e.version), [0, 1, 2]);
  assert.deepEqual(r.json.events.map((e) => e.type), ['Placed', 'Paid', 'Shipped']);
  assert.deepEqual(r.json.events[0].data, { total: 42 });
  assert.deepEqual(r.json.events[1].metadata, { by: 'x' });
  assert.match(r.json.events[0].time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.equal(typeof r.json.events[0].id, 'string');
  assert.equal(r.json.next, null);
  assert.equal(r.json.last_version, 2);
  r = await api(store, 'GET', '/api/streams/order-1?from=0&limit=2');
  assert.deepEqual(r.json.events.map((e) => e.version), [0, 1]);
  assert.equal(r.json.next, 2);
  r = await api(store, 'GET', '/api/streams/order-1?direction=backward&limit=2');
  assert.deepEqual(r.json.events.map((e) => e.version), [2, 1]);
  assert.equal(r.json.next, 0);
  r = await api(store, 'GET', '/api/streams/no-such-stream');
  assertProblem(r, 404, 'stream-not-found');
  // A stream name in the path is percent-decoded.
  r = await api(store, 'POST', '/api/streams/caf%C3%A9%2F1', { type: 'T' });
  assert.equal(r.status, 201);
  assert.equal(r.json.stream, 'café/1');
});

test('409 with current_version, and idempotent repeats by event id', async () => {
  await api(store, 'POST', '/api/streams/acct-1', { type: 'Opened', id: 'acct-1-e0' });
  let r = await api(store, 'POST', '/api/streams/acct-1?expected=5', { type: 'X' });
  const p = assertProblem(r, 409, 'wrong-expected-version');
  assert.equal(p.current_version, 0);
  r = await api(store, 'POST', '/api/streams/acct-new?expected=exists', { type: 'X' });
  assert.equal(assertProblem(r, 409).current_version, -1);
  r = await api(store, 'POST', '/api/streams/acct-1?expected=no_stream', { type: 'X' });
  assert.equal(assertProblem(r, 409).current_version, 0);
  const body = [{ id: 'dep-1', type: 'Deposited', data: 5 }, { id: 'dep-2', type: 'Deposited', data: 6 }];
  const first = await api(store, 'POST', '/api/streams/acct-1?expected=0', body);
  assert.equal(first.status, 201);
  const again = await api(store, 'POST', '/api/streams/acct-1?expected=0', body);
  assert.equal(again.status, 200, again.text);
  assert.deepEqual(again.json, first.json);
  r = await api(store, 'POST', '/api/streams/acct-2', { id: 'dep-1', type: 'Deposited' });
  assertProblem(r, 409, 'wrong-expected-version');
  r = await api(store, 'GET', '/api/streams/acct-1');
  assert.equal(r.json.events.length, 3, 'no duplicates');
});

test('bad input answers problem+json', async () => {
  assertProblem(await api(store, 'POST', '/api/streams/%24system', { type: 'T' }), 400, 'bad-stream-name');
  assertProblem(await api(store, 'POST', '/api/streams/a%0Ab', { type: 'T' }), 400, 'bad-stream-name');
  assertProblem(await api(store, 'POST', `/api/streams/${'x'.repeat(201)}`, { type: 'T' }), 400, 'bad-stream-name');
  assertProblem(await api(store, 'POST', '/api/streams/ok?expected=maybe', { type: 'T' }), 400);
  assertProblem(await api(store, 'POST', '/api/streams/ok?expected=-5', { type: 'T' }), 400);
  assertProblem(await api(store, 'POST', '/api/streams/ok', '42'), 400);
  assertProblem(await api(store, 'POST', '/api/streams/ok', '"text"'), 400);
  assertProblem(await api(store, 'POST', '/api/streams/ok', '{"type":'), 400, 'bad-json');
  assertProblem(await api(store, 'POST', '/api/streams/ok', ''), 400);
  assertProblem(await api(store, 'POST', '/api/streams/ok', []), 422);
  assertProblem(await api(store, 'POST', '/api/streams/ok', [1, 2]), 422);
  assertProblem(await api(store, 'POST', '/api/streams/ok', { data: 1 }), 422);
  assertProblem(await api(store, 'POST', '/api/streams/ok', { type: 'T', metadata: 'no' }), 422);
  assertProblem(await api(store, 'POST', '/api/streams/ok', [{ type: 'T', id: 'a' }, { type: 'T', id: 'a' }]), 422);
  const many = Array.from({ length: 1001 }, () => ({ type: 'T' }));
  assertProblem(await api(store, 'POST', '/api/streams/ok', many), 422);
  assertProblem(await api(store, 'GET', '/api/streams/ok?limit=0'), 400);
  assertProblem(await api(store, 'GET', '/api/streams/ok?from=abc'), 400);
  assertProblem(await api(store, 'GET', '/api/streams/ok?direction=up'), 400);
  assertProblem(await api(store, 'GET', '/api/streams/ok/subscribe?wait=2h'), 400);
  assertProblem(await api(store, 'PUT', '/api/streams/ok/metadata', { max_count: -1 }), 422);
  assertProblem(await api(store, 'PUT', '/api/streams/ok/metadata', { max_age: 'soon' }), 422);
  assertProblem(await api(store, 'PUT', '/api/streams/ok/metadata', '[1]'), 400);
  assertProblem(await api(store, 'PATCH', '/api/streams/ok'), 405);
  assertProblem(await api(store, 'GET', '/api/streams'), 404);
  assertProblem(await api(store, 'GET', '/api/streams/ok/other'), 404);
  // Nothing of the bad requests was written.
  assertProblem(await api(store, 'GET', '/api/streams/ok'), 404);
});

test('$all pages in commit order', async () => {
  const r0 = await api(store, 'GET', '/api/streams/$all?limit=10000');
  const before = r0.json.events.length;
  for (let i = 0; i < 5; i++) {
    await api(store, 'POST', `/api/streams/all-${i % 2}`, { type: 'T', data: i });
  }
  const seen = [];
  let from = 0;
  for (let guard = 0; guard < 1000; guard++) {
    const r = await api(store, 'GET', `/api/streams/%24all?from_position=${from}&limit=3`);
    assert.equal(r.status, 200);
    seen.push(...r.json.events);
    if (r.json.next_position === null) break;
    from = r.json.next_position;
  }
  assert.equal(seen.length, before + 5);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i].position > seen[i - 1].position);
  assert.deepEqual(seen.slice(-5).map((e) => e.data), [0, 1, 2, 3, 4]);
});

test('metadata max_count hides old events; soft delete and restart of a stream', async () => {
  for (let i = 0; i < 5; i++) await api(store, 'POST', '/api/streams/meta-1', { type: 'T', data: i });
  let r = await api(store, 'PUT', '/api/streams/meta-1/metadata', { max_count: 2, max_age: '30d' });
  assert.equal(r.status, 200, r.text);
  r = await api(store, 'GET', '/api/streams/meta-1/metadata');
  assert.deepEqual({ a: r.json.max_age, c: r.json.max_count }, { a: '30d', c: 2 });
  r = await api(store, 'GET', '/api/streams/meta-1');
  assert.deepEqual(r.json.events.map((e) => e.data), [3, 4]);
  r = await api(store, 'DELETE', '/api/streams/meta-1');
  assert.equal(r.status, 204);
  assertProblem(await api(store, 'GET', '/api/streams/meta-1'), 404, 'stream-not-found');
  assertProblem(await api(store, 'DELETE', '/api/streams/meta-1'), 404);
  assertProblem(await api(store, 'POST', '/api/streams/meta-1?expected=exists', { type: 'T' }), 410, 'stream-deleted');
  assertProblem(await api(store, 'POST', '/api/streams/meta-1?expected=4', { type: 'T' }), 410);
  r = await api(store, 'POST', '/api/streams/meta-1?expected=no_stream', { type: 'Again' });
  assert.equal(r.status, 201);
  assert.equal(r.json.first_version, 5, 'versions keep counting');
  r = await api(store, 'GET', '/api/streams/meta-1');
  assert.deepEqual(r.json.events.map((e) => e.type), ['Again']);
});

test('the scavenger removes what metadata excludes, from the stream and from $all', async () => {
  const first = await api(store, 'POST', '/api/streams/scav-1', [0, 1, 2, 3, 4, 5].map((i) => ({ type: 'T', data: i })));
  assert.equal(first.status, 201, first.text);
  const firstPos = first.json.position - 5;
  await api(store, 'POST', '/api/streams/scav-2', [{ type: 'T', data: 'a' }, { type: 'T', data: 'b' }]);
  await api(store, 'POST', '/api/streams/tail-1', { type: 'T' }); // the newest event stays anyway (below)
  assert.equal((await api(store, 'PUT', '/api/streams/scav-1/metadata', { max_count: 2 })).status, 200);
  assert.equal((await api(store, 'PUT', '/api/streams/scav-2/metadata', { max_age: '1ms' })).status, 200);
  await new Promise((res) => setTimeout(res, 20));
  const inAll = async () => (await api(store, 'GET', `/api/streams/%24all?from_position=${firstPos}&limit=1000`)).json.events
    .filter((e) => e.stream.startsWith('scav-')).map((e) => `${e.stream}:${e.version}`);
  assert.deepEqual(await inAll(), ['scav-1:0', 'scav-1:1', 'scav-1:2', 'scav-1:3', 'scav-1:4', 'scav-1:5', 'scav-2:0', 'scav-2:1'],
    '$all keeps them until the scavenger runs');
  const r = await api(store, 'POST', '/api/scavenge');
  assert.equal(r.status, 200, r.text);
  assert.ok(r.json.removed >= 6, `4 of scav-1 and 2 of scav-2 removed (and maybe others): ${r.text}`);
  assert.deepEqual(await inAll(), ['scav-1:4', 'scav-1:5']);
  const s1 = await api(store, 'GET', '/api/streams/scav-1');
  assert.deepEqual(s1.json.events.map((e) => [e.version, e.data]), [[4, 4], [5, 5]], 'reads are as before');
  const again = await api(store, 'POST', '/api/streams/scav-1?expected=5', { type: 'T', data: 6 });
  assert.equal(again.status, 201, 'versions keep counting after a scavenge');
  assert.equal(again.json.first_version, 6);
  assert.equal((await api(store, 'POST', '/api/scavenge')).json.removed >= 1, true, 'the next run removes version 4');
  assertProblem(await api(store, 'GET', '/api/scavenge'), 405);
  // The newest event of all is never removed: its position must not be handed out again.
  const last = await api(store, 'POST', '/api/streams/scav-3', { type: 'T' });
  assert.equal((await api(store, 'PUT', '/api/streams/scav-3/metadata', { max_age: '1ms' })).status, 200);
  await new Promise((res) => setTimeout(res, 20));
  await api(store, 'POST', '/api/scavenge');
  const next = await api(store, 'POST', '/api/streams/scav-4', { type: 'T' });
  assert.ok(next.json.position > last.json.position, `a new position (${next.json.position} > ${last.json.position})`);
});

test('a page stops past 1 MiB of event data; next says where to go on', async () => {
  const big = 'x'.repeat(600 * 1024);
  const r = await api(store, 'POST', '/api/streams/big-1', [0, 1, 2].map((i) => ({ type: 'Big', data: { i, big } })));
  assert.equal(r.status, 201, r.text);
  let page = await api(store, 'GET', '/api/streams/big-1?limit=100');
  assert.deepEqual(page.json.events.map((e) => e.data.i), [0, 1], 'the second event passes 1 MiB: the page ends');
  assert.equal(page.json.next, 2);
  page = await api(store, 'GET', `/api/streams/big-1?from=${page.json.next}&limit=100`);
  assert.deepEqual(page.json.events.map((e) => e.data.i), [2]);
  assert.equal(page.json.next, null);
  const sub = await api(store, 'GET', `/api/streams/big-1/subscribe?from=0&wait=1`);
  assert.deepEqual(sub.json.events.map((e) => e.data.i), [0, 1], 'long polls page the same way');
  const sse = await openSse(store, '/api/streams/big-1/subscribe?from=0');
  try {
    await sse.waitFor(3, ms(10000));
    assert.deepEqual(sse.events.slice(0, 3).map((e) => e.data.i), [0, 1, 2], 'SSE reads on past a short page');
  } finally {
    sse.close();
  }
});

test('long poll waits for an append and wakes on it', async () => {
  const r0 = await api(store, 'POST', '/api/streams/lp-1', { type: 'First' });
  const started = Date.now();
  const poll = api(store, 'GET', '/api/streams/lp-1/subscribe?from=1&wait=20');
  await new Promise((res) => setTimeout(res, ms(200)));
  await api(store, 'POST', '/api/streams/lp-1?expected=0', { type: 'Second' });
  const r = await poll;
  assert.equal(r.status, 200);
  assert.deepEqual(r.json.events.map((e) => e.type), ['Second']);
  assert.ok(Date.now() - started < ms(5000), 'woken by the append, not by the wait');
  // Nothing new: the wait ends with an empty page at its deadline.
  const t = Date.now();
  const empty = await api(store, 'GET', `/api/streams/%24all/subscribe?from_position=${r0.json.position + 1000}&wait=300ms`);
  assert.equal(empty.status, 200);
  assert.deepEqual(empty.json.events, []);
  assert.ok(Date.now() - t >= 250);
});

test('SSE: catch-up, then live events within a deadline', async () => {
  for (let i = 0; i < 3; i++) await api(store, 'POST', '/api/streams/sse-1', { type: 'T', data: i });
  const sse = await openSse(store, '/api/streams/sse-1/subscribe?from=0');
  try {
    await sse.waitFor(3);
    assert.deepEqual(sse.events.map((e) => e.sseId), [0, 1, 2]);
    await api(store, 'POST', '/api/streams/sse-1', { type: 'Live', data: 3 });
    await sse.waitFor(4, ms(3000));
    assert.equal(sse.events[3].type, 'Live');
    assert.equal(sse.events[3].sseId, 3);
  } finally {
    sse.close();
  }
  // A reconnecting client resumes after its Last-Event-ID.
  const again = await openSse(store, '/api/streams/sse-1/subscribe?from=0', { 'last-event-id': '2' });
  try {
    await again.waitFor(1);
    assert.deepEqual(again.events.map((e) => e.sseId), [3]);
  } finally {
    again.close();
  }
  // $all over SSE uses positions as ids.
  const head = (await api(store, 'POST', '/api/streams/sse-2', { type: 'A' })).json.position;
  const all = await openSse(store, `/api/streams/$all/subscribe?from_position=${head}`);
  try {
    await all.waitFor(1);
    assert.equal(all.events[0].sseId, head);
    const p2 = (await api(store, 'POST', '/api/streams/sse-2', { type: 'B' })).json.position;
    await all.waitFor(2, ms(3000));
    assert.equal(all.events[1].sseId, p2);
  } finally {
    all.close();
  }
});

test('clients that go away mid-body, mid-poll or mid-stream leave the store working', async () => {
  const net = await import('node:net');
  const raw = (text) => new Promise((resolve) => {
    const sock = net.connect(store.port, '127.0.0.1', () => {
      sock.write(text);
      setTimeout(() => { sock.destroy(); resolve(); }, 50);
    });
    sock.on('error', () => resolve());
  });
  await raw('POST /api/streams/gone HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{"type":');
  await raw('GET /api/streams/gone/subscribe?from=0&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n');
  await raw('GET /api/streams/gone/subscribe?from=0 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n');
  await raw('POST /api/streams/gone HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n{"type":"Gone"}');
  const sse = await openSse(store, '/api/streams/gone/subscribe?from=0');
  sse.close();
  const r = await api(store, 'POST', '/api/streams/gone', { type: 'After' });
  assert.equal(r.status, 201);
  const read = await api(store, 'GET', '/api/streams/gone');
  assert.equal(read.json.events.at(-1).type, 'After');
});

test('SIGKILL: every acknowledged append survives, catch-up has no gap nor duplicate', async () => {
  const kdir = mkdtempSync(path.join(os.tmpdir(), 'trellis-es-kill-'));
  let s = await startStore(kdir);
  try {
    // A subscriber reads $all by long poll; it remembers where it stopped.
    const consumed = [];
    let from = 0;
    let stopConsumer = false;
    const consume = async (st) => {
      while (!stopConsumer) {
        let r;
        try {
          r = await api(st, 'GET', `/api/streams/%24all/subscribe?from_position=${from}&limit=50&wait=1`);
        } catch { return; }
        if (r.status !== 200) return;
        for (const e of r.json.events) consumed.push(e.position);
        if (r.json.events.length) from = r.json.events.at(-1).position + 1;
      }
    };
    const consumer = consume(s);
    const acked = [];
    let stop = false;
    const writer = async (w) => {
      for (let i = 0; !stop; i++) {
        const id = `w${w}-${i}`;
        try {
          const r = await api(s, 'POST', `/api/streams/k-${w}`, { id, type: 'T', data: i });
          if (r.status === 201) acked.push({ id, stream: `k-${w}`, version: r.json.first_version });
        } catch { return; }
      }
    };
    const writers = Array.from({ length: 16 }, (_, w) => writer(w));
    await until(() => acked.length >= 200, { timeout: ms(15000), what: '200 acknowledged appends' });
    await s.stop('SIGKILL');
    stop = true;
    stopConsumer = true;
    await withDeadline(Promise.all([...writers, consumer]), ms(15000), 'clients notice the kill');
    s = await startStore(kdir);
    for (const w of new Set(acked.map((a) => a.stream))) {
      const r = await api(s, 'GET', `/api/streams/${w}?limit=10000`);
      assert.equal(r.status, 200);
      const ids = new Map(r.json.events.map((e) => [e.id, e.version]));
      for (const a of acked.filter((x) => x.stream === w)) {
        assert.equal(ids.get(a.id), a.version, `acknowledged ${a.id} is there after SIGKILL`);
      }
    }
    // The subscriber resumes after the restart from where it stopped.
    stopConsumer = false;
    const head = (await api(s, 'GET', '/api/streams/%24all?limit=10000')).json.events.map((e) => e.position);
    await withDeadline((async () => {
      while (from <= head.at(-1)) {
        const r = await api(s, 'GET', `/api/streams/%24all/subscribe?from_position=${from}&limit=100&wait=1`);
        for (const e of r.json.events) consumed.push(e.position);
        if (r.json.events.length) from = r.json.events.at(-1).position + 1;
      }
    })(), ms(15000), 'catch-up after restart');
    assert.deepEqual(consumed, head, 'catch-up across a restart: no gap, no duplicate');
    await s.stop();
  } finally {
    s.proc.kill('SIGKILL');
    rmSync(kdir, { recursive: true, force: true });
  }
});

/**
 * Writes `raw` (pipelined HTTP/1.1 requests) on one connection and resolves the `count`
 * responses, in the order received: [{status, json}].
 */
function pipelined(port, raw, count) {
  return withDeadline(new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(raw));
    let buf = Buffer.alloc(0);
    const out = [];
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const h = buf.indexOf('\r\n\r\n');
        if (h < 0) break;
        const head = buf.subarray(0, h).toString('latin1');
        const len = Number((/content-length: *(\d+)/i.exec(head) || [0, 0])[1]);
        if (buf.length < h + 4 + len) break;
        const body = buf.subarray(h + 4, h + 4 + len).toString('utf8');
        out.push({ status: Number(head.slice(9, 12)), json: body ? JSON.parse(body) : null });
        buf = buf.subarray(h + 4 + len);
      }
      if (out.length === count) { sock.end(); resolve(out); }
    });
    sock.on('error', reject);
    sock.on('close', () => (out.length < count ? reject(new Error(`closed after ${out.length} responses`)) : null));
  }), ms(10000), 'pipelined responses');
}

test('pipelined appends share a commit, keep their order, and a read after them sees them', async () => {
  const append = (stream, expected, type) => {
    const body = JSON.stringify({ type, data: { n: type } });
    return `POST /api/streams/${stream}?expected=${expected} HTTP/1.1\r\nHost: x\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  };
  const raw = append('pipe-1', 'no_stream', 'A') + append('pipe-1', '0', 'B') + append('pipe-2', 'any', 'X') +
    append('pipe-1', '1', 'C') + append('pipe-1', '0', 'late') + // stale: a conflict
    'POST /api/streams/pipe-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{x}' + // bad JSON: 400 in turn
    'GET /api/streams/pipe-1 HTTP/1.1\r\nHost: x\r\n\r\n' + append('pipe-1', '2', 'D');
  const res = await pipelined(store.port, raw, 8);
  assert.deepEqual(res.map((r) => r.status), [201, 201, 201, 201, 409, 400, 200, 201]);
  assert.deepEqual(res.slice(0, 4).map((r) => [r.json.stream, r.json.first_version]),
    [['pipe-1', 0], ['pipe-1', 1], ['pipe-2', 0], ['pipe-1', 2]]);
  assert.ok(res[0].json.position < res[1].json.position && res[1].json.position < res[2].json.position);
  assert.equal(res[4].json.current_version, 2);
  // The read was pipelined after the appends: it waits for their answers and sees them.
  assert.deepEqual(res[6].json.events.map((e) => e.type), ['A', 'B', 'C']);
  assert.equal(res[7].json.first_version, 3);
});

test('help lists every option with its default and an example', async () => {
  const proc = spawn(BIN, ['eventstore', '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = watchOutput(proc, 'trellis eventstore --help');
  const res = await withDeadline(out.exited, ms(5000), 'help exits');
  assert.equal(res.code, 0);
  for (const opt of ['--listen', '--data-dir', '--sync', '--grace', '--log-level', '--log-format']) {
    assert.ok(out.stdout().includes(opt), `help mentions ${opt}`);
  }
  assert.match(out.stdout(), /default 127\.0\.0\.1:2113/);
  assert.match(out.stdout(), /Example/);
});
