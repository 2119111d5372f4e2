// The shop's order service end to end, with a registry, catalog and inventory: orders priced
// from catalog and checked against inventory, validation, reading and cancelling, the
// correlation ID, and the resilience story: a killed inventory replica (retries go to the
// other), inventory down (fallback: pending / deferred, then verified again once it is back
// and the breaker closes), catalog down (503); and the create-order saga's calls: orders
// idempotent by Idempotency-Key, "status":"pending" without a stock check, confirm, and a
// cancel that a compensation may send again. Each order is an event-sourced aggregate: its
// state is its stream order-<id> in the event store, the listing a read model kept by a
// projection (rebuilt from the streams by a replica with an empty database).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startShopService, shopBin, assertShopProblem as assertProblemJson } from './lib/shop.mjs';
import { startRegistry, call } from './lib/registry.mjs';
import { startStore } from './lib/eventstore.mjs';
import { until, ms, request } from './lib/gateway.mjs';

const BREAKER_OPEN_MS = 1500;

describe('shop order: orders across catalog and inventory', () => {
  let reg;
  let registry;
  let store;
  let storeDir;
  let catalog;
  let order;
  let invDir;
  const inventories = [];

  /** Resolves once the registry lists at least n passing instances of `name`. */
  const passing = (name, n = 1) => until(async () => {
    const r = await call(reg, 'GET', `/v1/health/service/${name}?passing`);
    return r.status === 200 && Array.isArray(r.json) && r.json.length >= n;
  }, { timeout: ms(15000), every: 100, what: `${n} passing ${name} instance(s)` });

  const startInventory = async () => {
    const svc = await startShopService('inventory', { registry, dataDir: invDir });
    inventories.push(svc);
    return svc;
  };

  const place = (json, headers = {}) => order.req('/orders', { method: 'POST', json, headers });

  before(async () => {
    reg = await startRegistry();
    registry = `127.0.0.1:${reg.port}`;
    invDir = mkdtempSync(path.join(os.tmpdir(), 'shop-order-inv-'));
    storeDir = mkdtempSync(path.join(os.tmpdir(), 'shop-order-es-'));
    store = await startStore(storeDir);
    catalog = await startShopService('catalog', { registry });
    order = await startShopService('order', { registry, env: { SHOP_BREAKER_OPEN_MS: String(BREAKER_OPEN_MS), TRELLIS_EVENTSTORE: `127.0.0.1:${store.port}` } });
    await startInventory();
    await passing('catalog');
    await passing('inventory');
  });

  after(async () => {
    for (const s of [order, catalog, ...inventories]) {
      if (!s) continue;
      if (s.proc.exitCode === null && s.proc.signalCode === null) await s.stop();
    }
    if (reg) await reg.cleanup();
    if (store) await store.stop();
    if (invDir) rmSync(invDir, { recursive: true, force: true });
    if (storeDir) rmSync(storeDir, { recursive: true, force: true });
  });

  test('--help prints usage and exits 0', () => {
    const r = spawnSync(shopBin('order'), ['--help'], { encoding: 'utf8', timeout: ms(5000) });
    assert.equal(r.status, 0, r.stderr);
    for (const v of ['PORT', 'SHOP_DATA_DIR', 'TRELLIS_REGISTRY', 'TRELLIS_SERVICE']) assert.match(r.stdout, new RegExp(v));
  });

  test('an order is priced from catalog, verified against inventory, stored and logged', async () => {
    const [p1, p3] = await Promise.all([catalog.req('/products/1'), catalog.req('/products/3')]);
    assert.equal(p1.status, 200, p1.text);
    const r = await place({ customer_id: 7, items: [{ product_id: 1, quantity: 2 }, { product_id: 3, quantity: 1 }] },
      { 'x-correlation-id': 'corr-order-create-1' });
    assert.equal(r.status, 201, r.text);
    const o = r.json;
    assert.equal(r.headers.location, `/orders/${o.id}`);
    assert.equal(r.headers['x-correlation-id'], 'corr-order-create-1', 'the correlation id is echoed');
    assert.equal(o.correlation_id, 'corr-order-create-1', 'and stored on the order');
    assert.equal(o.customer_id, 7);
    assert.equal(o.status, 'created');
    assert.equal(o.stock_check, 'verified');
    assert.equal(o.currency, 'EUR');
    assert.match(o.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.deepEqual(o.items, [
      { product_id: 1, name: p1.json.name, quantity: 2, unit_price_cents: p1.json.price_cents },
      { product_id: 3, name: p3.json.name, quantity: 1, unit_price_cents: p3.json.price_cents },
    ]);
    assert.ok(p1.json.price_cents > 0);
    assert.equal(o.total_cents, 2 * p1.json.price_cents + p3.json.price_cents);
    const line = JSON.parse(await order.waitLog(/"msg":"order created".*corr-order-create-1/));
    assert.equal(line.correlation_id, 'corr-order-create-1');
    assert.equal(line.order_id, o.id);
    const got = await order.req(`/orders/${o.id}`);
    assert.equal(got.status, 200);
    assert.deepEqual(got.json, o);
  });

  test('too little stock is 409 out-of-stock naming the product', async () => {
    let p = assertProblemJson(await place({ customer_id: 7, items: [{ product_id: 1, quantity: 1 }, { product_id: 12, quantity: 1 }] }), 409, 'out-of-stock');
    assert.match(p.detail, /product 12\b/);
    p = assertProblemJson(await place({ customer_id: 7, items: [{ product_id: 11, quantity: 4 }] }), 409, 'out-of-stock');
    assert.match(p.detail, /product 11\b/);
    const ok = await place({ customer_id: 7, items: [{ product_id: 11, quantity: 3 }] });
    assert.equal(ok.status, 201, 'exactly the stock there is can be ordered');
  });

  test('an unknown product is 422 naming it', async () => {
    const p = assertProblemJson(await place({ customer_id: 7, items: [{ product_id: 2, quantity: 1 }, { product_id: 99999, quantity: 1 }] }), 422);
    assert.match(p.detail, /unknown product 99999/);
    assert.match(p.detail, /items\[1\]/);
  });

  test('bad bodies are 422 naming the field, non-JSON 400', async () => {
    const cases = [
      [{ items: [{ product_id: 1, quantity: 1 }] }, /customer_id/],
      [{ customer_id: 0, items: [{ product_id: 1, quantity: 1 }] }, /customer_id/],
      [{ customer_id: 7 }, /items/],
      [{ customer_id: 7, items: [] }, /items/],
      [{ customer_id: 7, items: [{ product_id: 'x', quantity: 1 }] }, /items\[0\]\.product_id/],
      [{ customer_id: 7, items: [{ product_id: 1, quantity: 0 }] }, /items\[0\]\.quantity/],
      [{ customer_id: 7, items: [{ product_id: 1, quantity: 1 }, { product_id: 2, quantity: 101 }] }, /items\[1\]\.quantity/],
    ];
    for (const [json, re] of cases) {
      const p = assertProblemJson(await place(json), 422, 'invalid-order');
      assert.match(p.detail, re, JSON.stringify(json));
    }
    assertProblemJson(await order.req('/orders', { method: 'POST', body: '{"customer_id":', headers: { 'content-type': 'application/json' } }), 400);
  });

  test('orders are read by id and listed newest first, filtered by customer and status', async () => {
    const mk = async (customer_id) => {
      const r = await place({ customer_id, items: [{ product_id: 4, quantity: 1 }] });
      assert.equal(r.status, 201, r.text);
      return r.json;
    };
    const a = await mk(501);
    const b = await mk(501);
    const c = await mk(502);
    let r = await order.req('/orders?customer_id=501');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.items.map((o) => o.id), [b.id, a.id]);
    assert.deepEqual(r.json.items[0], b);
    r = await order.req('/orders?customer_id=502');
    assert.deepEqual(r.json.items.map((o) => o.id), [c.id]);
    r = await order.req('/orders?limit=2');
    assert.deepEqual(r.json.items.map((o) => o.id), [c.id, b.id]);
    r = await order.req('/orders?status=created&customer_id=501&limit=1');
    assert.deepEqual(r.json.items.map((o) => o.id), [b.id]);
    r = await order.req('/orders?status=cancelled&customer_id=501');
    assert.deepEqual(r.json.items, []);
    assertProblemJson(await order.req('/orders?limit=0'), 400);
    assertProblemJson(await order.req('/orders?limit=abc'), 400);
    assertProblemJson(await order.req('/orders?customer_id=-1'), 400);
    assertProblemJson(await order.req('/orders?status=shipped'), 400);
    assertProblemJson(await order.req('/orders/999999'), 404, 'not-found');
    assertProblemJson(await order.req('/orders/abc'), 400, 'bad-id');
  });

  test('cancel: 200 cancelled, again 409, unknown 404', async () => {
    const o = (await place({ customer_id: 600, items: [{ product_id: 5, quantity: 1 }] })).json;
    let r = await order.req(`/orders/${o.id}/cancel`, { method: 'POST' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'cancelled');
    assert.equal(r.json.id, o.id);
    assertProblemJson(await order.req(`/orders/${o.id}/cancel`, { method: 'POST' }), 409);
    r = await order.req('/orders?customer_id=600&status=cancelled');
    assert.deepEqual(r.json.items.map((x) => x.id), [o.id]);
    assertProblemJson(await order.req('/orders/999999/cancel', { method: 'POST' }), 404);
    assertProblemJson(await order.req('/orders/0/cancel', { method: 'POST' }), 400, 'bad-id');
  });

  // The create-order saga (docs/sagas.md) calls the order service at least once per step,
  // with Idempotency-Key: <saga-id>:<step>:<action|compensation>.
  test('POST /orders with an Idempotency-Key: a repeat (even concurrent) returns the first order', async () => {
    const key = `saga-${Date.now()}:order:action`;
    const body = { customer_id: 1100, items: [{ product_id: 2, quantity: 1 }] };
    const first = await place(body, { 'idempotency-key': key });
    assert.equal(first.status, 201, first.text);
    const again = await place(body, { 'idempotency-key': key });
    assert.equal(again.status, 200, again.text);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.deepEqual(again.json, first.json);
    const key2 = `${key}-concurrent`;
    const many = await Promise.all([1, 2, 3, 4].map(() => place(body, { 'idempotency-key': key2 })));
    assert.deepEqual(many.map((r) => r.status).sort(), [200, 200, 200, 201], many.map((r) => r.text).join('\n'));
    assert.equal(new Set(many.map((r) => r.json.id)).size, 1, 'one order for one key');
    const list = await order.req('/orders?customer_id=1100');
    assert.equal(list.json.items.length, 2, 'two keys, two orders');
    assertProblemJson(await place(body, { 'idempotency-key': 'k'.repeat(256) }), 400, 'bad-idempotency-key');
  });

  test('"status":"pending" takes the order without a stock check (the saga reserves stock)', async () => {
    const p12 = await catalog.req('/products/12');
    const r = await place({ customer_id: 1200, items: [{ product_id: 12, quantity: 2 }], status: 'pending' });
    assert.equal(r.status, 201, `product 12 has no stock, but nobody asked inventory: ${r.text}`);
    assert.equal(r.json.status, 'pending');
    assert.equal(r.json.stock_check, 'deferred');
    assert.equal(r.json.total_cents, 2 * p12.json.price_cents, 'priced from catalog');
    assert.equal(r.json.payment, undefined, 'no payment yet');
    for (const status of ['created', 'confirmed', 1, null]) {
      const p = assertProblemJson(await place({ customer_id: 1200, items: [{ product_id: 1, quantity: 1 }], status }), 422, 'invalid-order');
      assert.match(p.detail, /status/);
    }
  });

  test('confirm: 200 confirmed with the payment, idempotent; cancelled 409; a confirmed order cannot be cancelled', async () => {
    const o = (await place({ customer_id: 1300, items: [{ product_id: 3, quantity: 1 }], status: 'pending' })).json;
    let r = await order.req(`/orders/${o.id}/confirm`, { method: 'POST', json: { payment: 77 }, headers: { 'idempotency-key': 's:confirm:action' } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'confirmed');
    assert.equal(r.json.payment, 77);
    r = await order.req(`/orders/${o.id}/confirm`, { method: 'POST', json: { payment: 78 }, headers: { 'idempotency-key': 's:confirm:action' } });
    assert.equal(r.status, 200, 'again: the same answer');
    assert.equal(r.json.payment, 77, 'the first payment is kept');
    assert.equal((await order.req(`/orders/${o.id}`)).json.payment, 77);
    r = await order.req('/orders?customer_id=1300&status=confirmed');
    assert.deepEqual(r.json.items.map((x) => x.id), [o.id]);
    assertProblemJson(await order.req(`/orders/${o.id}/cancel`, { method: 'POST' }), 409, 'order-confirmed');
    // Without a body, and with a string charge id.
    const b = (await place({ customer_id: 1300, items: [{ product_id: 3, quantity: 1 }], status: 'pending' })).json;
    r = await order.req(`/orders/${b.id}/confirm`, { method: 'POST' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.payment, undefined);
    r = await order.req(`/orders/${b.id}/confirm`, { method: 'POST', json: { payment: 'ch_1' } });
    assert.equal(r.json.payment, 'ch_1', 'a payment named later is recorded');
    const c = (await place({ customer_id: 1300, items: [{ product_id: 3, quantity: 1 }] })).json;
    assert.equal((await order.req(`/orders/${c.id}/cancel`, { method: 'POST' })).status, 200);
    assertProblemJson(await order.req(`/orders/${c.id}/confirm`, { method: 'POST' }), 409, 'order-cancelled');
    assertProblemJson(await order.req('/orders/999999/confirm', { method: 'POST' }), 404, 'not-found');
    assertProblemJson(await order.req(`/orders/${b.id}/confirm`, { method: 'POST', json: { payment: -1 } }), 422, 'invalid-order');
    assertProblemJson(await order.req(`/orders/${b.id}/confirm`, { method: 'POST', json: { payment: '' } }), 422, 'invalid-order');
  });

  test('cancel is idempotent by Idempotency-Key: the same compensation again is 200, another cancel 409', async () => {
    const o = (await place({ customer_id: 1400, items: [{ product_id: 5, quantity: 1 }], status: 'pending' })).json;
    const key = `saga-${Date.now()}:order:compensation`;
    const first = await order.req(`/orders/${o.id}/cancel`, { method: 'POST', headers: { 'idempotency-key': key } });
    assert.equal(first.status, 200, first.text);
    assert.equal(first.json.status, 'cancelled');
    const again = await order.req(`/orders/${o.id}/cancel`, { method: 'POST', headers: { 'idempotency-key': key } });
    assert.equal(again.status, 200, again.text);
    assert.deepEqual(again.json, first.json, 'the same result');
    assertProblemJson(await order.req(`/orders/${o.id}/cancel`, { method: 'POST', headers: { 'idempotency-key': `${key}-other` } }), 409, 'already-cancelled');
    assertProblemJson(await order.req(`/orders/${o.id}/cancel`, { method: 'POST' }), 409, 'already-cancelled');
    // Sent twice at once (two replicas, a retried compensation): both 200.
    const p = (await place({ customer_id: 1400, items: [{ product_id: 5, quantity: 1 }], status: 'pending' })).json;
    const both = await Promise.all([1, 2].map(() => order.req(`/orders/${p.id}/cancel`, { method: 'POST', headers: { 'idempotency-key': key + p.id } })));
    assert.deepEqual(both.map((r) => r.status), [200, 200]);
  });

  const es = (p, opts = {}) => request(store.port, p, opts);

  test('an order is its stream: every change is an event, the state their fold', async () => {
    const o = (await place({ customer_id: 1500, items: [{ product_id: 3, quantity: 2 }], status: 'pending' })).json;
    assert.equal((await order.req(`/orders/${o.id}/confirm`, { method: 'POST', json: { payment: 'ch_9' } })).status, 200);
    const s = await es(`/api/streams/order-${o.id}`);
    assert.equal(s.status, 200, s.text);
    const events = JSON.parse(s.text).events;
    assert.deepEqual(events.map((e) => [e.version, e.type]), [[0, 'OrderPlaced'], [1, 'OrderConfirmed']]);
    assert.equal(events[0].data.order_id, o.id);
    assert.equal(events[0].data.total_cents, o.total_cents);
    assert.deepEqual(events[0].data.items, o.items);
    assert.equal(events[1].data.payment, 'ch_9');
    // An event appended to the stream by anyone is the order's state at once, and the
    // listing (the read model) follows it through the projection.
    const c = await es(`/api/streams/order-${o.id}?expected=1`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'OrderCancelled', data: { order_id: o.id, reason: 'by hand' } }) });
    assert.equal(c.status, 201, c.text);
    assert.equal((await order.req(`/orders/${o.id}`)).json.status, 'cancelled');
    await until(async () => {
      const r = await order.req('/orders?customer_id=1500&status=cancelled');
      return r.json.items.length === 1 && r.json.items[0].id === o.id;
    }, { timeout: ms(10000), every: 50, what: 'the read model to follow the stream' });
  });

  test('concurrent commands on one order: the expected version lets exactly one win', async () => {
    for (let i = 0; i < 5; i++) {
      const o = (await place({ customer_id: 1600, items: [{ product_id: 3, quantity: 1 }], status: 'pending' })).json;
      const [confirm, cancel] = await Promise.all([
        order.req(`/orders/${o.id}/confirm`, { method: 'POST' }),
        order.req(`/orders/${o.id}/cancel`, { method: 'POST' }),
      ]);
      const won = [confirm.status, cancel.status].filter((s) => s === 200).length;
      assert.equal(won, 1, `one of confirm (${confirm.status}) and cancel (${cancel.status}) wins`);
      const s = JSON.parse((await es(`/api/streams/order-${o.id}`)).text);
      assert.equal(s.events.length, 2, 'OrderPlaced and exactly one outcome');
      assert.equal((await order.req(`/orders/${o.id}`)).json.status, confirm.status === 200 ? 'confirmed' : 'cancelled');
    }
  });

  test('a replica with an empty database rebuilds the listing from the streams', async () => {
    const mine = [];
    for (let i = 0; i < 3; i++) mine.push((await place({ customer_id: 1700, items: [{ product_id: 4, quantity: 1 }] })).json);
    await order.req(`/orders/${mine[1].id}/cancel`, { method: 'POST' });
    const fresh = await startShopService('order', { registry, env: { TRELLIS_SERVICE: 'order-rebuild', TRELLIS_EVENTSTORE: `127.0.0.1:${store.port}` } });
    try {
      const want = (await order.req('/orders?customer_id=1700')).json.items;
      assert.equal(want.length, 3);
      await until(async () => {
        const r = await fresh.req('/orders?customer_id=1700');
        return JSON.stringify(r.json.items) === JSON.stringify(want);
      }, { timeout: ms(10000), every: 100, what: 'the new replica\'s read model to match' });
      assert.deepEqual((await fresh.req(`/orders/${mine[0].id}`)).json, mine[0]);
    } finally {
      await fresh.stop();
    }
  });

  test('event store down: commands and reads by id are 503, the listing still answers', async () => {
    const o = (await place({ customer_id: 1800, items: [{ product_id: 3, quantity: 1 }], status: 'pending' })).json;
    store.proc.kill('SIGSTOP');
    // The signal is delivered a moment later: a request arriving meanwhile would still be
    // answered. Wait until every thread of the store is stopped.
    const stopped = () => readdirSync(`/proc/${store.proc.pid}/task`).every((t) =>
      /^\d+ \(.*\) T/.test(readFileSync(`/proc/${store.proc.pid}/task/${t}/stat`, 'utf8')));
    await until(stopped, { timeout: ms(5000), every: 10, what: 'the event store stopped' });
    try {
      assertProblemJson(await order.req(`/orders/${o.id}`), 503, 'store-unavailable');
      assertProblemJson(await order.req(`/orders/${o.id}/confirm`, { method: 'POST' }), 503, 'store-unavailable');
      const r = await order.req('/orders?customer_id=1800');
      assert.deepEqual(r.json.items.map((x) => x.id), [o.id]);
    } finally {
      store.proc.kill('SIGCONT');
    }
    assert.equal((await order.req(`/orders/${o.id}/confirm`, { method: 'POST' })).json.status, 'confirmed');
  });

  test('with two inventory replicas, a SIGKILLed one does not fail orders', async () => {
    await startInventory();
    await passing('inventory', 2);
    // Warm both up so that the order service's discovery knows both instances.
    for (let i = 0; i < 4; i++) assert.equal((await place({ customer_id: 700, items: [{ product_id: 6, quantity: 1 }] })).status, 201);
    await inventories[0].kill();
    for (let i = 0; i < 10; i++) {
      const r = await place({ customer_id: 701, items: [{ product_id: 6, quantity: 1 }, { product_id: 7, quantity: 1 }] });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.json.status, 'created', `order ${i} verified through the surviving replica`);
      assert.equal(r.json.stock_check, 'verified');
    }
  });

  test('inventory down: orders are pending with a deferred stock check (fallback)', async () => {
    for (const s of inventories) if (s.proc.exitCode === null && s.proc.signalCode === null) await s.stop();
    for (let i = 0; i < 5; i++) {
      const r = await place({ customer_id: 800, items: [{ product_id: 8, quantity: 1 }] });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.json.status, 'pending');
      assert.equal(r.json.stock_check, 'deferred');
      assert.equal(r.json.total_cents, r.json.items[0].unit_price_cents, 'priced from catalog all the same');
    }
    // Even product 12 (no stock) is taken: nobody could say it is out of stock.
    const r = await place({ customer_id: 800, items: [{ product_id: 12, quantity: 1 }] });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.status, 'pending');
    const m = await order.req('/metrics');
    assert.equal(m.status, 200);
    const line = m.text.split('\n').find((l) => /^trellis_app_calls_total\{/.test(l) && /target="inventory"/.test(l) && /outcome="fallback"/.test(l));
    assert.ok(line, `a fallback counter for inventory in:\n${m.text}`);
    assert.ok(Number(line.split(' ').pop()) >= 6, line);
  });

  test('inventory back: after the breaker\'s open period orders are verified again', async () => {
    await startInventory();
    await passing('inventory');
    const started = Date.now();
    const o = await until(async () => {
      const r = await place({ customer_id: 900, items: [{ product_id: 9, quantity: 1 }] });
      assert.equal(r.status, 201, r.text);
      return r.json.stock_check === 'verified' && r.json;
    }, { timeout: ms(BREAKER_OPEN_MS + 10000), every: 200, what: 'a verified order' });
    assert.equal(o.status, 'created');
    assert.ok(Date.now() - started < BREAKER_OPEN_MS + 10000);
    const oos = await place({ customer_id: 900, items: [{ product_id: 12, quantity: 1 }] });
    assertProblemJson(oos, 409, 'out-of-stock');
  });

  test('catalog down: 503 catalog-unavailable, and the order service stays up', async () => {
    await catalog.stop();
    const p = assertProblemJson(await place({ customer_id: 1000, items: [{ product_id: 1, quantity: 1 }, { product_id: 2, quantity: 1 }] }), 503, 'catalog-unavailable');
    assert.match(p.detail, /catalog/);
    assertProblemJson(await place({ customer_id: 1000, items: [{ product_id: 1, quantity: 1 }] }), 503, 'catalog-unavailable');
    const r = await order.req('/orders?customer_id=1000');
    assert.deepEqual(r.json.items, [], 'nothing was stored');
    assert.equal((await order.req('/health/live')).status, 200);
  });
});
