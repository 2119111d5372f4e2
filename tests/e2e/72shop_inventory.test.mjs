// The shop's inventory service end to end: stock, reservations (atomic, idempotent by
// order, confirm, release, lazy expiry), input validation, and two replicas seeding one
// database once.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startShopService, shopBin, assertShopProblem as assertProblemJson } from './lib/shop.mjs';
import { until, ms } from './lib/gateway.mjs';

async function stock(svc, id) {
  const r = await svc.req(`/stock/${id}`);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

function reserve(svc, json) {
  return svc.req('/reservations', { method: 'POST', json });
}

describe('shop inventory: stock and reservations', () => {
  let inv;
  before(async () => { inv = await startShopService('inventory'); });
  after(async () => { if (inv) await inv.stop(); });

  test('--help prints usage with the environment variables and exits 0', () => {
    const r = spawnSync(shopBin('inventory'), ['--help'], { encoding: 'utf8', timeout: ms(5000) });
    assert.equal(r.status, 0, r.stderr);
    for (const v of ['PORT', 'SHOP_DATA_DIR', 'TRELLIS_REGISTRY', 'TRELLIS_SERVICE']) assert.match(r.stdout, new RegExp(v));
    const bad = spawnSync(shopBin('inventory'), ['--bogus'], { encoding: 'utf8', timeout: ms(5000) });
    assert.equal(bad.status, 2);
  });

  test('seeded stock: 100 each, product 11 has 3, product 12 none', async () => {
    assert.deepEqual(await stock(inv, 1), { product_id: 1, on_hand: 100, reserved: 0, available: 100 });
    assert.deepEqual(await stock(inv, 11), { product_id: 11, on_hand: 3, reserved: 0, available: 3 });
    assert.deepEqual(await stock(inv, 12), { product_id: 12, on_hand: 0, reserved: 0, available: 0 });
  });

  test('unknown product 404, bad id 400', async () => {
    assertProblemJson(await inv.req('/stock/999'), 404, 'not-found');
    assertProblemJson(await inv.req('/stock/abc'), 400, 'bad-id');
    assertProblemJson(await inv.req('/stock/0'), 400, 'bad-id');
    assertProblemJson(await inv.req('/reservations/x'), 400, 'bad-id');
    assertProblemJson(await inv.req('/reservations/424242'), 404, 'not-found');
  });

  test('PUT /stock creates and updates the row; negative or missing on_hand is 422', async () => {
    let r = await inv.req('/stock/500', { method: 'PUT', json: { on_hand: 7 } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { product_id: 500, on_hand: 7, reserved: 0, available: 7 });
    r = await inv.req('/stock/500', { method: 'PUT', json: { on_hand: 9 } });
    assert.equal(r.json.on_hand, 9);
    assert.equal((await stock(inv, 500)).available, 9);
    for (const json of [{ on_hand: -1 }, {}, { on_hand: '5' }, { on_hand: 1.5 }]) {
      const p = assertProblemJson(await inv.req('/stock/500', { method: 'PUT', json }), 422);
      assert.match(p.detail, /on_hand/);
    }
    assertProblemJson(await inv.req('/stock/500', { method: 'PUT', body: '{nope', headers: { 'content-type': 'application/json' } }), 400);
    assert.equal((await stock(inv, 500)).on_hand, 9, 'rejected PUTs changed nothing');
  });

  test('a reservation holds stock; the same order_id again is the same reservation', async () => {
    await inv.req('/stock/501', { method: 'PUT', json: { on_hand: 10 } });
    const r = await reserve(inv, { order_id: 'ord-1', items: [{ product_id: 501, quantity: 4 }] });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers.location, `/reservations/${r.json.id}`);
    assert.equal(r.json.status, 'held');
    assert.equal(r.json.order_id, 'ord-1');
    assert.deepEqual(r.json.items, [{ product_id: 501, quantity: 4 }]);
    assert.match(r.json.expires_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    const exp = Date.parse(r.json.expires_at) - Date.now();
    assert.ok(exp > 890_000 && exp < 910_000, `default ttl is 900 s: ${r.json.expires_at}`);
    assert.deepEqual(await stock(inv, 501), { product_id: 501, on_hand: 10, reserved: 4, available: 6 });

    const again = await reserve(inv, { order_id: 'ord-1', items: [{ product_id: 501, quantity: 4 }] });
    assert.equal(again.status, 200, again.text);
    assert.equal(again.json.id, r.json.id);
    assert.equal((await stock(inv, 501)).available, 6, 'the repeat reserved nothing more');

    const got = await inv.req(`/reservations/${r.json.id}`);
    assert.equal(got.status, 200);
    assert.deepEqual(got.json, r.json);
  });

  test('insufficient stock is 409 naming the product, and nothing is reserved', async () => {
    await inv.req('/stock/502', { method: 'PUT', json: { on_hand: 5 } });
    await inv.req('/stock/503', { method: 'PUT', json: { on_hand: 2 } });
    const r = await reserve(inv, { order_id: 'ord-2', items: [{ product_id: 502, quantity: 5 }, { product_id: 503, quantity: 3 }] });
    const p = assertProblemJson(r, 409, 'insufficient-stock');
    assert.match(p.detail, /product 503/);
    assert.equal((await stock(inv, 502)).available, 5, 'the first item was not held either');
    assert.equal((await stock(inv, 503)).available, 2);
    // The order can reserve once it asks for what there is; unknown products count as none.
    const none = assertProblemJson(await reserve(inv, { order_id: 'ord-2', items: [{ product_id: 9999, quantity: 1 }] }), 409, 'insufficient-stock');
    assert.match(none.detail, /product 9999/);
    const ok = await reserve(inv, { order_id: 'ord-2', items: [{ product_id: 502, quantity: 5 }, { product_id: 503, quantity: 2 }] });
    assert.equal(ok.status, 201, ok.text);
    assertProblemJson(await reserve(inv, { order_id: 'ord-3', items: [{ product_id: 502, quantity: 1 }] }), 409, 'insufficient-stock');
  });

  test('confirm lowers on_hand; release is idempotent; confirm after release is 409', async () => {
    await inv.req('/stock/504', { method: 'PUT', json: { on_hand: 10 } });
    const a = (await reserve(inv, { order_id: 42, items: [{ product_id: 504, quantity: 3 }] })).json;
    assert.equal(a.order_id, 42, 'an integer order_id stays an integer');
    let r = await inv.req(`/reservations/${a.id}/confirm`, { method: 'POST' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'confirmed');
    assert.deepEqual(await stock(inv, 504), { product_id: 504, on_hand: 7, reserved: 0, available: 7 });
    r = await inv.req(`/reservations/${a.id}/confirm`, { method: 'POST' });
    assert.equal(r.status, 200, 'confirming twice is harmless');
    assert.equal((await stock(inv, 504)).on_hand, 7, 'and takes stock once');
    assertProblemJson(await inv.req(`/reservations/${a.id}`, { method: 'DELETE' }), 409, 'reservation-confirmed');

    const b = (await reserve(inv, { order_id: 43, items: [{ product_id: 504, quantity: 2 }] })).json;
    assert.equal((await stock(inv, 504)).available, 5);
    r = await inv.req(`/reservations/${b.id}`, { method: 'DELETE' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'released');
    assert.equal((await stock(inv, 504)).available, 7);
    r = await inv.req(`/reservations/${b.id}`, { method: 'DELETE' });
    assert.equal(r.status, 200);
    assert.equal(r.json.status, 'released');
    const p = assertProblemJson(await inv.req(`/reservations/${b.id}/confirm`, { method: 'POST' }), 409, 'reservation-not-held');
    assert.match(p.detail, /released/);
    assert.equal((await stock(inv, 504)).on_hand, 7, 'a refused confirm took nothing');
    assertProblemJson(await inv.req('/reservations/999999/confirm', { method: 'POST' }), 404);
    assertProblemJson(await inv.req('/reservations/999999', { method: 'DELETE' }), 404);
  });

  test('a reservation past its ttl expires: stock is available again, confirm is 409', async () => {
    await inv.req('/stock/505', { method: 'PUT', json: { on_hand: 4 } });
    const started = Date.now();
    const r = await reserve(inv, { order_id: 'ord-ttl', ttl_seconds: 1, items: [{ product_id: 505, quantity: 4 }] });
    assert.equal(r.status, 201, r.text);
    assert.equal((await stock(inv, 505)).available, 0);
    assertProblemJson(await reserve(inv, { order_id: 'other', items: [{ product_id: 505, quantity: 1 }] }), 409);
    await until(async () => (await stock(inv, 505)).available === 4, { timeout: ms(3000), every: 50, what: 'expiry' });
    assert.ok(Date.now() - started >= 900, 'not before the ttl');
    const got = await inv.req(`/reservations/${r.json.id}`);
    assert.equal(got.json.status, 'expired');
    const p = assertProblemJson(await inv.req(`/reservations/${r.json.id}/confirm`, { method: 'POST' }), 409, 'reservation-not-held');
    assert.match(p.detail, /expired/);
    assert.equal((await stock(inv, 505)).on_hand, 4);
  });

  test('bad reservation bodies are 422 naming the field, non-JSON 400', async () => {
    const cases = [
      [{ items: [{ product_id: 1, quantity: 1 }] }, /order_id/],
      [{ order_id: '', items: [{ product_id: 1, quantity: 1 }] }, /order_id/],
      [{ order_id: 'b' }, /items/],
      [{ order_id: 'b', items: [] }, /items/],
      [{ order_id: 'b', items: [{ product_id: 0, quantity: 1 }] }, /items\[0\]\.product_id/],
      [{ order_id: 'b', items: [{ product_id: 1, quantity: 0 }] }, /items\[0\]\.quantity/],
      [{ order_id: 'b', items: [{ product_id: 1, quantity: 1 }, { product_id: 2, quantity: 'x' }] }, /items\[1\]\.quantity/],
      [{ order_id: 'b', items: [{ product_id: 1, quantity: 1 }, { product_id: 1, quantity: 1 }] }, /items\[1\]\.product_id/],
      [{ order_id: 'b', items: [{ product_id: 1, quantity: 1 }], ttl_seconds: 0 }, /ttl_seconds/],
    ];
    for (const [json, re] of cases) {
      const p = assertProblemJson(await reserve(inv, json), 422);
      assert.match(p.detail, re, JSON.stringify(json));
    }
    assertProblemJson(await reserve(inv, [1, 2]), 400); // not an object: the SDK refuses it
    assertProblemJson(await inv.req('/reservations', { method: 'POST', body: 'not json', headers: { 'content-type': 'application/json' } }), 400);
    assert.equal((await stock(inv, 1)).reserved, 0, 'nothing was reserved by bad requests');
  });
});

describe('shop inventory: two replicas on one database', () => {
  let dir;
  const svcs = [];
  before(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'shop-inv-shared-')); });
  after(async () => {
    for (const s of svcs) await s.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('started together they seed once and see each other\'s reservations', async () => {
    // Both start before either serves: the second is spawned while the first migrates.
    const first = startShopService('inventory', { dataDir: dir });
    await new Promise((r) => setTimeout(r, 5));
    svcs.push(...await Promise.all([first, startShopService('inventory', { dataDir: dir })]));
    assert.notEqual(svcs[0].port, svcs[1].port);
    const [a, b] = svcs;
    assert.deepEqual(await stock(a, 5), { product_id: 5, on_hand: 100, reserved: 0, available: 100 });
    // A second seed would have failed on the primary key, and stopped one replica.
    assert.equal(a.proc.exitCode, null);
    assert.equal(b.proc.exitCode, null);
    const r = await reserve(a, { order_id: 'shared', items: [{ product_id: 5, quantity: 30 }] });
    assert.equal(r.status, 201, r.text);
    assert.equal((await stock(b, 5)).available, 70);
    const again = await reserve(b, { order_id: 'shared', items: [{ product_id: 5, quantity: 30 }] });
    assert.equal(again.status, 200);
    assert.equal(again.json.id, r.json.id);
    // Both replicas hammering one product never oversell it.
    await a.req('/stock/6', { method: 'PUT', json: { on_hand: 10 } });
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => reserve(i % 2 ? a : b, { order_id: `race-${i}`, items: [{ product_id: 6, quantity: 1 }] })));
    assert.equal(results.filter((x) => x.status === 201).length, 10, results.map((x) => x.status).join(','));
    assert.equal(results.filter((x) => x.status === 409).length, 10);
    assert.equal((await stock(a, 6)).available, 0);
  });
});
