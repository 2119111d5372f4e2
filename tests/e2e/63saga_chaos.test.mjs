// Chaos: 500 create-order sagas while `trellis up` (the orchestrator) is SIGKILLed and
// restarted 5 times at random moments. Every saga must end completed or compensated, and
// the participants' ledgers must agree: a confirmed order has its stock reserved and exactly
// one charge; a cancelled order has no reservation left and no charge; no charge without a
// confirmed order. Participants keep their effects idempotent by Idempotency-Key, as
// docs/sagas.md requires, and answer slowly (30–120 ms, now and then with a 503) so that sagas are
// in flight at every kill.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startUp, echoService } from './lib/up.mjs';
import { ms, sleep, withDeadline, SANITIZED } from './lib/trellis.mjs';
import { request, until } from './lib/gateway.mjs';

const SAGAS = SANITIZED ? 200 : 500;
const KILLS = 5;

/** The three participants in one server: order, inventory and payment ledgers. */
function shopLedgers() {
  const orders = new Map(); // saga id → {status}
  const reservations = new Map(); // saga id → 'held' | 'released'
  const charges = new Map(); // saga id → count of distinct charges made
  const effects = new Map(); // idempotency key → the first answer (replayed for repeats)
  const stats = { repeats: 0, inflight: 0, kills: 0, midstep: 0 };
  const server = http.createServer((req, res) => {
    let body = '';
    stats.inflight++;
    res.on('close', () => { stats.inflight--; });
    req.on('data', (d) => { body += d; });
    req.on('end', () => setTimeout(() => {
      const key = req.headers['idempotency-key'] || '';
      const sagaId = key.split(':')[0];
      const send = (status, obj) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      if (Math.random() < 0.03) return send(503, { error: 'transient' });
      if (effects.has(key)) {
        stats.repeats++;
        return send(...effects.get(key));
      }
      const input = body ? JSON.parse(body) : {};
      let answer;
      const p = req.url.split('/').filter(Boolean);
      if (p[0] === 'orders' && p.length === 1) { orders.set(sagaId, { status: 'pending' }); answer = [201, { id: sagaId }]; }
      else if (p[0] === 'orders' && p[2] === 'confirm') { orders.get(p[1]).status = 'confirmed'; answer = [200, {}]; }
      else if (p[0] === 'orders' && p[2] === 'cancel') { if (orders.has(p[1])) orders.get(p[1]).status = 'cancelled'; answer = [200, {}]; }
      else if (p[0] === 'reserve' && req.method === 'POST') { reservations.set(sagaId, 'held'); answer = [201, { id: sagaId }]; }
      else if (p[0] === 'reserve' && req.method === 'DELETE') { if (reservations.has(p[1])) reservations.set(p[1], 'released'); answer = [200, {}]; }
      else if (p[0] === 'charge') {
        if (input.decline) answer = [402, { error: 'declined' }];
        else { charges.set(sagaId, (charges.get(sagaId) || 0) + 1); answer = [201, { id: sagaId }]; }
      } else answer = [404, {}];
      effects.set(key, answer);
      send(...answer);
    }, 30 + Math.random() * 90));
  });
  return { orders, reservations, charges, stats, listen: () => new Promise((r) => server.listen(0, '127.0.0.1', () => r(server.address().port))),
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

const svc = (service, method, p, body) => ({ service, method, path: p, ...(body ? { body } : {}) });
const CREATE_ORDER = {
  max_compensation_attempts: 1000,
  steps: [
    // The order and the reservation at the same time (a parallel group): a kill can catch
    // both in flight, and both are sent again.
    { parallel: [
      { name: 'order', action: svc('shop', 'POST', '/orders', { n: '${input.n}' }), compensation: svc('shop', 'POST', '/orders/${saga.id}/cancel'), retry: { attempts: 5, backoff: '20ms' } },
      { name: 'reserve', action: svc('shop', 'POST', '/reserve'), compensation: svc('shop', 'DELETE', '/reserve/${saga.id}'), retry: { attempts: 5, backoff: '20ms' } },
    ] },
    { name: 'charge', pivot: true, action: svc('shop', 'POST', '/charge', { decline: '${input.decline}' }), retry: { attempts: 5, backoff: '20ms' } },
    { name: 'confirm', action: svc('shop', 'POST', '/orders/${saga.id}/confirm'), retry: { attempts: 5, backoff: '20ms' } },
  ],
};

test(`chaos: ${SAGAS} sagas, trellis up SIGKILLed ${KILLS} times: every saga ends, the ledgers agree`, { timeout: ms(240000) }, async () => {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'trellis-chaos-'));
  const shop = shopLedgers();
  const port = await shop.listen();
  let up;
  const boot = async () => {
    up = await startUp({ control_plane: { data_dir: dataDir }, services: { echo: echoService() }, sagas: { 'create-order': CREATE_ORDER } });
    const r = await up.api('/v1/agent/service/register', { method: 'PUT', body: JSON.stringify({ ID: 'shop-1', Name: 'shop', Address: '127.0.0.1', Port: port }) });
    assert.equal(r.status, 200);
  };
  try {
    await boot();
    const ids = new Array(SAGAS);
    let killing = false;
    /** Starts saga i, retrying through kills; the Idempotency-Key makes a retry the same saga. */
    const startOne = async (i) => {
      for (;;) {
        try {
          if (!killing) {
            const r = await request(up.apiPort, '/api/sagas/create-order', { method: 'POST', timeout: ms(5000),
              headers: { 'content-type': 'application/json', 'idempotency-key': `chaos-${i}` },
              body: JSON.stringify({ n: i, decline: i % 10 === 3 }) });
            if (r.status === 202 || r.status === 200) { ids[i] = r.json.id; return; }
          }
        } catch { /* killed meanwhile: try again */ }
        await sleep(50);
      }
    };
    const starters = (async () => {
      let next = 0;
      await Promise.all(Array.from({ length: 40 }, async () => { while (next < SAGAS) await startOne(next++); }));
    })();
    for (let k = 0; k < KILLS; k++) {
      await sleep(50 + Math.random() * 250);
      // Preferably while steps are in flight (held by the participant), so some are sent again.
      const busy = await until(async () => shop.stats.inflight > 0, { timeout: ms(1000), every: 2, what: 'a step in flight' }).catch(() => false);
      if (busy) shop.stats.midstep++;
      shop.stats.kills++;
      killing = true;
      up.kill();
      await withDeadline(up.exited, ms(5000), 'trellis up killed');
      await boot();
      killing = false;
    }
    await withDeadline(starters, ms(60000), 'every saga accepted');
    const ended = async () => {
      const r = await up.api(`/api/sagas?name=create-order&limit=1000`);
      return r.json.sagas.filter((s) => s.state === 'completed' || s.state === 'compensated').length;
    };
    const deadline = Date.now() + ms(90000);
    while ((await ended()) < SAGAS && Date.now() < deadline) await sleep(200);
    const all = (await up.api('/api/sagas?name=create-order&limit=1000')).json.sagas;
    assert.equal(all.length, SAGAS, 'exactly one saga per start, through every retry');
    const byState = {};
    for (const s of all) byState[s.state] = (byState[s.state] || 0) + 1;
    assert.equal((byState.completed || 0) + (byState.compensated || 0), SAGAS, `every saga ended: ${JSON.stringify(byState)}`);
    for (const s of all) {
      const order = shop.orders.get(s.id);
      const charges = shop.charges.get(s.id) || 0;
      if (s.state === 'completed') {
        assert.equal(order?.status, 'confirmed', `saga ${s.id}: completed, its order confirmed`);
        assert.equal(shop.reservations.get(s.id), 'held', `saga ${s.id}: stock stays reserved`);
        assert.equal(charges, 1, `saga ${s.id}: charged exactly once`);
      } else {
        assert.ok(!order || order.status === 'cancelled', `saga ${s.id}: compensated, its order cancelled (${order?.status})`);
        assert.ok(shop.reservations.get(s.id) !== 'held', `saga ${s.id}: no stock left reserved`);
        assert.equal(charges, 0, `saga ${s.id}: no charge without an order`);
      }
    }
    // Every declined card compensates; on a slow machine a step may also exhaust its retries
    // across the restarts and compensate: allowed, as long as the ledgers agree (above).
    assert.ok(byState.compensated >= SAGAS / 10, `at least the declined cards were compensated: ${JSON.stringify(byState)}`);
    assert.equal(shop.stats.kills, KILLS);
    assert.ok(shop.stats.midstep > 0 && shop.stats.repeats > 0, `kills (${shop.stats.midstep} of ${KILLS}) caught steps in flight, which were sent again`);
    console.log(`# chaos: ${SAGAS} sagas, ${shop.stats.kills} kills (${shop.stats.midstep} mid-step), ${JSON.stringify(byState)}, ${shop.stats.repeats} step calls repeated after kills`);
    await up.stop();
  } finally {
    if (up) up.kill();
    await shop.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
