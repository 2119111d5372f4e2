// The shop's payment service end to end: charges idempotent by Idempotency-Key (replay,
// reuse with another body, concurrent duplicates), one captured charge per order, the demo
// cards (declined, hanging), refunds, validation, and data surviving a restart.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startShopService, assertShopProblem } from './lib/shop.mjs';
import { request, ms, until } from './lib/gateway.mjs';

const CARD = '4242424242424242';
const DECLINED = '4000000000000002';
const HANGS = '4000000000000003';
let seq = 0;
const newKey = () => `test-${process.pid}-${++seq}`;

function charge(svc, json, key = newKey()) {
  return svc.req('/charges', { method: 'POST', json, headers: key ? { 'idempotency-key': key } : {} });
}

function refund(svc, id, key = newKey()) {
  return svc.req(`/charges/${id}/refund`, { method: 'POST', headers: key ? { 'idempotency-key': key } : {} });
}

async function chargesOf(svc, orderId) {
  const r = await svc.req(`/charges?order_id=${encodeURIComponent(orderId)}`);
  assert.equal(r.status, 200, r.text);
  return r.json.items;
}

describe('shop payment: charges and refunds', () => {
  let pay;
  before(async () => { pay = await startShopService('payment'); });
  after(async () => { if (pay) await pay.stop(); });

  test('a charge is captured: 201 with the charge, readable by id and by order', async () => {
    const key = newKey();
    const r = await charge(pay, { order_id: 101, amount_cents: 2599, card: CARD }, key);
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers['idempotent-replayed'], undefined, 'a first answer is not a replay');
    assert.equal(r.headers.location, `/charges/${r.json.id}`);
    const { id, created_at: createdAt, ...rest } = r.json;
    assert.ok(Number.isInteger(id) && id > 0);
    assert.match(createdAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.deepEqual(rest, {
      order_id: 101, amount_cents: 2599, currency: 'EUR', status: 'captured', card_last4: '4242', idempotency_key: key,
    });
    assert.equal(r.text.includes(CARD), false, 'the card number is not echoed');
    const got = await pay.req(`/charges/${id}`);
    assert.equal(got.status, 200, got.text);
    assert.deepEqual(got.json, r.json);
    assert.deepEqual(await chargesOf(pay, 101), [r.json]);
  });

  test('the same key and body again: the stored answer, replayed, and no second charge', async () => {
    const key = newKey();
    const body = { order_id: 'ord-102', amount_cents: 500, card: CARD, currency: 'usd' };
    const first = await charge(pay, body, key);
    assert.equal(first.status, 201, first.text);
    assert.equal(first.json.currency, 'USD');
    for (let i = 0; i < 3; i++) {
      const again = await charge(pay, body, key);
      assert.equal(again.status, 201, again.text);
      assert.equal(again.headers['idempotent-replayed'], 'true');
      assert.deepEqual(again.json, first.json);
    }
    assert.equal((await chargesOf(pay, 'ord-102')).length, 1);
  });

  test('the same key with another body is 409 idempotency-key-reused, and changes nothing', async () => {
    const key = newKey();
    const first = await charge(pay, { order_id: 103, amount_cents: 700, card: CARD }, key);
    assert.equal(first.status, 201, first.text);
    for (const json of [
      { order_id: 103, amount_cents: 701, card: CARD },
      { order_id: 104, amount_cents: 700, card: CARD },
      { order_id: 103, amount_cents: 700, card: '5555555555554444' },
      { order_id: 103, amount_cents: 700, card: CARD, currency: 'GBP' },
    ]) {
      const p = assertShopProblem(await charge(pay, json, key), 409, 'idempotency-key-reused');
      assert.match(p.detail, new RegExp(key));
    }
    assert.equal((await chargesOf(pay, 103)).length, 1);
    assert.deepEqual(await chargesOf(pay, 104), []);
  });

  test('a second charge for the same order under another key is 409 already-charged', async () => {
    const first = await charge(pay, { order_id: 105, amount_cents: 900, card: CARD });
    assert.equal(first.status, 201, first.text);
    const p = assertShopProblem(await charge(pay, { order_id: 105, amount_cents: 900, card: CARD }), 409, 'already-charged');
    assert.equal(p.charge_id, first.json.id);
    assert.match(p.detail, new RegExp(`${first.json.id}`));
    assert.equal((await chargesOf(pay, 105)).length, 1);
  });

  test('a card ending in 0002 is declined: 402, recorded, and the same key gives 402 again', async () => {
    const key = newKey();
    const body = { order_id: 106, amount_cents: 1200, card: DECLINED };
    const p = assertShopProblem(await charge(pay, body, key), 402, 'card-declined');
    assert.match(p.detail, /0002/);
    const again = await charge(pay, body, key);
    const p2 = assertShopProblem(again, 402, 'card-declined');
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.deepEqual(p2, p);
    const items = await chargesOf(pay, 106);
    assert.equal(items.length, 1);
    assert.equal(items[0].status, 'declined');
    assert.equal(items[0].id, p.charge_id);
    // A declined charge does not count as the order's charge: a good card may follow.
    const ok = await charge(pay, { order_id: 106, amount_cents: 1200, card: CARD });
    assert.equal(ok.status, 201, ok.text);
  });

  test('a card ending in 0003 hangs: no answer within 2 s, the service stays healthy; a caller that gives up is never charged', async () => {
    const body = JSON.stringify({ order_id: 107, amount_cents: 300, card: HANGS });
    const key = newKey();
    const hung = request(pay.port, '/charges', {
      method: 'POST', body, timeout: 2000,
      headers: { 'content-type': 'application/json', 'idempotency-key': key },
    });
    const outcome = hung.then((r) => `answered ${r.status}`, (e) => e);
    const ready = await pay.req('/health/ready');
    assert.equal(ready.status, 200, 'ready while a charge hangs');
    assert.equal((await pay.req('/charges?order_id=101')).status, 200, 'other requests are served meanwhile');
    const res = await outcome;
    assert.ok(res instanceof Error, `the hanging charge must not answer within 2 s, but it ${res}`);
    assert.match(res.message, /deadline|timed out|timeout/i);
    // The caller went away: the charge is recorded as abandoned (nothing captured), so a
    // retry with the same key (a saga's) learns for sure that nothing was charged.
    const recorded = await until(async () => {
      const list = await chargesOf(pay, 107);
      return list.length ? list : undefined;
    }, { timeout: 5000, what: 'the abandoned charge recorded' });
    assert.deepEqual(recorded.map((c) => c.status), ['abandoned']);
    const again = await request(pay.port, '/charges', { method: 'POST', body, timeout: 5000,
      headers: { 'content-type': 'application/json', 'idempotency-key': key } });
    assertShopProblem(again, 402, 'charge-abandoned');
    assert.equal((await pay.req('/health/ready')).status, 200);
  });

  test('refund: 200 refunded, again 200 the same; a declined charge 409; unknown 404', async () => {
    const c = await charge(pay, { order_id: 108, amount_cents: 4000, card: CARD });
    assert.equal(c.status, 201, c.text);
    const key = newKey();
    const r = await refund(pay, c.json.id, key);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { ...c.json, status: 'refunded' });
    const same = await refund(pay, c.json.id, key);
    assert.equal(same.status, 200, same.text);
    assert.deepEqual(same.json, r.json);
    const otherKey = await refund(pay, c.json.id);
    assert.equal(otherKey.status, 200, otherKey.text);
    assert.deepEqual(otherKey.json, r.json);
    assert.equal((await pay.req(`/charges/${c.json.id}`)).json.status, 'refunded');

    const d = assertShopProblem(await charge(pay, { order_id: 109, amount_cents: 100, card: DECLINED }), 402);
    assertShopProblem(await refund(pay, d.charge_id), 409, 'charge-declined');
    assertShopProblem(await refund(pay, 987654), 404, 'not-found');
    assertShopProblem(await refund(pay, 'abc'), 400, 'bad-id');
  });

  test('a missing Idempotency-Key is 400, for charges and refunds', async () => {
    assertShopProblem(await charge(pay, { order_id: 110, amount_cents: 100, card: CARD }, null), 400, 'idempotency-key-required');
    assertShopProblem(await refund(pay, 1, null), 400, 'idempotency-key-required');
    assert.deepEqual(await chargesOf(pay, 110), []);
  });

  test('each invalid field is 422 naming it', async () => {
    const ok = { order_id: 111, amount_cents: 100, card: CARD };
    const cases = [
      [{ ...ok, order_id: undefined }, 'order_id'], [{ ...ok, order_id: 0 }, 'order_id'],
      [{ ...ok, order_id: -3 }, 'order_id'], [{ ...ok, order_id: '' }, 'order_id'],
      [{ ...ok, order_id: 1.5 }, 'order_id'], [{ ...ok, order_id: {} }, 'order_id'],
      [{ ...ok, amount_cents: undefined }, 'amount_cents'], [{ ...ok, amount_cents: 0 }, 'amount_cents'],
      [{ ...ok, amount_cents: 10_000_001 }, 'amount_cents'], [{ ...ok, amount_cents: '100' }, 'amount_cents'],
      [{ ...ok, amount_cents: 9.5 }, 'amount_cents'],
      [{ ...ok, card: undefined }, 'card'], [{ ...ok, card: '42424242424' }, 'card'],
      [{ ...ok, card: '42424242424242424242' }, 'card'], [{ ...ok, card: '4242-4242-4242-4242' }, 'card'],
      [{ ...ok, card: 4242424242424242 }, 'card'],
      [{ ...ok, currency: 'EU' }, 'currency'], [{ ...ok, currency: 'EURO' }, 'currency'],
      [{ ...ok, currency: 'E1R' }, 'currency'], [{ ...ok, currency: 978 }, 'currency'],
    ];
    for (const [json, field] of cases) {
      const p = assertShopProblem(await charge(pay, json), 422);
      assert.match(p.detail, new RegExp(`"${field}"`), `${JSON.stringify(json)}: ${p.detail}`);
    }
    assert.equal((await charge(pay, { ...ok, amount_cents: 10_000_000, card: '424242424242' })).status, 201);
    assertShopProblem(await pay.req('/charges', { method: 'POST', body: '{nope', headers: { 'content-type': 'application/json', 'idempotency-key': newKey() } }), 400);
    assertShopProblem(await pay.req('/charges', { method: 'POST', headers: { 'idempotency-key': newKey() } }), 422);
  });

  test('bad id 400, unknown 404', async () => {
    for (const id of ['abc', '0', '-1', '1.5']) assertShopProblem(await pay.req(`/charges/${id}`), 400, 'bad-id');
    assertShopProblem(await pay.req('/charges/987654'), 404, 'not-found');
  });

  test('20 concurrent identical requests with one key make exactly one charge', async () => {
    const key = newKey();
    const body = { order_id: 'ord-112', amount_cents: 1500, card: CARD };
    const all = await Promise.all(Array.from({ length: 20 }, () => charge(pay, body, key)));
    for (const r of all) assert.equal(r.status, 201, r.text);
    assert.equal(new Set(all.map((r) => r.json.id)).size, 1, 'one charge id for all');
    assert.equal(all.filter((r) => r.headers['idempotent-replayed'] !== 'true').length, 1, 'one original answer');
    assert.equal((await chargesOf(pay, 'ord-112')).length, 1);
  });
});

describe('shop payment: durability', () => {
  test('charges and their idempotency survive a restart with the same data dir', async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'shop-payment-restart-'));
    let svc;
    try {
      svc = await startShopService('payment', { dataDir });
      const key = newKey();
      const body = { order_id: 201, amount_cents: 800, card: CARD };
      const first = await charge(svc, body, key);
      assert.equal(first.status, 201, first.text);
      const declined = await charge(svc, { order_id: 202, amount_cents: 800, card: DECLINED });
      assertShopProblem(declined, 402);
      await svc.stop();
      svc = await startShopService('payment', { dataDir });
      assert.deepEqual((await svc.req(`/charges/${first.json.id}`)).json, first.json);
      const again = await charge(svc, body, key);
      assert.equal(again.status, 201, again.text);
      assert.equal(again.headers['idempotent-replayed'], 'true');
      assert.deepEqual(again.json, first.json);
      assertShopProblem(await charge(svc, body), 409, 'already-charged');
      assertShopProblem(await charge(svc, { ...body, amount_cents: 1 }, key), 409, 'idempotency-key-reused');
      assert.equal((await chargesOf(svc, 202))[0].status, 'declined');
    } finally {
      if (svc) await svc.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test('a stop while a charge hangs is prompt: the hanging request gets 503', { timeout: ms(20000) }, async () => {
    const svc = await startShopService('payment');
    const hung = request(svc.port, '/charges', {
      method: 'POST', timeout: ms(8000),
      body: JSON.stringify({ order_id: 203, amount_cents: 300, card: HANGS }),
      headers: { 'content-type': 'application/json', 'idempotency-key': newKey() },
    }).then((r) => r, (e) => e);
    await svc.waitLog(/answering in 30 s/, ms(5000));
    const started = Date.now();
    await svc.stop();
    assert.ok(Date.now() - started < ms(5000), 'the stop does not wait out the hang');
    const r = await hung;
    assert.ok(!(r instanceof Error), `the hanging request is answered at stop: ${r}`);
    assertShopProblem(r, 503, 'stopping');
  });
});
