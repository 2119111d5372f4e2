// `trellis registry` services, checks, catalog and health over the wire, checked against
// Consul's documented behaviour:
//   https://developer.hashicorp.com/consul/api-docs/agent/service
//   https://developer.hashicorp.com/consul/api-docs/agent/check
//   https://developer.hashicorp.com/consul/api-docs/catalog
//   https://developer.hashicorp.com/consul/api-docs/health
//   https://developer.hashicorp.com/consul/docs/services/usage/checks (HTTP: 2xx passing,
//   429 warning, anything else critical; TCP: connect → passing; TTL: critical when not
//   updated within the TTL, Output "TTL expired")
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startRegistry, call, assertProblemJson, ms, sleep } from './lib/registry.mjs';
import { startEcho } from './lib/trellis.mjs';

const PENDING = Symbol('pending');
/** Resolves PENDING if p has not settled within n ms, else p's value. */
const settledWithin = (p, n) => Promise.race([p, sleep(n).then(() => PENDING)]);

/** A 127.0.0.1 port nothing listens on (bound, then closed). */
async function closedPort() {
  const srv = net.createServer();
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/**
 * Polls fn() every 50 ms until it returns {done: true, value}; fails after `timeout` ms
 * with the last thing seen. fn returns {done, value, seen}.
 */
async function waitUntil(what, fn, timeout) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last.done) return last.value;
    if (Date.now() > deadline) {
      assert.fail(`${what}: not within ${timeout} ms; last seen: ${JSON.stringify(last.seen)}`);
    }
    await sleep(50);
  }
}

/** API helpers bound to one registry handle (its port changes on restart). */
function api(reg) {
  const a = {
    put: (p, body) => call(reg, 'PUT', p, { body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)) }),
    get: (p, opts) => call(reg, 'GET', p, opts),
    /** PUT /v1/agent/service/register that must answer 200. */
    async register(def) {
      const r = await a.put('/v1/agent/service/register', def);
      assert.equal(r.status, 200, `register ${JSON.stringify(def)}: ${r.status} ${r.text}`);
      return r;
    },
    async deregister(id) {
      const r = await a.put(`/v1/agent/service/deregister/${encodeURIComponent(id)}`);
      assert.equal(r.status, 200, `deregister ${id}: ${r.status} ${r.text}`);
      return r;
    },
    /** PUT /v1/agent/check/{pass|warn|fail}/:id[?note=] that must answer 200. */
    async ttl(verb, checkId, note) {
      const q = note === undefined ? '' : `?note=${encodeURIComponent(note)}`;
      const r = await a.put(`/v1/agent/check/${verb}/${encodeURIComponent(checkId)}${q}`);
      assert.equal(r.status, 200, `check ${verb} ${checkId}: ${r.status} ${r.text}`);
      return r;
    },
    async json(p) {
      const r = await a.get(p);
      assert.equal(r.status, 200, `GET ${p}: ${r.status} ${r.text}`);
      assert.match(r.headers.get('content-type') || '', /^application\/json/, `GET ${p} content-type`);
      assert.notEqual(r.json, undefined, `GET ${p} body is JSON: ${r.text}`);
      return r.json;
    },
    agentServices: () => a.json('/v1/agent/services'),
    agentChecks: () => a.json('/v1/agent/checks'),
    health: (name, q = '') => a.json(`/v1/health/service/${encodeURIComponent(name)}${q}`),
    catalog: (name, q = '') => a.json(`/v1/catalog/service/${encodeURIComponent(name)}${q}`),
    /** Waits until the agent reports check `id` in a state that satisfies pred(check). */
    waitCheck(id, pred, what, timeout = ms(3000)) {
      return waitUntil(`check ${id} ${what}`, async () => {
        const c = (await a.agentChecks())[id];
        return { done: !!c && pred(c), value: c, seen: c };
      }, timeout);
    },
  };
  return a;
}

/** This agent's node as /v1/agent/self reports it. */
async function nodeInfo(a) {
  const self = await a.json('/v1/agent/self');
  return { name: self.Config.NodeName, id: self.Config.NodeID, dc: self.Config.Datacenter, addr: self.Member.Addr };
}

describe('registry services, checks, catalog and health', () => {
  let reg;
  let echo;
  let a;
  let node;
  before(async () => {
    reg = await startRegistry();
    echo = await startEcho();
    a = api(reg);
    node = await nodeInfo(a);
  });
  after(async () => {
    try {
      if (echo) await echo.stop();
    } finally {
      if (reg) {
        try { await reg.stop(); } finally { await reg.cleanup(); }
      }
    }
  });

  test('register with an embedded TTL check: /v1/agent/services, /v1/agent/service/:id and /v1/agent/checks', { timeout: ms(10000) }, async () => {
    const r = await a.put('/v1/agent/service/register', {
      Name: 'api', ID: 'api-1', Tags: ['v1', 'primary'], Address: '10.0.0.5', Port: 8080,
      Meta: { version: '1.2.3' }, Check: { TTL: '10s' },
    });
    assert.equal(r.status, 200, r.text);

    const services = await a.agentServices();
    assert.ok(services['api-1'], `api-1 in /v1/agent/services: ${JSON.stringify(services)}`);
    const s = services['api-1'];
    assert.equal(s.ID, 'api-1');
    assert.equal(s.Service, 'api');
    assert.deepEqual(s.Tags, ['v1', 'primary']);
    assert.deepEqual(s.Meta, { version: '1.2.3' });
    assert.equal(s.Port, 8080);
    assert.equal(s.Address, '10.0.0.5');
    assert.deepEqual(s.Weights, { Passing: 1, Warning: 1 });
    assert.equal(s.EnableTagOverride, false);
    assert.equal(s.Datacenter, 'dc1');

    const one = await a.get('/v1/agent/service/api-1');
    assert.equal(one.status, 200, one.text);
    for (const k of ['ID', 'Service', 'Tags', 'Meta', 'Port', 'Address', 'Weights', 'EnableTagOverride', 'Datacenter']) {
      assert.deepEqual(one.json[k], s[k], `/v1/agent/service/api-1 ${k}`);
    }
    const missing = await a.get('/v1/agent/service/no-such-id');
    assert.equal(missing.status, 404, `unknown service ID: ${missing.text}`);

    // A service registered without ID gets its Name as ID.
    await a.register({ Name: 'noid', Port: 1 });
    const s2 = (await a.agentServices()).noid;
    assert.ok(s2, 'ID defaults to Name');
    assert.equal(s2.ID, 'noid');
    assert.equal(s2.Service, 'noid');
    assert.deepEqual(s2.Tags, [], 'Tags default to [] (Consul never sends null here)');
    assert.deepEqual(s2.Meta, {});
    assert.equal(s2.Address, '');

    const checks = await a.agentChecks();
    const c = checks['service:api-1'];
    assert.ok(c, `service:api-1 in /v1/agent/checks: ${JSON.stringify(checks)}`);
    assert.equal(c.CheckID, 'service:api-1');
    assert.equal(c.Name, "Service 'api' check");
    assert.equal(c.Node, node.name);
    assert.equal(c.Status, 'critical', 'a TTL check starts critical until it is updated');
    assert.equal(c.Notes, '');
    assert.equal(c.Output, '');
    assert.equal(c.ServiceID, 'api-1');
    assert.equal(c.ServiceName, 'api');
    assert.deepEqual(c.ServiceTags, ['v1', 'primary']);
    assert.equal(c.Type, 'ttl');
  });

  test('sessions follow their checks: missing or critical refused; a check going critical ends the session and releases its lock', { timeout: ms(10000) }, async () => {
    await a.register({ Name: 'leader', ID: 'leader-1', Check: { TTL: '30s', Status: 'passing' } });
    let r = await a.put('/v1/session/create', { Checks: ['serfHealth', 'no-such-check'] });
    assert.equal(r.status, 500, r.text);
    assert.match(r.text, /Missing check 'no-such-check' registration/);
    r = await a.put('/v1/session/create', { Checks: ['serfHealth', 'service:leader-1'], Behavior: 'release', LockDelay: '0s' });
    assert.equal(r.status, 200, r.text);
    const id = r.json.ID;
    r = await a.put(`/v1/kv/election/leader?acquire=${id}`, 'leader-1');
    assert.equal(r.text, 'true');
    await a.ttl('fail', 'service:leader-1', 'gone');
    r = await a.get(`/v1/session/info/${id}`);
    assert.deepEqual(r.json, [], 'the session ended with its check');
    r = await a.get('/v1/kv/election/leader');
    assert.equal(r.json[0].Session, undefined, 'the lock was released');
    r = await a.put('/v1/session/create', { Checks: ['service:leader-1'] });
    assert.equal(r.status, 500, r.text);
    assert.match(r.text, /critical state/);
    await a.deregister('leader-1');
  });

  test('re-registering the same ID replaces the service', { timeout: ms(10000) }, async () => {
    await a.register({ Name: 'rep', ID: 'rep-1', Tags: ['old'], Port: 1000, Meta: { a: '1' } });
    await a.register({ Name: 'rep', ID: 'rep-1', Tags: ['new'], Port: 2000 });
    const s = (await a.agentServices())['rep-1'];
    assert.deepEqual(s.Tags, ['new']);
    assert.equal(s.Port, 2000);
    assert.deepEqual(s.Meta, {}, 'Meta from the first registration is gone');
    const cat = await a.catalog('rep');
    assert.equal(cat.length, 1, `one instance after re-register: ${JSON.stringify(cat)}`);
  });

  test('Checks: embedded IDs service:<id>:1, :2; explicit CheckID, Name, Notes and initial Status are kept', { timeout: ms(10000) }, async () => {
    await a.register({
      Name: 'multi', ID: 'multi-1', Port: echo.port,
      Checks: [
        { TTL: '30s', Notes: 'heartbeat' },
        { TCP: `127.0.0.1:${echo.port}`, Interval: '1s' },
        { CheckID: 'multi-custom', Name: 'custom name', TTL: '30s', Status: 'passing' },
      ],
    });
    const checks = await a.agentChecks();
    const mine = Object.keys(checks).filter((k) => checks[k].ServiceID === 'multi-1').sort();
    assert.deepEqual(mine, ['multi-custom', 'service:multi-1:1', 'service:multi-1:2']);
    assert.equal(checks['service:multi-1:1'].Type, 'ttl');
    assert.equal(checks['service:multi-1:1'].Notes, 'heartbeat');
    assert.equal(checks['service:multi-1:1'].Name, "Service 'multi' check");
    assert.equal(checks['service:multi-1:2'].Type, 'tcp');
    assert.equal(checks['multi-custom'].Name, 'custom name');
    assert.equal(checks['multi-custom'].Status, 'passing', 'Status sets the initial state');
    // All checks must pass for ?passing: the first TTL check is still critical.
    await a.waitCheck('service:multi-1:2', (c) => c.Status === 'passing', 'TCP check passing', ms(3000));
    assert.deepEqual(await a.health('multi', '?passing'), []);
    await a.ttl('pass', 'service:multi-1:1');
    const p = await a.health('multi', '?passing');
    assert.equal(p.length, 1);
    assert.deepEqual(p[0].Checks.map((c) => c.CheckID).sort(), ['multi-custom', 'serfHealth', 'service:multi-1:1', 'service:multi-1:2']);
  });

  test('GET /v1/catalog/services and /v1/catalog/service/:name (?tag=)', { timeout: ms(10000) }, async () => {
    await a.register({ Name: 'cat', ID: 'cat-1', Tags: ['a', 'b'], Address: '10.0.1.1', Port: 7001, Meta: { zone: 'z1' } });
    await a.register({ Name: 'cat', ID: 'cat-2', Tags: ['b', 'c'], Port: 7002, Weights: { Passing: 5, Warning: 2 } });

    const sr = await a.get('/v1/catalog/services');
    assert.equal(sr.status, 200, sr.text);
    assert.ok(sr.index > 0, `X-Consul-Index ${sr.headers.get('x-consul-index')}`);
    const all = sr.json;
    assert.ok(all && typeof all === 'object' && !Array.isArray(all), `{name: [tags]}: ${sr.text}`);
    assert.ok(Array.isArray(all.cat), `cat in ${sr.text}`);
    assert.deepEqual([...all.cat].sort(), ['a', 'b', 'c'], 'tags of all instances, each once');

    const cr = await a.get('/v1/catalog/service/cat');
    assert.equal(cr.status, 200, cr.text);
    assert.ok(cr.index > 0, 'X-Consul-Index on /v1/catalog/service');
    assert.equal(cr.headers.get('x-consul-knownleader'), 'true');
    const list = [...cr.json].sort((x, y) => x.ServiceID.localeCompare(y.ServiceID));
    assert.deepEqual(list.map((e) => e.ServiceID), ['cat-1', 'cat-2']);
    const [e1, e2] = list;
    assert.equal(e1.ID, node.id, 'ID is the node ID');
    assert.equal(e1.Node, node.name);
    assert.equal(e1.Address, node.addr);
    assert.equal(e1.Datacenter, 'dc1');
    assert.ok(e1.TaggedAddresses && typeof e1.TaggedAddresses === 'object', 'TaggedAddresses is an object');
    assert.ok(e1.NodeMeta && typeof e1.NodeMeta === 'object', 'NodeMeta is an object');
    assert.equal(e1.ServiceName, 'cat');
    assert.deepEqual(e1.ServiceTags, ['a', 'b']);
    assert.equal(e1.ServiceAddress, '10.0.1.1');
    assert.equal(e1.ServicePort, 7001);
    assert.deepEqual(e1.ServiceMeta, { zone: 'z1' });
    assert.deepEqual(e1.ServiceWeights, { Passing: 1, Warning: 1 });
    assert.equal(e1.ServiceEnableTagOverride, false);
    assert.ok(Number.isInteger(e1.CreateIndex) && e1.CreateIndex > 0, `CreateIndex ${e1.CreateIndex}`);
    assert.ok(Number.isInteger(e1.ModifyIndex) && e1.ModifyIndex >= e1.CreateIndex, `ModifyIndex ${e1.ModifyIndex}`);
    assert.equal(e2.ServiceAddress, '', 'no Address: ServiceAddress is empty (clients fall back to the node Address)');
    assert.equal(e2.ServicePort, 7002);
    assert.deepEqual(e2.ServiceWeights, { Passing: 5, Warning: 2 });
    assert.deepEqual(e2.ServiceMeta, {});

    assert.deepEqual((await a.catalog('cat', '?tag=a')).map((e) => e.ServiceID), ['cat-1']);
    assert.deepEqual((await a.catalog('cat', '?tag=c')).map((e) => e.ServiceID), ['cat-2']);
    assert.deepEqual((await a.catalog('cat', '?tag=b')).map((e) => e.ServiceID).sort(), ['cat-1', 'cat-2']);
    assert.deepEqual(await a.catalog('cat', '?tag=zzz'), []);

    const none = await a.get('/v1/catalog/service/no-such-service');
    assert.equal(none.status, 200, 'an unknown service is an empty list, not 404');
    assert.deepEqual(none.json, []);
    assert.ok(none.index > 0, 'X-Consul-Index on an empty result');
  });

  test('GET /v1/health/service/:name: [{Node, Service, Checks}], ?passing follows the TTL check, ?tag=', { timeout: ms(15000) }, async () => {
    await a.register({ Name: 'hs', ID: 'hs-1', Tags: ['blue'], Address: '10.0.2.1', Port: 9001, Meta: { m: 'x' }, Check: { TTL: '30s' } });

    const hr = await a.get('/v1/health/service/hs');
    assert.equal(hr.status, 200, hr.text);
    assert.ok(hr.index > 0, 'X-Consul-Index on /v1/health/service');
    assert.equal(hr.json.length, 1, hr.text);
    const { Node, Service, Checks } = hr.json[0];
    assert.equal(Node.ID, node.id);
    assert.equal(Node.Node, node.name);
    assert.equal(Node.Address, node.addr);
    assert.equal(Node.Datacenter, 'dc1');
    assert.equal(Service.ID, 'hs-1');
    assert.equal(Service.Service, 'hs');
    assert.deepEqual(Service.Tags, ['blue']);
    assert.equal(Service.Address, '10.0.2.1');
    assert.equal(Service.Port, 9001);
    assert.deepEqual(Service.Meta, { m: 'x' });
    assert.deepEqual(Service.Weights, { Passing: 1, Warning: 1 });
    assert.equal(Service.EnableTagOverride, false);
    assert.deepEqual(Checks.map((c) => c.CheckID).sort(), ['serfHealth', 'service:hs-1'], 'the node check and the service check');
    const serf = Checks.find((c) => c.CheckID === 'serfHealth');
    assert.equal(serf.Node, node.name);
    assert.equal(serf.Name, 'Serf Health Status');
    assert.equal(serf.Status, 'passing');
    assert.equal(serf.Output, 'Agent alive and reachable');
    assert.equal(serf.ServiceID, '');
    assert.equal(serf.ServiceName, '');
    const sc = Checks.find((c) => c.CheckID === 'service:hs-1');
    assert.equal(sc.Node, node.name);
    assert.equal(sc.Name, "Service 'hs' check");
    assert.equal(sc.Status, 'critical');
    assert.equal(sc.ServiceID, 'hs-1');
    assert.equal(sc.ServiceName, 'hs');
    assert.deepEqual(sc.ServiceTags, ['blue']);
    assert.equal(sc.Type, 'ttl');

    assert.deepEqual(await a.health('hs', '?passing'), [], 'critical: not in ?passing');
    assert.deepEqual(await a.health('hs', '?passing=true'), [], 'critical: not in ?passing=true');

    await a.ttl('pass', 'service:hs-1', 'ready to serve');
    const p = await a.health('hs', '?passing');
    assert.equal(p.length, 1, `passing after check/pass: ${JSON.stringify(p)}`);
    const pc = p[0].Checks.find((c) => c.CheckID === 'service:hs-1');
    assert.equal(pc.Status, 'passing');
    assert.equal(pc.Output, 'ready to serve', '?note= becomes the Output');

    await a.ttl('warn', 'service:hs-1', 'degraded');
    assert.deepEqual(await a.health('hs', '?passing'), [], 'warning: not in ?passing');
    const w = await a.health('hs');
    assert.equal(w[0].Checks.find((c) => c.CheckID === 'service:hs-1').Status, 'warning');
    assert.equal((await a.agentChecks())['service:hs-1'].Output, 'degraded');

    await a.ttl('pass', 'service:hs-1');
    assert.equal((await a.health('hs', '?passing')).length, 1);
    await a.ttl('fail', 'service:hs-1', 'down');
    assert.deepEqual(await a.health('hs', '?passing'), [], 'check/fail removes it from ?passing again');
    const f = await a.health('hs');
    assert.equal(f.length, 1, 'still listed without ?passing');
    const fc = f[0].Checks.find((c) => c.CheckID === 'service:hs-1');
    assert.equal(fc.Status, 'critical');
    assert.equal(fc.Output, 'down');

    // ?tag= on health
    await a.register({ Name: 'hs', ID: 'hs-2', Tags: ['green'], Port: 9002 });
    assert.deepEqual((await a.health('hs')).map((e) => e.Service.ID).sort(), ['hs-1', 'hs-2']);
    assert.deepEqual((await a.health('hs', '?tag=green')).map((e) => e.Service.ID), ['hs-2']);
    assert.deepEqual((await a.health('hs', '?tag=blue')).map((e) => e.Service.ID), ['hs-1']);
    assert.deepEqual(await a.health('hs', '?tag=red'), []);
    // hs-2 has no checks of its own: only serfHealth, which passes.
    assert.deepEqual((await a.health('hs', '?passing')).map((e) => e.Service.ID), ['hs-2']);
    assert.deepEqual((await a.health('hs', '?passing&tag=blue')), []);
    assert.deepEqual(await a.health('no-such-service'), []);
  });

  test('check/pass on an unknown check ID is an error and creates nothing', { timeout: ms(5000) }, async () => {
    // Consul answers 500 'CheckID "service:nope" does not have associated TTL'; a 404 is the
    // sensible status. Either way it must not be a 2xx.
    const r = await a.put('/v1/agent/check/pass/service:nope');
    assert.ok([404, 500].includes(r.status), `status ${r.status}: ${r.text}`);
    assert.equal((await a.agentChecks())['service:nope'], undefined);
  });

  test('a TTL check not updated within its TTL turns critical with Output "TTL expired"', { timeout: ms(15000) }, async () => {
    await a.register({ Name: 'ttlx', ID: 'ttlx-1', Port: 1, Check: { TTL: '1s' } });
    await a.ttl('pass', 'service:ttlx-1');
    assert.equal((await a.agentChecks())['service:ttlx-1'].Status, 'passing');
    const c = await a.waitCheck('service:ttlx-1', (x) => x.Status === 'critical', 'critical after the TTL', ms(4000));
    assert.match(c.Output, /TTL expired/);
    assert.deepEqual(await a.health('ttlx', '?passing'), []);
  });

  test('HTTP check against trellis echo: 200 passing, 500 critical, 429 warning', { timeout: ms(30000) }, async () => {
    const url = (code) => `http://127.0.0.1:${echo.port}/status/${code}`;
    const def = (code) => ({ Name: 'httpsvc', ID: 'httpsvc-1', Port: echo.port, Address: '127.0.0.1', Check: { HTTP: url(code), Interval: '1s' } });

    await a.register(def(200));
    const c200 = await a.waitCheck('service:httpsvc-1', (c) => c.Status === 'passing', 'passing with /status/200', ms(3000));
    assert.equal(c200.Type, 'http');
    assert.equal(c200.Name, "Service 'httpsvc' check");
    assert.match(c200.Output, /: 200\b/, `Output names the status: ${c200.Output}`);
    assert.equal((await a.health('httpsvc', '?passing')).length, 1);

    await a.register(def(500));
    const c500 = await a.waitCheck('service:httpsvc-1', (c) => c.Status === 'critical' && /: 500\b/.test(c.Output), 'critical with /status/500', ms(3000));
    assert.equal(c500.Type, 'http');
    assert.deepEqual(await a.health('httpsvc', '?passing'), []);

    await a.register(def(429));
    const c429 = await a.waitCheck('service:httpsvc-1', (c) => c.Status === 'warning', 'warning with /status/429', ms(3000));
    assert.match(c429.Output, /: 429\b/, `Output names the status: ${c429.Output}`);
    assert.deepEqual(await a.health('httpsvc', '?passing'), [], 'warning is not passing');
    const all = await a.health('httpsvc');
    assert.equal(all[0].Checks.find((x) => x.CheckID === 'service:httpsvc-1').Status, 'warning');
  });

  test('TCP check: the echo port is passing, a closed port is critical', { timeout: ms(20000) }, async () => {
    await a.register({ Name: 'tcpsvc', ID: 'tcpsvc-1', Port: echo.port, Check: { TCP: `127.0.0.1:${echo.port}`, Interval: '1s' } });
    const ok = await a.waitCheck('service:tcpsvc-1', (c) => c.Status === 'passing', 'passing against the echo port', ms(3000));
    assert.equal(ok.Type, 'tcp');
    assert.equal((await a.health('tcpsvc', '?passing')).length, 1);

    const dead = await closedPort();
    await a.register({ Name: 'tcpdead', ID: 'tcpdead-1', Port: dead, Check: { TCP: `127.0.0.1:${dead}`, Interval: '1s' } });
    // Critical from the start; a non-empty Output shows the check actually ran.
    const bad = await a.waitCheck('service:tcpdead-1', (c) => c.Status === 'critical' && c.Output !== '', 'critical (after running) against a closed port', ms(3000));
    assert.equal(bad.Type, 'tcp');
    assert.deepEqual(await a.health('tcpdead', '?passing'), []);
  });

  test('deregister removes the service and its checks from every endpoint', { timeout: ms(10000) }, async () => {
    await a.register({ Name: 'gone', ID: 'gone-1', Tags: ['t'], Port: 5000, Check: { TTL: '30s' } });
    await a.ttl('pass', 'service:gone-1');
    assert.equal((await a.health('gone', '?passing')).length, 1);
    await a.deregister('gone-1');

    assert.equal((await a.agentServices())['gone-1'], undefined, '/v1/agent/services');
    assert.equal((await a.get('/v1/agent/service/gone-1')).status, 404, '/v1/agent/service/gone-1');
    assert.equal((await a.agentChecks())['service:gone-1'], undefined, '/v1/agent/checks');
    const names = await a.json('/v1/catalog/services');
    assert.equal(names.gone, undefined, `/v1/catalog/services: ${JSON.stringify(names)}`);
    assert.deepEqual(await a.catalog('gone'), [], '/v1/catalog/service/gone');
    assert.deepEqual(await a.health('gone'), [], '/v1/health/service/gone');
    assert.deepEqual(await a.health('gone', '?passing'), []);
    const checks = await a.json('/v1/health/checks/gone');
    assert.deepEqual(checks, [], '/v1/health/checks/gone');
  });

  test('blocking /v1/health/service/web ignores other services and wakes on its own check change', { timeout: ms(15000) }, async () => {
    await a.register({ Name: 'web', ID: 'web-1', Port: 80, Check: { TTL: '30s' } });
    await a.register({ Name: 'other', ID: 'other-1', Port: 81, Check: { TTL: '30s' } });
    const r0 = await a.get('/v1/health/service/web');
    assert.equal(r0.status, 200);
    const n = r0.index;
    assert.ok(Number.isInteger(n) && n > 0, `X-Consul-Index ${r0.headers.get('x-consul-index')}`);

    const waiting = a.get(`/v1/health/service/web?index=${n}&wait=5s`, { timeout: ms(10000) });
    await sleep(ms(100)); // let the watcher register
    await a.ttl('pass', 'service:other-1');
    await a.register({ Name: 'other', ID: 'other-2', Port: 82 });
    await a.register({ Name: 'unrelated', ID: 'unrelated-1', Port: 83 });
    assert.equal(await settledWithin(waiting, 300), PENDING, 'a watcher on web was answered by a change to other services');

    const t0 = Date.now();
    await a.ttl('pass', 'service:web-1');
    const r = await waiting;
    const dt = Date.now() - t0;
    assert.equal(r.status, 200, r.text);
    assert.ok(r.index > n, `X-Consul-Index ${r.index} > ${n}`);
    assert.equal(r.json.length, 1);
    assert.equal(r.json[0].Checks.find((c) => c.CheckID === 'service:web-1').Status, 'passing');
    assert.ok(dt < ms(200), `watcher answered ${dt} ms after the check changed (goal < 50 ms)`);

    // The same on ?passing: wakes when web leaves the passing set.
    const r1 = await a.get('/v1/health/service/web?passing');
    assert.equal(r1.json.length, 1);
    const w2 = a.get(`/v1/health/service/web?passing&index=${r1.index}&wait=5s`, { timeout: ms(10000) });
    await sleep(ms(100));
    const t1 = Date.now();
    await a.ttl('fail', 'service:web-1');
    const r2 = await w2;
    assert.ok(Date.now() - t1 < ms(200), `?passing watcher answered ${Date.now() - t1} ms after the check failed`);
    assert.equal(r2.status, 200);
    assert.deepEqual(r2.json, []);
    assert.ok(r2.index > r1.index);
  });

  test('a blocking health query times out after ?wait with 200 and the same index', { timeout: ms(10000) }, async () => {
    await a.register({ Name: 'quiet', ID: 'quiet-1', Port: 1 });
    const r0 = await a.get('/v1/health/service/quiet');
    const r = await a.get(`/v1/health/service/quiet?index=${r0.index}&wait=200ms`, { timeout: ms(5000) });
    assert.equal(r.status, 200);
    assert.equal(r.index, r0.index);
    assert.deepEqual(r.json, r0.json);
    assert.ok(r.elapsed >= 190, `answered after ${r.elapsed} ms, before the 200 ms wait`);
    assert.ok(r.elapsed < ms(1000), `answered after ${r.elapsed} ms`);
  });

  test('bad registrations are 400 with a message naming the problem, and register nothing', { timeout: ms(10000) }, async () => {
    const before = Object.keys(await a.agentServices()).sort();

    const noName = await a.put('/v1/agent/service/register', { ID: 'nameless', Port: 1 });
    const p1 = assertProblemJson(noName, 400);
    assert.match(p1.detail, /name/i, `detail says Name is missing: ${p1.detail}`);

    const noInterval = await a.put('/v1/agent/service/register', {
      Name: 'badhttp', ID: 'badhttp-1', Port: 1, Check: { HTTP: `http://127.0.0.1:${echo.port}/status/200` },
    });
    const p2 = assertProblemJson(noInterval, 400);
    assert.match(p2.detail, /interval/i, `detail says Interval is missing: ${p2.detail}`);

    const tcpNoInterval = await a.put('/v1/agent/service/register', {
      Name: 'badtcp', ID: 'badtcp-1', Port: 1, Check: { TCP: `127.0.0.1:${echo.port}` },
    });
    assertProblemJson(tcpNoInterval, 400);

    const badJson = await a.put('/v1/agent/service/register', '{"Name": "broken", ');
    assertProblemJson(badJson, 400);
    const notObject = await a.put('/v1/agent/service/register', '[1,2]');
    assertProblemJson(notObject, 400);

    // Unknown fields are ignored, as in Consul.
    await a.register({ Name: 'extra', ID: 'extra-1', Port: 1, NotAConsulField: { x: 1 } });

    const after = Object.keys(await a.agentServices()).sort();
    assert.deepEqual(after, [...before, 'extra-1'].sort(), 'only the valid registration was stored');
    assert.equal((await a.agentChecks())['service:badhttp-1'], undefined);
  });
});

test('services and checks survive kill -9 and a restart on the same data dir', { timeout: ms(40000) }, async () => {
  const reg = await startRegistry();
  const echo = await startEcho();
  try {
    const a = api(reg);
    await a.register({ Name: 'dur', ID: 'dur-1', Tags: ['x'], Address: '10.9.9.9', Port: 4000, Meta: { k: 'v' }, Check: { TTL: '60s' } });
    await a.ttl('pass', 'service:dur-1', 'alive');
    await a.register({
      Name: 'durhttp', ID: 'durhttp-1', Address: '127.0.0.1', Port: echo.port,
      Check: { HTTP: `http://127.0.0.1:${echo.port}/status/200`, Interval: '1s' },
    });
    await a.waitCheck('service:durhttp-1', (c) => c.Status === 'passing', 'passing before the restart', ms(3000));
    const services = await a.agentServices();
    const checks = await a.agentChecks();
    const catBefore = await a.get('/v1/catalog/service/dur');
    const idxBefore = catBefore.index;

    await reg.stop({ signal: 'SIGKILL' });
    await reg.restart();

    const servicesAfter = await a.agentServices();
    assert.deepEqual(servicesAfter['dur-1'], services['dur-1'], 'dur-1 is restored unchanged');
    assert.deepEqual(servicesAfter['durhttp-1'], services['durhttp-1'], 'durhttp-1 is restored unchanged');
    const checksAfter = await a.agentChecks();
    const d = checksAfter['service:dur-1'];
    assert.ok(d, `service:dur-1 is restored: ${JSON.stringify(checksAfter)}`);
    assert.equal(d.Type, 'ttl');
    assert.equal(d.Status, 'passing', 'a TTL check keeps its last status across the restart');
    assert.equal(d.Output, 'alive');
    assert.equal(d.ServiceID, 'dur-1');
    assert.ok(checksAfter['service:durhttp-1'], 'service:durhttp-1 is restored');
    assert.equal(checksAfter['service:durhttp-1'].Type, 'http');
    await a.waitCheck('service:durhttp-1', (c) => c.Status === 'passing', 'passing after the restart', ms(3000));
    assert.equal((await a.health('dur', '?passing')).length, 1);
    assert.equal((await a.health('durhttp', '?passing')).length, 1);

    const catAfter = await a.get('/v1/catalog/service/dur');
    assert.deepEqual(catAfter.json, catBefore.json, 'the catalog entry (with its indexes) is the same');
    assert.ok(catAfter.index >= idxBefore, `X-Consul-Index ${catAfter.index} after restart >= ${idxBefore}`);

    // The checker runs after the restart: make the HTTP check fail and see it.
    await a.register({
      Name: 'durhttp', ID: 'durhttp-1', Address: '127.0.0.1', Port: echo.port,
      Check: { HTTP: `http://127.0.0.1:${echo.port}/status/503`, Interval: '1s' },
    });
    await a.waitCheck('service:durhttp-1', (c) => c.Status === 'critical' && /: 503\b/.test(c.Output), 'critical after the restart', ms(3000));
    const reg2 = (await a.get('/v1/catalog/service/durhttp')).index;
    assert.ok(reg2 > idxBefore, `a write after the restart takes a higher index (${reg2} > ${idxBefore})`);

    await reg.restart(); // SIGTERM: asserts exit 0
    assert.deepEqual((await a.agentServices())['dur-1'], services['dur-1']);
    await reg.stop();
    await echo.stop();
  } finally {
    echo.kill();
    await reg.cleanup();
  }
});
