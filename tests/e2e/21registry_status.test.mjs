// `trellis registry` status and agent endpoints, checked against Consul's documented shapes:
// https://developer.hashicorp.com/consul/api-docs/status and .../api-docs/agent#read-configuration
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import { startRegistry, call, assertProblemJson } from './lib/registry.mjs';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe('registry status and agent', () => {
  let reg;
  before(async () => { reg = await startRegistry(); });
  after(async () => {
    if (!reg) return;
    try { await reg.stop(); } finally { await reg.cleanup(); }
  });

  test('GET /v1/status/leader is the JSON string "127.0.0.1:8300"', async () => {
    const r = await call(reg, 'GET', '/v1/status/leader');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type'), /^application\/json/);
    assert.equal(r.json, '127.0.0.1:8300');
  });

  test('GET /v1/status/peers is a JSON array with the leader', async () => {
    const r = await call(reg, 'GET', '/v1/status/peers');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type'), /^application\/json/);
    assert.deepEqual(r.json, ['127.0.0.1:8300']);
  });

  test('GET /v1/agent/self has Consul\'s Config and Member fields', async () => {
    const r = await call(reg, 'GET', '/v1/agent/self');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type'), /^application\/json/);
    const { Config, Member } = r.json;
    assert.ok(Config && typeof Config === 'object', `Config in ${r.text}`);
    assert.equal(Config.Datacenter, 'dc1');
    assert.equal(Config.NodeName, os.hostname(), 'NodeName defaults to the host name, as in Consul');
    assert.match(Config.NodeID, UUID);
    assert.match(Config.Version, /^\d+\.\d+\.\d+/);
    assert.ok(Member && typeof Member === 'object', `Member in ${r.text}`);
    assert.equal(Member.Name, Config.NodeName);
    assert.equal(Member.Addr, '127.0.0.1');
    assert.ok(Number.isInteger(Member.Port), `Member.Port ${Member.Port}`);
    assert.equal(Member.Status, 1, 'Member.Status 1 is serf "alive"');
    assert.ok(Member.Tags && typeof Member.Tags === 'object', 'Member.Tags is an object');
  });

  test('the NodeID is stable across a restart on the same data dir', async () => {
    const a = (await call(reg, 'GET', '/v1/agent/self')).json.Config.NodeID;
    await reg.restart();
    const b = (await call(reg, 'GET', '/v1/agent/self')).json.Config.NodeID;
    assert.equal(b, a);
  });

  test('unknown endpoints are 404 problem+json', async () => {
    for (const p of ['/v1/nope', '/v1/status/nope', '/v1/agent/nope', '/nope', '/v2/kv/x']) {
      const r = await call(reg, 'GET', p);
      assertProblemJson(r, 404, 'not-found');
    }
  });
});
