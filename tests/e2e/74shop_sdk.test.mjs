// libtrellis's app behaviour seen from outside, through a shop service: self-registration
// with a health check and deregistration at stop, the built-in endpoints, routing errors,
// correlation IDs on replies and in the access log, traceparent continued.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShopService, assertShopProblem } from './lib/shop.mjs';
import { startRegistry, call } from './lib/registry.mjs';
import { until, ms } from './lib/gateway.mjs';

describe('libtrellis app', () => {
  let reg;
  let svc;
  const instances = async (passingOnly) => {
    const r = await call(reg, 'GET', `/v1/health/service/catalog${passingOnly ? '?passing' : ''}`);
    assert.equal(r.status, 200);
    return r.json;
  };

  before(async () => {
    reg = await startRegistry();
    svc = await startShopService('catalog', { registry: `127.0.0.1:${reg.port}` });
  });
  after(async () => {
    if (svc) await svc.stop().catch(() => {});
    if (reg) await reg.stop();
  });

  test('registers itself with an HTTP check on /health/ready that passes', async () => {
    const list = await until(async () => {
      const l = await instances(true);
      return l.length === 1 ? l : undefined;
    }, { timeout: ms(10000), every: 100, what: 'catalog passing in the registry' });
    const [entry] = list;
    assert.equal(entry.Service.Service, 'catalog');
    assert.equal(entry.Service.Port, svc.port);
    assert.deepEqual(entry.Service.Tags, ['libtrellis']);
    const check = entry.Checks.find((c) => c.ServiceID === entry.Service.ID);
    assert.equal(check.Status, 'passing');
    assert.equal(check.Type, 'http');
  });

  test('built-in endpoints: live, ready, metrics; other methods get 405', async () => {
    assert.deepEqual((await svc.req('/health/live')).json, { status: 'live' });
    assert.deepEqual((await svc.req('/health/ready')).json, { status: 'ready' });
    const m = await svc.req('/metrics');
    assert.match(m.headers['content-type'], /^text\/plain/);
    assert.match(m.text, /process_resident_memory_bytes/);
    const r = await svc.req('/health/ready', { method: 'POST' });
    assertShopProblem(r, 405, 'method-not-allowed');
    assert.equal(r.headers.allow, 'GET, HEAD');
  });

  test('404 and 405 for routes, as problem+json with Allow', async () => {
    assertShopProblem(await svc.req('/nope'), 404, 'not-found');
    const r = await svc.req('/products/1', { method: 'DELETE' });
    assertShopProblem(r, 405, 'method-not-allowed');
    assert.equal(r.headers.allow, 'GET, PATCH, HEAD');
    assertShopProblem(await svc.req('/products', { method: 'POST', body: '[1,2]', headers: { 'content-type': 'application/json' } }), 400);
    assertShopProblem(await svc.req('/products', { method: 'POST', body: '{"sku":', headers: { 'content-type': 'application/json' } }), 400);
  });

  test('correlation ID: kept from the client, else made; in the reply and the access line', async () => {
    const mine = await svc.req('/products/2', { headers: { 'x-correlation-id': 'sdk-corr-1' } });
    assert.equal(mine.status, 200);
    assert.equal(mine.headers['x-correlation-id'], 'sdk-corr-1');
    const line = JSON.parse(await svc.waitLog(/"correlation_id":"sdk-corr-1"/));
    assert.equal(line.msg, 'request');
    assert.equal(line.route, '/products/{id}');
    assert.equal(line.status, 200);
    assert.equal(line.service, 'catalog');
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const traced = await svc.req('/products/3', { headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` } });
    // Without a correlation ID the trace ID stands in, so logs and traces meet.
    assert.equal(traced.headers['x-correlation-id'], traceId);
    const tline = JSON.parse(await svc.waitLog(new RegExp(`"trace_id":"${traceId}"`)));
    assert.equal(tline.correlation_id, traceId);
    const fresh = await svc.req('/products/4');
    assert.match(fresh.headers['x-correlation-id'], /^[0-9a-f]{32}$/);
    assert.notEqual(fresh.headers['x-correlation-id'], traceId);
  });

  test('SIGTERM: deregisters from the registry, then exits 0', async () => {
    await until(async () => (await instances(true)).length === 1, { timeout: ms(10000), what: 'registered' });
    const res = await svc.stop();
    svc = null;
    assert.deepEqual(res, { code: 0, signal: null });
    // Gone at once (deregistered), not merely failing its check.
    assert.deepEqual(await instances(false), []);
  });
});
