// The shop's customer service (examples/shop/customer) end to end, against the contract of
// examples/shop/API.md: customers with unique case-insensitive emails, lookups, changes,
// addresses with one default per customer, validation, and two replicas on one database.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startShopService, shopBin, assertShopProblem as problem } from './lib/shop.mjs';

const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

let seq = 0;
const uniqueEmail = (local = 'user') => `${local}.${process.pid}.${++seq}@example.com`;
const address = (over = {}) => ({ line1: 'Hauptstraße 1', city: 'Berlin', postal_code: '10115', country: 'DE', ...over });

describe('shop customer: one instance', () => {
  let svc;
  before(async () => { svc = await startShopService('customer'); });
  after(async () => { if (svc) await svc.stop(); });

  async function createCustomer(name = 'Ada Lovelace', email = uniqueEmail()) {
    const r = await svc.req('/customers', { method: 'POST', json: { email, name } });
    assert.equal(r.status, 201, r.text);
    return r.json;
  }

  test('--help prints usage with the environment and exits 0', () => {
    const r = spawnSync(shopBin('customer'), ['--help'], { encoding: 'utf8', timeout: 5000 });
    assert.equal(r.status, 0, r.stderr);
    for (const word of ['customer', 'PORT', 'SHOP_DATA_DIR', 'TRELLIS_REGISTRY', 'TRELLIS_SERVICE']) {
      assert.ok(r.stdout.includes(word), `usage mentions ${word}:\n${r.stdout}`);
    }
  });

  test('POST /customers: 201 with location; email stored lower-case; created_at RFC 3339 UTC', async () => {
    const email = `Grace.Hopper.${process.pid}@Example.COM`;
    const r = await svc.req('/customers', { method: 'POST', json: { email, name: 'Grace Hopper' } });
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(Object.keys(r.json).sort(), ['created_at', 'email', 'id', 'name']);
    assert.ok(Number.isInteger(r.json.id) && r.json.id > 0);
    assert.equal(r.json.email, email.toLowerCase());
    assert.equal(r.json.name, 'Grace Hopper');
    assert.match(r.json.created_at, RFC3339_UTC);
    assert.ok(Math.abs(Date.parse(r.json.created_at) - Date.now()) < 120000, r.json.created_at);
    assert.equal(r.headers.location, `/customers/${r.json.id}`);
  });

  test('POST /customers: 409 for an email taken in another case', async () => {
    const c = await createCustomer('First', uniqueEmail('dup'));
    const p = problem(await svc.req('/customers', { method: 'POST', json: { email: c.email.toUpperCase(), name: 'Second' } }), 409, 'email-taken');
    assert.match(p.detail, new RegExp(c.email.replace(/[.]/g, '\\.')));
    const list = await svc.req(`/customers?email=${encodeURIComponent(c.email)}`);
    assert.equal(list.json.items.length, 1);
    assert.equal(list.json.items[0].name, 'First');
  });

  test('POST /customers: 422 naming the field for invalid emails and names', async () => {
    const bad = ['', 'plain', '@example.com', 'a@', 'a@b', 'a@@example.com', 'a@b@example.com', 'a b@example.com',
      'a@example.', 'a@.example.com', 'a@exa..mple.com', `${'x'.repeat(250)}@example.com`, 42, null, ['a@b.c']];
    for (const email of bad) {
      const p = problem(await svc.req('/customers', { method: 'POST', json: { email, name: 'N' } }), 422, 'invalid-customer');
      assert.ok(p.detail.includes('"email"'), `${JSON.stringify(email)}: ${p.detail}`);
    }
    const p0 = problem(await svc.req('/customers', { method: 'POST', json: { name: 'N' } }), 422, 'invalid-customer');
    assert.ok(p0.detail.includes('"email"'), p0.detail);
    for (const name of ['', '   ', 7, null, 'x'.repeat(201)]) {
      const p = problem(await svc.req('/customers', { method: 'POST', json: { email: uniqueEmail(), name } }), 422, 'invalid-customer');
      assert.ok(p.detail.includes('"name"'), `${JSON.stringify(name)}: ${p.detail}`);
    }
    problem(await svc.req('/customers', { method: 'POST', json: { email: uniqueEmail() } }), 422, 'invalid-customer');
    problem(await svc.req('/customers', { method: 'POST' }), 422, 'invalid-customer');
    // An email at the 254-byte limit is fine.
    const long = `${'y'.repeat(254 - '@example.com'.length)}@example.com`;
    assert.equal(long.length, 254);
    assert.equal((await svc.req('/customers', { method: 'POST', json: { email: long, name: 'Long' } })).status, 201);
  });

  test('POST /customers: 400 problem+json for a body that is not JSON', async () => {
    const r = await svc.req('/customers', { method: 'POST', body: 'email=a@b.c', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
    assert.match(r.headers['content-type'], /^application\/problem\+json/);
  });

  test('GET /customers/{id}: the customer with addresses; 404; 400', async () => {
    const c = await createCustomer('Alan Turing');
    const r = await svc.req(`/customers/${c.id}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { ...c, addresses: [] });
    const a = await svc.req(`/customers/${c.id}/addresses`, { method: 'POST', json: address() });
    assert.equal(a.status, 201);
    assert.deepEqual((await svc.req(`/customers/${c.id}`)).json.addresses, [a.json]);
    problem(await svc.req('/customers/999999'), 404, 'not-found');
    for (const bad of ['0', '-3', 'abc', '1e3']) problem(await svc.req(`/customers/${bad}`), 400, 'bad-id');
  });

  test('GET /customers?email=: exact, case-insensitive match; all newest first without', async () => {
    const c1 = await createCustomer('One', uniqueEmail('lookup'));
    const c2 = await createCustomer('Two', uniqueEmail('lookup'));
    const r = await svc.req(`/customers?email=${encodeURIComponent(c1.email.toUpperCase())}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { items: [c1] });
    const none = await svc.req(`/customers?email=${encodeURIComponent('nobody@example.com')}`);
    assert.deepEqual(none.json, { items: [] });
    // A prefix is not a match.
    const prefix = await svc.req(`/customers?email=${encodeURIComponent(c1.email.slice(0, 10))}`);
    assert.deepEqual(prefix.json, { items: [] });
    const all = await svc.req('/customers');
    assert.equal(all.status, 200);
    const ids = all.json.items.map((c) => c.id);
    assert.ok(ids.indexOf(c2.id) < ids.indexOf(c1.id) && ids.indexOf(c2.id) >= 0, `newest first: ${ids}`);
    assert.ok(all.json.items.length <= 100);
  });

  test('PATCH /customers/{id}: renames; 404; 400; 422 for an invalid name or other fields', async () => {
    const c = await createCustomer('Old Name');
    const r = await svc.req(`/customers/${c.id}`, { method: 'PATCH', json: { name: 'New Name' } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { ...c, name: 'New Name' });
    assert.equal((await svc.req(`/customers/${c.id}`)).json.name, 'New Name');
    problem(await svc.req('/customers/999999', { method: 'PATCH', json: { name: 'x' } }), 404, 'not-found');
    problem(await svc.req('/customers/x', { method: 'PATCH', json: { name: 'x' } }), 400, 'bad-id');
    for (const [body, field] of [[{ name: '' }, 'name'], [{ name: 5 }, 'name'], [{}, 'name'], [{ email: 'a@b.cd' }, 'email']]) {
      const p = problem(await svc.req(`/customers/${c.id}`, { method: 'PATCH', json: body }), 422, 'invalid-customer');
      assert.ok(p.detail.includes(`"${field}"`), p.detail);
    }
    problem(await svc.req(`/customers/${c.id}`, { method: 'PATCH' }), 422, 'invalid-customer');
    assert.deepEqual((await svc.req(`/customers/${c.id}`)).json, { ...c, name: 'New Name', addresses: [] });
  });

  test('addresses: create with location, list, and one default that moves', async () => {
    const c = await createCustomer('Home Owner');
    const base = `/customers/${c.id}/addresses`;
    const a1 = await svc.req(base, { method: 'POST', json: address({ is_default: true }) });
    assert.equal(a1.status, 201, a1.text);
    assert.deepEqual(Object.keys(a1.json).sort(), ['city', 'country', 'id', 'is_default', 'line1', 'postal_code']);
    assert.equal(a1.json.is_default, true);
    assert.equal(a1.json.line1, 'Hauptstraße 1');
    assert.equal(a1.headers.location, `${base}/${a1.json.id}`);
    const a2 = await svc.req(base, { method: 'POST', json: address({ line1: 'Rue de Rivoli 2', city: 'Paris', postal_code: '75001', country: 'fr' }) });
    assert.equal(a2.status, 201);
    assert.equal(a2.json.is_default, false, 'is_default defaults to false');
    assert.equal(a2.json.country, 'FR', 'country stored upper-case');
    let list = await svc.req(base);
    assert.equal(list.status, 200);
    assert.deepEqual(list.json.map((a) => [a.id, a.is_default]), [[a1.json.id, true], [a2.json.id, false]]);
    // A new default clears the old one.
    const a3 = await svc.req(base, { method: 'POST', json: address({ line1: 'Kanal 3', is_default: true }) });
    assert.equal(a3.json.is_default, true);
    list = await svc.req(base);
    assert.deepEqual(list.json.map((a) => [a.id, a.is_default]), [[a1.json.id, false], [a2.json.id, false], [a3.json.id, true]]);
    assert.equal(list.json.filter((a) => a.is_default).length, 1);
    // Another customer's default is untouched.
    const other = await createCustomer('Neighbour');
    const o1 = await svc.req(`/customers/${other.id}/addresses`, { method: 'POST', json: address({ is_default: true }) });
    assert.equal(o1.json.is_default, true);
    assert.equal((await svc.req(base)).json.find((a) => a.id === a3.json.id).is_default, true);
    assert.deepEqual((await svc.req(`/customers/${c.id}`)).json.addresses, (await svc.req(base)).json);
  });

  test('addresses: delete 204, then 404; other customers\' addresses are not reachable', async () => {
    const c = await createCustomer('Mover');
    const other = await createCustomer('Other');
    const base = `/customers/${c.id}/addresses`;
    const a = (await svc.req(base, { method: 'POST', json: address({ is_default: true }) })).json;
    const b = (await svc.req(base, { method: 'POST', json: address({ city: 'Hamburg' }) })).json;
    problem(await svc.req(`/customers/${other.id}/addresses/${a.id}`, { method: 'DELETE' }), 404, 'not-found');
    const d = await svc.req(`${base}/${a.id}`, { method: 'DELETE' });
    assert.equal(d.status, 204);
    assert.equal(d.text, '');
    assert.deepEqual((await svc.req(base)).json, [b]);
    problem(await svc.req(`${base}/${a.id}`, { method: 'DELETE' }), 404, 'not-found');
    problem(await svc.req(`${base}/abc`, { method: 'DELETE' }), 400, 'bad-id');
    problem(await svc.req(`/customers/0/addresses/${b.id}`, { method: 'DELETE' }), 400, 'bad-id');
  });

  test('addresses: 422 naming the field; 404 for an unknown customer; 400 bad id', async () => {
    const c = await createCustomer('Validator');
    const base = `/customers/${c.id}/addresses`;
    const cases = [
      [{ line1: undefined }, 'line1'], [{ line1: '' }, 'line1'], [{ city: 3 }, 'city'], [{ city: undefined }, 'city'],
      [{ postal_code: '' }, 'postal_code'], [{ postal_code: 'x'.repeat(21) }, 'postal_code'],
      [{ country: 'DEU' }, 'country'], [{ country: 'D' }, 'country'], [{ country: '12' }, 'country'],
      [{ country: undefined }, 'country'], [{ is_default: 'yes' }, 'is_default'], [{ is_default: 1 }, 'is_default'],
    ];
    for (const [over, field] of cases) {
      const p = problem(await svc.req(base, { method: 'POST', json: address(over) }), 422, 'invalid-address');
      assert.ok(p.detail.includes(`"${field}"`), `${JSON.stringify(over)}: ${p.detail}`);
    }
    problem(await svc.req(base, { method: 'POST' }), 422, 'invalid-address');
    assert.deepEqual((await svc.req(base)).json, [], 'no invalid address was stored');
    problem(await svc.req('/customers/999999/addresses', { method: 'POST', json: address() }), 404, 'not-found');
    problem(await svc.req('/customers/999999/addresses'), 404, 'not-found');
    problem(await svc.req('/customers/nope/addresses'), 400, 'bad-id');
  });

  test('a wrong method answers 405; /health/ready 200; /metrics by route', async () => {
    const r = await svc.req('/customers/1', { method: 'DELETE' });
    assert.equal(r.status, 405);
    assert.match(r.headers.allow, /PATCH/);
    assert.equal((await svc.req('/health/ready')).status, 200);
    const m = await svc.req('/metrics');
    assert.match(m.text, /^trellis_app_requests_total\{[^}]*route="\/customers\/\{id\}\/addresses"[^}]*\} \d+/m);
  });
});

describe('shop customer: persistence and replicas', () => {
  test('two replicas on one fresh data dir both serve one database; data survives restarts', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'shop-customer-pair-'));
    let pair = [];
    try {
      const results = await Promise.allSettled([
        startShopService('customer', { dataDir: dir }),
        startShopService('customer', { dataDir: dir }),
      ]);
      pair = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      for (const r of results) assert.equal(r.status, 'fulfilled', String(r.reason));
      const email = uniqueEmail('replica');
      const c = await pair[0].req('/customers', { method: 'POST', json: { email, name: 'Rep' } });
      assert.equal(c.status, 201);
      assert.deepEqual((await pair[1].req(`/customers/${c.json.id}`)).json, { ...c.json, addresses: [] });
      problem(await pair[1].req('/customers', { method: 'POST', json: { email, name: 'Dup' } }), 409, 'email-taken');
      const a = await pair[1].req(`/customers/${c.json.id}/addresses`, { method: 'POST', json: address({ is_default: true }) });
      assert.equal(a.status, 201);
      for (const s of pair) await s.stop();
      pair = [];
      const again = await startShopService('customer', { dataDir: dir });
      pair = [again];
      assert.deepEqual((await again.req(`/customers/${c.json.id}`)).json, { ...c.json, addresses: [a.json] });
    } finally {
      for (const s of pair) await s.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
