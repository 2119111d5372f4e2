// Interop: the npm `consul` package (2.x), used the way its users write it, against
// `trellis registry`. Nobody here wrote this client.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Consul from 'consul';
import { startRegistry, ms, withDeadline } from './lib/registry.mjs';

describe('npm consul client against trellis registry', () => {
  let reg;
  let consul;
  before(async () => {
    reg = await startRegistry();
    consul = new Consul({ host: '127.0.0.1', port: reg.port });
  });
  after(async () => {
    if (!reg) return;
    try { await reg.stop(); } finally { await reg.cleanup(); }
  });

  test('status.leader and status.peers', { timeout: ms(10000) }, async () => {
    assert.equal(await consul.status.leader(), '127.0.0.1:8300');
    assert.deepEqual(await consul.status.peers(), ['127.0.0.1:8300']);
  });

  test('kv set/get/keys/del for application config', { timeout: ms(10000) }, async () => {
    assert.equal(await consul.kv.set('config/db/url', 'postgres://app:secret@db.internal:5432/app'), true);
    assert.equal(await consul.kv.set('config/db/pool', '20'), true);
    assert.equal(await consul.kv.set({ key: 'config/log/level', value: 'info', flags: 3 }), true);

    const url = await consul.kv.get('config/db/url');
    assert.equal(url.Key, 'config/db/url');
    assert.equal(url.Value, 'postgres://app:secret@db.internal:5432/app');
    assert.equal(url.Flags, 0);
    assert.ok(url.ModifyIndex > 0);

    const level = await consul.kv.get('config/log/level');
    assert.equal(level.Value, 'info');
    assert.equal(level.Flags, 3);

    const tree = await consul.kv.get({ key: 'config/', recurse: true });
    assert.ok(Array.isArray(tree));
    assert.deepEqual(tree.map((e) => [e.Key, e.Value]), [
      ['config/db/pool', '20'],
      ['config/db/url', 'postgres://app:secret@db.internal:5432/app'],
      ['config/log/level', 'info'],
    ]);

    assert.deepEqual(await consul.kv.keys('config/'), ['config/db/pool', 'config/db/url', 'config/log/level']);
    assert.deepEqual(await consul.kv.keys({ key: 'config/', separator: '/' }), ['config/db/', 'config/log/']);

    const raw = await consul.kv.get({ key: 'config/db/pool', raw: true });
    assert.equal(Buffer.from(raw).toString(), '20');

    assert.equal(await consul.kv.del('config/db/url'), true);
    assert.equal(await consul.kv.get('config/db/url'), undefined, 'a deleted key reads as undefined');
    assert.equal(await consul.kv.get('config/never/set'), undefined);
    assert.equal(await consul.kv.del({ key: 'config/', recurse: true }), true);
    assert.deepEqual(await consul.kv.get({ key: 'config/', recurse: true }), undefined);
  });

  test('kv set with cas: check-and-set update', { timeout: ms(10000) }, async () => {
    assert.equal(await consul.kv.set({ key: 'lock/owner', value: 'a', cas: 0 }), true);
    // consul 2.0.1 resolves a `false` answer as undefined (papi drops falsy bodies): test falsiness.
    const notCreated = await consul.kv.set({ key: 'lock/owner', value: 'b', cas: 0 });
    assert.ok(notCreated !== true && !notCreated, `cas 0 only creates; got ${notCreated}`);
    const cur = await consul.kv.get('lock/owner');
    assert.equal(cur.Value, 'a');
    assert.equal(await consul.kv.set({ key: 'lock/owner', value: 'c', cas: cur.ModifyIndex }), true);
    const stale = await consul.kv.set({ key: 'lock/owner', value: 'd', cas: cur.ModifyIndex });
    assert.ok(stale !== true && !stale, `stale cas fails; got ${stale}`);
    assert.equal((await consul.kv.get('lock/owner')).Value, 'c');
    const now = await consul.kv.get('lock/owner');
    const staleDel = await consul.kv.del({ key: 'lock/owner', cas: cur.ModifyIndex });
    assert.ok(staleDel !== true && !staleDel, `stale cas delete fails; got ${staleDel}`);
    assert.equal((await consul.kv.get('lock/owner')).Value, 'c', 'a failed cas delete keeps the key');
    assert.equal(await consul.kv.del({ key: 'lock/owner', cas: now.ModifyIndex }), true);
    assert.equal(await consul.kv.get('lock/owner'), undefined);
  });

  test('consul.watch on kv.get sees each change of a feature flag', { timeout: ms(20000) }, async () => {
    assert.equal(await consul.kv.set('feature/flag', 'off'), true);
    assert.equal(await consul.kv.set('feature/other', 'x'), true);
    const watcher = consul.watch({ method: consul.kv.get, options: { key: 'feature/flag', wait: '5s' } });
    const values = [];
    const errors = [];
    const waiters = [];
    watcher.on('change', (data) => {
      values.push(data ? data.Value : data);
      for (const w of waiters.splice(0)) w();
    });
    watcher.on('error', (err) => { errors.push(err); });
    const nextValue = (n, what) => withDeadline(new Promise((resolve) => {
      const check = () => (values.length >= n ? resolve(values[n - 1]) : waiters.push(check));
      check();
    }), ms(5000), `${what}; values so far ${JSON.stringify(values)}, errors ${errors.map(String)}`);
    try {
      assert.equal(await nextValue(1, 'initial value'), 'off');
      await consul.kv.set('feature/other', 'y'); // unrelated: no change event for feature/flag
      assert.equal(await consul.kv.set('feature/flag', 'on'), true);
      assert.equal(await nextValue(2, 'first change'), 'on');
      assert.equal(await consul.kv.set('feature/flag', 'canary'), true);
      assert.equal(await nextValue(3, 'second change'), 'canary');
      assert.deepEqual(values, ['off', 'on', 'canary']);
      assert.deepEqual(errors, []);
    } finally {
      watcher.end();
    }
    assert.equal(watcher.isRunning(), false);
  });
});
