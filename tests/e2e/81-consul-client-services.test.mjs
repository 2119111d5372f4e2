// Interop: service registration and discovery with the npm `consul` package (2.x), written
// the way Consul's users write it, against `trellis registry`. The instances are real
// `trellis echo` processes whose /status/{code} endpoint is the health check target.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Consul from 'consul';
import { startRegistry, ms, sleep } from './lib/registry.mjs';
import { startEcho } from './lib/trellis.mjs';

/** A small registry client as an application would have it. */
class ServiceRegistry {
  constructor(consul) {
    this.consul = consul;
  }

  /** Registers one instance with an HTTP health check. */
  async register({ id, name, address, port, tags = [], healthUrl }) {
    await this.consul.agent.service.register({
      id,
      name,
      address,
      port,
      tags,
      // Applications use interval '10s'; '1s' keeps the test fast.
      check: { http: healthUrl, interval: '1s', timeout: '5s' },
    });
  }

  /** The healthy instances of a service. */
  async instances(service) {
    const entries = await this.consul.health.service({ service, passing: true });
    return entries.map((e) => ({
      id: e.Service.ID,
      address: e.Service.Address || e.Node.Address,
      port: e.Service.Port,
    }));
  }

  /** Picks one healthy instance at random, or null when there is none. */
  async pick(service) {
    const list = await this.instances(service);
    if (list.length === 0) return null;
    return list[Math.floor(Math.random() * list.length)];
  }

  async deregister(id) {
    await this.consul.agent.service.deregister(id);
  }
}

/** Polls fn() every 100 ms until pred(value); fails after timeout with the last value. */
async function eventually(what, fn, pred, timeout = ms(5000)) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (pred(last)) return last;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeout} ms; last: ${JSON.stringify(last)}`);
    await sleep(100);
  }
}

describe('npm consul client: service registration, discovery and watch', () => {
  let reg;
  let consul;
  let registry;
  let echoA;
  let echoB;
  before(async () => {
    reg = await startRegistry();
    echoA = await startEcho();
    echoB = await startEcho();
    consul = new Consul({ host: '127.0.0.1', port: reg.port });
    registry = new ServiceRegistry(consul);
  });
  after(async () => {
    try {
      for (const e of [echoA, echoB]) if (e) await e.stop();
    } finally {
      if (reg) {
        try { await reg.stop(); } finally { await reg.cleanup(); }
      }
    }
  });

  test('register two instances, discover the passing ones, pick one, deregister', { timeout: ms(20000) }, async () => {
    const health = (echo, code = 200) => `http://127.0.0.1:${echo.port}/status/${code}`;
    await registry.register({ id: 'orders-a', name: 'orders', address: '127.0.0.1', port: echoA.port, tags: ['v1'], healthUrl: health(echoA) });
    await registry.register({ id: 'orders-b', name: 'orders', address: '127.0.0.1', port: echoB.port, tags: ['v1'], healthUrl: health(echoB) });
    // A third instance whose health endpoint fails: never handed out.
    await registry.register({ id: 'orders-sick', name: 'orders', address: '127.0.0.1', port: 1, healthUrl: health(echoA, 503) });

    const listed = await consul.agent.service.list();
    assert.deepEqual(Object.keys(listed).filter((k) => k.startsWith('orders')).sort(), ['orders-a', 'orders-b', 'orders-sick']);
    assert.equal(listed['orders-a'].Service, 'orders');
    assert.equal(listed['orders-a'].Port, echoA.port);
    assert.equal(listed['orders-a'].Address, '127.0.0.1');
    assert.deepEqual(listed['orders-a'].Tags, ['v1']);

    const both = await eventually('both healthy instances passing',
      () => registry.instances('orders'), (l) => l.length === 2, ms(4000));
    assert.deepEqual(both.map((i) => i.id).sort(), ['orders-a', 'orders-b']);
    assert.deepEqual(both.find((i) => i.id === 'orders-a'), { id: 'orders-a', address: '127.0.0.1', port: echoA.port });
    assert.deepEqual(both.find((i) => i.id === 'orders-b'), { id: 'orders-b', address: '127.0.0.1', port: echoB.port });

    // The sick instance is in the unfiltered list, with a critical check that ran.
    const all = await consul.health.service('orders');
    assert.deepEqual(all.map((e) => e.Service.ID).sort(), ['orders-a', 'orders-b', 'orders-sick']);
    const sick = all.find((e) => e.Service.ID === 'orders-sick');
    assert.equal(sick.Checks.find((c) => c.CheckID === 'service:orders-sick').Status, 'critical');
    const checks = await consul.health.checks('orders');
    assert.equal(checks.find((c) => c.CheckID === 'service:orders-a').Status, 'passing');
    assert.equal(checks.find((c) => c.CheckID === 'service:orders-sick').Status, 'critical');

    // pick() hands out only healthy instances, and the one it hands out answers.
    const seen = new Set();
    for (let i = 0; i < 20; i++) {
      const inst = await registry.pick('orders');
      assert.ok(inst && ['orders-a', 'orders-b'].includes(inst.id), `picked ${JSON.stringify(inst)}`);
      seen.add(inst.id);
    }
    const inst = await registry.pick('orders');
    const res = await fetch(`http://${inst.address}:${inst.port}/`, { signal: AbortSignal.timeout(ms(5000)) });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), 'hello\n');

    await registry.deregister('orders-a');
    assert.deepEqual((await registry.instances('orders')).map((i) => i.id), ['orders-b'], 'deregistered at once');
    for (let i = 0; i < 5; i++) assert.equal((await registry.pick('orders')).id, 'orders-b');
    await registry.deregister('orders-b');
    await registry.deregister('orders-sick');
    assert.equal(await registry.pick('orders'), null);
    assert.deepEqual(await consul.health.service('orders'), []);
    assert.deepEqual(await consul.catalog.service.nodes('orders'), []);
    const names = await consul.catalog.service.list();
    assert.equal(names.orders, undefined, `orders gone from catalog.service.list: ${JSON.stringify(names)}`);
  });

  test('consul.watch on health.service sees an instance appear and disappear', { timeout: ms(30000) }, async () => {
    const watcher = consul.watch({
      method: consul.health.service,
      options: { service: 'billing', passing: true, wait: '5s' },
    });
    const changes = [];
    const errors = [];
    const waiters = [];
    watcher.on('change', (data) => {
      changes.push(Array.isArray(data) ? data.map((e) => e.Service.ID) : data);
      for (const w of waiters.splice(0)) w();
    });
    watcher.on('error', (err) => { errors.push(err); for (const w of waiters.splice(0)) w(); });
    /** Resolves with the index of the first change at or after `from` satisfying pred. */
    const waitChange = (from, pred, what, timeout = ms(6000)) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = waiters.indexOf(check);
        if (i >= 0) waiters.splice(i, 1);
        reject(new Error(`deadline of ${timeout} ms passed: ${what}; changes so far ${JSON.stringify(changes)}, errors ${errors.map(String)}`));
      }, timeout);
      function check() {
        for (let i = from; i < changes.length; i++) {
          if (pred(changes[i])) { clearTimeout(timer); resolve(i); return; }
        }
        waiters.push(check);
      }
      check();
    });

    try {
      // First answer: no billing instance yet.
      const first = await waitChange(0, () => true, 'initial result');
      assert.deepEqual(changes[first], [], 'billing has no instance yet');

      await registry.register({
        id: 'billing-1', name: 'billing', address: '127.0.0.1', port: echoA.port,
        healthUrl: `http://127.0.0.1:${echoA.port}/status/200`,
      });
      // The watcher sees it once its check passes (interval 1s).
      const up = await waitChange(first + 1, (c) => Array.isArray(c) && c.length === 1, 'instance appears', ms(6000));
      assert.deepEqual(changes[up], ['billing-1']);
      assert.ok(changes.slice(first + 1, up).every((c) => Array.isArray(c) && c.length === 0),
        `before it passed the watcher saw only empty results: ${JSON.stringify(changes)}`);

      await registry.deregister('billing-1');
      const down = await waitChange(up + 1, (c) => Array.isArray(c) && c.length === 0, 'instance disappears', ms(3000));
      assert.deepEqual(changes[down], []);
      assert.deepEqual(errors, [], `watch errors: ${errors.map(String)}`);
    } finally {
      watcher.end();
    }
    assert.equal(watcher.isRunning(), false);
  });
});
