// The chaos test on the shop itself: concurrent create-order sagas (the saga of
// examples/shop/topology.yaml, against the real order, inventory and payment services)
// while `trellis up` is SIGKILLed and restarted 5 times at random moments. Every saga must
// end completed or compensated, and the services' own ledgers must agree: a completed
// saga's order is confirmed, its reservation confirmed and exactly one charge captured; a
// compensated saga's order is cancelled, its reservation released (or never made) and no
// charge captured; stock on hand fell by exactly the completed sagas' quantities.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startUp } from './lib/up.mjs';
import { BIN, SANITIZED, ms, sleep, withDeadline } from './lib/trellis.mjs';
import { request } from './lib/gateway.mjs';
import { shopBin } from './lib/shop.mjs';

// The size, 500 (about 35 s here); 150 under ASan, whose services are several times
// slower. TRELLIS_CHAOS_SAGAS sets another.
const SAGAS = Number(process.env.TRELLIS_CHAOS_SAGAS) || (SANITIZED ? 150 : 500);
const KILLS = 5;
const TOPOLOGY = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../examples/shop/topology.yaml');

/** The shop's create-order saga as the topology defines it (through `trellis up --check`). */
function shopSaga() {
  const r = spawnSync(BIN, ['up', TOPOLOGY, '--check'], { encoding: 'utf8', timeout: 15000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout).sagas['create-order'];
}

test(`chaos on the shop: ${SAGAS} create-order sagas, trellis up SIGKILLed ${KILLS} times`, { timeout: ms(300000) }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-shop-chaos-'));
  const service = (name) => ({
    command: shopBin(name), env: { SHOP_DATA_DIR: path.join(dir, 'shop'), TRELLIS_LOG_LEVEL: 'warn' },
    probes: { readiness: { http: '/health/ready', period: '200ms' } },
  });
  const topology = {
    control_plane: { data_dir: path.join(dir, 'data') },
    services: { catalog: service('catalog'), inventory: service('inventory'), payment: service('payment'),
      order: { ...service('order'), depends_on: ['catalog', 'inventory'] } },
    sagas: { 'create-order': shopSaga() },
  };
  let up;
  try {
    up = await startUp(topology, { startTimeout: ms(30000) });
    const port = async (svc) => (await up.services()).find((s) => s.name === svc).instances.find((i) => i.ready).port;
    const stockBefore = {};
    for (let p = 1; p <= 10; p++) stockBefore[p] = (await request(await port('inventory'), `/stock/${p}`)).json.on_hand;

    const ids = new Array(SAGAS);
    let killing = false;
    const startOne = async (i) => {
      for (;;) {
        try {
          if (!killing) {
            const r = await request(up.apiPort, '/api/sagas/create-order', { method: 'POST', timeout: ms(5000),
              headers: { 'content-type': 'application/json', 'idempotency-key': `shop-chaos-${i}` },
              body: JSON.stringify({ customer_id: 1, items: [{ product_id: 1 + (i % 10), quantity: 1 }],
                card: i % 10 === 3 ? '4000000000000002' : '4242424242424242' }) });
            if (r.status === 202 || r.status === 200) { ids[i] = r.json.id; return; }
          }
        } catch { /* killed meanwhile: the same key again */ }
        await sleep(50);
      }
    };
    const starters = (async () => {
      let next = 0;
      await Promise.all(Array.from({ length: 20 }, async () => { while (next < SAGAS) await startOne(next++); }));
    })();
    for (let k = 0; k < KILLS; k++) {
      await sleep(200 + Math.random() * 800);
      killing = true;
      up.kill();
      await withDeadline(up.exited, ms(5000), 'trellis up killed');
      up.cleanup();
      up = await startUp(topology, { startTimeout: ms(30000) });
      killing = false;
    }
    await withDeadline(starters, ms(60000), 'every saga accepted');
    const list = async () => (await up.api('/api/sagas?name=create-order&limit=1000')).json.sagas;
    const deadline = Date.now() + ms(120000);
    let all = await list();
    while (all.filter((s) => s.state === 'completed' || s.state === 'compensated').length < SAGAS && Date.now() < deadline) {
      await sleep(500);
      all = await list();
    }
    const byState = {};
    for (const s of all) byState[s.state] = (byState[s.state] || 0) + 1;
    assert.equal(all.length, SAGAS, 'one saga per start, through every retry');
    assert.equal((byState.completed || 0) + (byState.compensated || 0), SAGAS, `every saga ended: ${JSON.stringify(byState)}`);

    const ports = { order: await port('order'), inventory: await port('inventory'), payment: await port('payment') };
    const sold = {};
    for (const { id } of all) {
      const s = (await up.api(`/api/sagas/${id}`)).json;
      const step = (name) => s.steps.find((x) => x.name === name);
      const orderId = step('order').action.response?.id;
      const order = orderId ? (await request(ports.order, `/orders/${orderId}`)).json : null;
      const resvId = step('reserve').action.response?.id;
      const resv = resvId ? (await request(ports.inventory, `/reservations/${resvId}`)).json : null;
      const charges = orderId ? (await request(ports.payment, `/charges?order_id=${orderId}`)).json.items : [];
      const captured = charges.filter((c) => c.status === 'captured');
      if (s.state === 'completed') {
        assert.equal(order?.status, 'confirmed', `saga ${id}: order confirmed`);
        assert.equal(resv?.status, 'confirmed', `saga ${id}: reservation confirmed`);
        assert.equal(captured.length, 1, `saga ${id}: charged exactly once`);
        const item = s.input.items[0];
        sold[item.product_id] = (sold[item.product_id] || 0) + item.quantity;
      } else {
        assert.ok(!order || order.status === 'cancelled', `saga ${id}: order cancelled (${order?.status})`);
        assert.ok(!resv || resv.status === 'released' || resv.status === 'expired', `saga ${id}: no stock held (${resv?.status})`);
        assert.equal(captured.length, 0, `saga ${id}: no charge without an order`);
      }
    }
    for (let p = 1; p <= 10; p++) {
      const now = (await request(ports.inventory, `/stock/${p}`)).json;
      assert.equal(now.on_hand, stockBefore[p] - (sold[p] || 0), `product ${p}: on hand fell by what was sold`);
      assert.equal(now.reserved, 0, `product ${p}: nothing left reserved`);
    }
    console.log(`# shop chaos: ${SAGAS} sagas, ${KILLS} kills, ${JSON.stringify(byState)}`);
    await up.stop();
  } finally {
    if (up) {
      up.kill();
      up.cleanup();
    }
    rmSync(dir, { recursive: true, force: true });
  }
});
