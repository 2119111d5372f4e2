// The shop's notification service: a libtrellis projection (CQRS read model) over the event
// store's order streams. Every order event becomes one message, in order; a restart of the
// service resumes at its checkpoint (no message lost or repeated); a store that is down for
// a while only delays the messages.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BIN, ms, watchOutput, withDeadline } from './lib/trellis.mjs';
import { request, until } from './lib/gateway.mjs';
import { startShopService, assertShopProblem } from './lib/shop.mjs';
import { startStore } from './lib/eventstore.mjs';

const append = (store, stream, events) => request(store.port, `/api/streams/${stream}`, {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(events) });

describe('shop notification', () => {
  let dir;
  let store;
  let svc;
  const messages = async (q = '') => (await svc.req(`/notifications${q}`)).json;
  const waitFor = (n, q = '') => until(async () => {
    const m = await messages(q);
    return m.items.length >= n ? m : undefined;
  }, { timeout: ms(10000), what: `${n} notifications${q}` });

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'shop-notification-'));
    store = await startStore(path.join(dir, 'store'));
    svc = await startShopService('notification', { env: { TRELLIS_EVENTSTORE: `127.0.0.1:${store.port}` }, dataDir: path.join(dir, 'svc') });
  });
  after(async () => {
    if (svc) await svc.stop().catch(() => {});
    if (store) store.proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  test('every order event becomes one message, in order; other streams and types are ignored', async () => {
    assert.equal((await append(store, 'order-1', [
      { type: 'OrderPlaced', data: { order_id: 1, customer_id: 7, total_cents: 4299 } },
      { type: 'OrderConfirmed', data: { order_id: 1 } },
    ])).status, 201);
    assert.equal((await append(store, 'customer-7', [{ type: 'CustomerCreated', data: {} }])).status, 201);
    assert.equal((await append(store, 'order-2', [
      { type: 'OrderPlaced', data: { order_id: 2, customer_id: 8, total_cents: 1290 } },
      { type: 'SomethingElse', data: { order_id: 2 } },
      { type: 'OrderCancelled', data: { order_id: 2, reason: 'card declined' } },
    ])).status, 201);
    const m = await waitFor(4);
    assert.deepEqual(m.items.map((x) => [x.order_id, x.kind]), [['1', 'order-placed'], ['1', 'order-confirmed'], ['2', 'order-placed'], ['2', 'order-cancelled']]);
    assert.match(m.items[0].text, /42\.99 EUR/);
    assert.match(m.items[3].text, /cancelled: card declined/);
    assert.deepEqual((await messages('?order_id=2')).items.map((x) => x.kind), ['order-placed', 'order-cancelled']);
    assert.deepEqual((await messages('?customer_id=7')).items.length, 2);
  });

  test('a restart resumes at the checkpoint: nothing lost, nothing repeated', async () => {
    await svc.stop();
    assert.equal((await append(store, 'order-3', [{ type: 'OrderPlaced', data: { order_id: 3, total_cents: 100 } }])).status, 201);
    svc = await startShopService('notification', { env: { TRELLIS_EVENTSTORE: `127.0.0.1:${store.port}` }, dataDir: path.join(dir, 'svc') });
    const m = await waitFor(5);
    assert.equal(m.items.length, 5, 'exactly one more message');
    assert.equal(new Set(m.items.map((x) => x.position)).size, 5, 'no position twice');
  });

  test('the store down for a while: messages are only delayed', async () => {
    store.proc.kill('SIGKILL');
    await withDeadline(store.out.exited, ms(5000), 'store killed');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await svc.req('/health/ready')).status, 200, 'the service keeps serving');
    store = await startStore(path.join(dir, 'store'), [], store.port);
    assert.equal((await append(store, 'order-4', [{ type: 'OrderPlaced', data: { order_id: 4, total_cents: 100 } }])).status, 201);
    const m = await waitFor(6);
    assert.equal(m.items.at(-1).order_id, '4');
    assertShopProblem(await svc.req('/notifications', { method: 'POST' }), 405, 'method-not-allowed');
  });
});
