// The shop's catalog service (examples/shop/catalog) end to end, against the contract of
// examples/shop/API.md: the seeded products, search, filters and pagination, reads,
// creation and changes with their validation, the SDK's endpoints, persistence across a
// restart, and two replicas seeding one database once.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startShopService, shopBin, assertShopProblem as problem } from './lib/shop.mjs';

const PRODUCT_KEYS = ['category', 'category_id', 'currency', 'description', 'id', 'name', 'price_cents', 'sku'];

function assertProduct(p) {
  assert.deepEqual(Object.keys(p).sort(), PRODUCT_KEYS, JSON.stringify(p));
  assert.equal(p.currency, 'EUR');
  assert.ok(Number.isInteger(p.price_cents) && p.price_cents >= 0);
  assert.ok(['books', 'games', 'coffee'].includes(p.category), p.category);
}

const validProduct = (over = {}) => ({
  sku: `T-${Math.random().toString(36).slice(2, 10)}`, name: 'Test Mug', description: 'Stoneware, 300 ml',
  category_id: 3, price_cents: 1499, ...over,
});

describe('shop catalog: one instance', () => {
  let svc;
  before(async () => { svc = await startShopService('catalog'); });
  after(async () => { if (svc) await svc.stop(); });

  test('--help prints usage with the environment and exits 0', () => {
    const r = spawnSync(shopBin('catalog'), ['--help'], { encoding: 'utf8', timeout: 5000 });
    assert.equal(r.status, 0, r.stderr);
    for (const word of ['catalog', 'PORT', 'SHOP_DATA_DIR', 'TRELLIS_REGISTRY', 'TRELLIS_SERVICE']) {
      assert.ok(r.stdout.includes(word), `usage mentions ${word}:\n${r.stdout}`);
    }
  });

  test('GET /categories: the three seeded categories', async () => {
    const r = await svc.req('/categories');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.deepEqual(r.json, [
      { id: 1, slug: 'books', name: 'Books' },
      { id: 2, slug: 'games', name: 'Games' },
      { id: 3, slug: 'coffee', name: 'Coffee' },
    ]);
  });

  test('GET /products: 12 seeded products, ids 1-12, SKU-001…SKU-012, default page of 20', async () => {
    const r = await svc.req('/products');
    assert.equal(r.status, 200);
    assert.equal(r.json.total, 12);
    assert.equal(r.json.items.length, 12);
    r.json.items.forEach((p, i) => {
      assertProduct(p);
      assert.equal(p.id, i + 1);
      assert.equal(p.sku, `SKU-${String(i + 1).padStart(3, '0')}`);
      assert.ok(p.name.length > 0 && p.description.length > 0);
    });
    const cats = new Set(r.json.items.map((p) => p.category));
    assert.deepEqual([...cats].sort(), ['books', 'coffee', 'games']);
  });

  test('pagination: limit and offset slice, total counts all', async () => {
    const a = await svc.req('/products?limit=5&offset=0');
    const b = await svc.req('/products?limit=5&offset=5');
    const c = await svc.req('/products?limit=5&offset=10');
    assert.deepEqual([a, b, c].map((r) => r.status), [200, 200, 200]);
    assert.deepEqual(a.json.items.map((p) => p.id), [1, 2, 3, 4, 5]);
    assert.deepEqual(b.json.items.map((p) => p.id), [6, 7, 8, 9, 10]);
    assert.deepEqual(c.json.items.map((p) => p.id), [11, 12]);
    for (const r of [a, b, c]) assert.equal(r.json.total, 12);
    const past = await svc.req('/products?offset=1000');
    assert.deepEqual(past.json, { items: [], total: 12 });
    const max = await svc.req('/products?limit=100');
    assert.equal(max.status, 200);
    assert.equal(max.json.items.length, 12);
  });

  test('limit outside 1-100 or not an integer, bad offset → 400', async () => {
    for (const q of ['limit=0', 'limit=101', 'limit=-1', 'limit=abc', 'limit=5x', 'limit=', 'limit=2.5',
      'offset=-1', 'offset=x']) {
      problem(await svc.req(`/products?${q}`), 400, 'bad-query');
    }
  });

  test('search: q matches names case-insensitively as a substring', async () => {
    const r = await svc.req('/products?q=PROGRAMM');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.items.map((p) => p.id), [1, 3]);
    assert.equal(r.json.total, 2);
    const enc = await svc.req(`/products?q=${encodeURIComponent('ticket to')}`);
    assert.deepEqual(enc.json.items.map((p) => p.name), ['Ticket to Ride: Europe']);
    const none = await svc.req('/products?q=zzzz');
    assert.deepEqual(none.json, { items: [], total: 0 });
  });

  test('search: % and _ in q are literal characters, not wildcards', async () => {
    for (const q of ['%', '_', 'e%e', 'C_ta']) {
      const r = await svc.req(`/products?q=${encodeURIComponent(q)}`);
      assert.equal(r.status, 200);
      assert.deepEqual(r.json, { items: [], total: 0 }, `q=${q}`);
    }
    const c = await svc.req(`/products?q=${encodeURIComponent('Catan')}`);
    assert.equal(c.json.total, 1);
  });

  test('filter by category slug, alone and with q and pagination', async () => {
    const coffee = await svc.req('/products?category=coffee');
    assert.equal(coffee.status, 200);
    assert.equal(coffee.json.total, 4);
    assert.ok(coffee.json.items.every((p) => p.category === 'coffee' && p.category_id === 3));
    const both = await svc.req('/products?category=coffee&q=250');
    assert.ok(both.json.total >= 1 && both.json.total < 4, JSON.stringify(both.json));
    assert.ok(both.json.items.every((p) => p.category === 'coffee' && p.name.includes('250')));
    const page = await svc.req('/products?category=games&limit=1&offset=1');
    assert.equal(page.json.total, 4);
    assert.deepEqual(page.json.items.map((p) => p.id), [6]);
    const unknown = await svc.req('/products?category=garden');
    assert.deepEqual(unknown.json, { items: [], total: 0 });
  });

  test('GET /products/{id}: the product; 404 unknown; 400 not a positive integer', async () => {
    const r = await svc.req('/products/7');
    assert.equal(r.status, 200);
    assertProduct(r.json);
    assert.equal(r.json.id, 7);
    assert.equal(r.json.sku, 'SKU-007');
    assert.equal(r.json.category, 'games');
    const nf = problem(await svc.req('/products/999'), 404, 'not-found');
    assert.match(nf.detail, /999/);
    for (const bad of ['0', '-1', 'abc', '1.5', '99999999999999999999']) {
      problem(await svc.req(`/products/${bad}`), 400, 'bad-id');
    }
  });

  test('POST /products: 201 with location, readable and listed afterwards', async () => {
    const body = validProduct({ name: 'Hario V60 Dripper' });
    const r = await svc.req('/products', { method: 'POST', json: body });
    assert.equal(r.status, 201, r.text);
    assertProduct(r.json);
    assert.ok(r.json.id > 12);
    assert.equal(r.headers.location, `/products/${r.json.id}`);
    assert.deepEqual(
      { sku: r.json.sku, name: r.json.name, description: r.json.description, category_id: r.json.category_id, price_cents: r.json.price_cents },
      body,
    );
    assert.equal(r.json.category, 'coffee');
    const back = await svc.req(r.headers.location);
    assert.deepEqual(back.json, r.json);
    const found = await svc.req('/products?q=hario');
    assert.deepEqual(found.json.items, [r.json]);
    // description is optional
    const nodesc = await svc.req('/products', { method: 'POST', json: { ...validProduct(), description: undefined } });
    assert.equal(nodesc.status, 201, nodesc.text);
    assert.equal(nodesc.json.description, '');
  });

  test('POST /products: 409 for a duplicate sku, nothing stored', async () => {
    const before = (await svc.req('/products?limit=1')).json.total;
    const dup = problem(await svc.req('/products', { method: 'POST', json: validProduct({ sku: 'SKU-001' }) }), 409, 'duplicate-sku');
    assert.match(dup.detail, /SKU-001/);
    assert.equal((await svc.req('/products?limit=1')).json.total, before);
  });

  test('POST /products: 422 naming the field for each kind of invalid field', async () => {
    const cases = [
      [{ sku: undefined }, 'sku'],
      [{ sku: '' }, 'sku'],
      [{ sku: 42 }, 'sku'],
      [{ sku: 'x'.repeat(65) }, 'sku'],
      [{ name: undefined }, 'name'],
      [{ name: '' }, 'name'],
      [{ name: '   ' }, 'name'],
      [{ name: ['a'] }, 'name'],
      [{ description: 7 }, 'description'],
      [{ category_id: undefined }, 'category_id'],
      [{ category_id: '3' }, 'category_id'],
      [{ category_id: 0 }, 'category_id'],
      [{ category_id: 1.5 }, 'category_id'],
      [{ category_id: 99 }, 'category_id'], // unknown category
      [{ price_cents: undefined }, 'price_cents'],
      [{ price_cents: -1 }, 'price_cents'],
      [{ price_cents: 9.99 }, 'price_cents'],
      [{ price_cents: '100' }, 'price_cents'],
      [{ price_cents: true }, 'price_cents'],
    ];
    const before = (await svc.req('/products?limit=1')).json.total;
    for (const [over, field] of cases) {
      const r = await svc.req('/products', { method: 'POST', json: validProduct(over) });
      const p = problem(r, 422, 'invalid-product');
      assert.ok(p.detail.includes(`"${field}"`), `${JSON.stringify(over)}: detail names ${field}: ${p.detail}`);
    }
    assert.equal((await svc.req('/products?limit=1')).json.total, before, 'no invalid product was stored');
  });

  test('POST /products: 422 for an empty body; JSON that is not an object is refused', async () => {
    const before = (await svc.req('/products?limit=1')).json.total;
    const p = problem(await svc.req('/products', { method: 'POST' }), 422, 'invalid-product');
    assert.match(p.detail, /JSON object/);
    // The SDK refuses a JSON body that is not an object (400) before the handler runs; the
    // handler would answer 422. Either way it is a problem and nothing is stored.
    for (const json of [[validProduct()], 'x', 42]) {
      const r = await svc.req('/products', { method: 'POST', json });
      assert.ok([400, 422].includes(r.status), `${JSON.stringify(json)}: ${r.status} ${r.text}`);
      assert.match(r.headers['content-type'], /^application\/problem\+json/);
    }
    assert.equal((await svc.req('/products?limit=1')).json.total, before);
  });

  test('POST /products: 400 problem+json for a body that is not JSON', async () => {
    const r = await svc.req('/products', { method: 'POST', body: '{"sku": ', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
    assert.match(r.headers['content-type'], /^application\/problem\+json/);
    assert.equal(r.json.status, 400);
  });

  test('PATCH /products/{id}: changes name, description, price; keeps the rest', async () => {
    const created = (await svc.req('/products', { method: 'POST', json: validProduct() })).json;
    const r = await svc.req(`/products/${created.id}`, { method: 'PATCH', json: { price_cents: 999 } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { ...created, price_cents: 999 });
    const r2 = await svc.req(`/products/${created.id}`, { method: 'PATCH', json: { name: 'Renamed', description: '' } });
    assert.deepEqual(r2.json, { ...created, price_cents: 999, name: 'Renamed', description: '' });
    assert.deepEqual((await svc.req(`/products/${created.id}`)).json, r2.json);
    const zero = await svc.req(`/products/${created.id}`, { method: 'PATCH', json: { price_cents: 0 } });
    assert.equal(zero.json.price_cents, 0);
  });

  test('PATCH /products/{id}: 404, 400 and 422 leave the product as it was', async () => {
    problem(await svc.req('/products/999', { method: 'PATCH', json: { name: 'x' } }), 404, 'not-found');
    problem(await svc.req('/products/abc', { method: 'PATCH', json: { name: 'x' } }), 400, 'bad-id');
    const before = (await svc.req('/products/2')).json;
    for (const [body, field] of [[{ name: '' }, 'name'], [{ name: null }, 'name'], [{ price_cents: -5 }, 'price_cents'],
      [{ price_cents: 'free' }, 'price_cents'], [{ description: 3 }, 'description'], [{ sku: 'NEW' }, 'sku'],
      [{ category_id: 1 }, 'category_id']]) {
      const p = problem(await svc.req('/products/2', { method: 'PATCH', json: body }), 422, 'invalid-product');
      assert.ok(p.detail.includes(`"${field}"`), p.detail);
    }
    problem(await svc.req('/products/2', { method: 'PATCH' }), 422, 'invalid-product');
    assert.deepEqual((await svc.req('/products/2')).json, before);
  });

  test('a wrong method answers 405 with Allow', async () => {
    const r = await svc.req('/products/1', { method: 'DELETE' });
    assert.equal(r.status, 405);
    assert.match(r.headers['content-type'], /^application\/problem\+json/);
    assert.match(r.headers.allow, /GET/);
    assert.match(r.headers.allow, /PATCH/);
    const put = await svc.req('/categories', { method: 'POST', json: {} });
    assert.equal(put.status, 405);
  });

  test('/health/ready is 200 and /metrics counts requests by route', async () => {
    const ready = await svc.req('/health/ready');
    assert.equal(ready.status, 200);
    assert.equal(ready.json.status, 'ready');
    await svc.req('/products/3');
    assert.equal((await svc.req('/products', { method: 'POST', json: validProduct() })).status, 201);
    const m = await svc.req('/metrics');
    assert.equal(m.status, 200);
    assert.match(m.text, /^trellis_app_requests_total\{[^}]*route="\/products\/\{id\}"[^}]*\} \d+/m);
    assert.match(m.text, /^trellis_app_requests_total\{[^}]*route="\/products"[^}]*\} \d+/m);
    assert.match(m.text, /^trellis_app_requests_total\{[^}]*route="\/products"[^}]*method="POST"[^}]*code="201"[^}]*\} [1-9]/m);
  });
});

describe('shop catalog: persistence and replicas', () => {
  let dir;
  before(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'shop-catalog-shared-')); });
  after(() => { rmSync(dir, { recursive: true, force: true }); });

  test('data survives a restart with the same SHOP_DATA_DIR, and is not seeded twice', async () => {
    const a = await startShopService('catalog', { dataDir: dir });
    let created;
    try {
      const r = await a.req('/products', { method: 'POST', json: validProduct({ sku: 'KEEP-1', name: 'Keeper' }) });
      assert.equal(r.status, 201, r.text);
      created = r.json;
      const p = await a.req('/products/5', { method: 'PATCH', json: { price_cents: 4242 } });
      assert.equal(p.status, 200);
    } finally {
      await a.stop();
    }
    const b = await startShopService('catalog', { dataDir: dir });
    try {
      assert.deepEqual((await b.req(`/products/${created.id}`)).json, created);
      assert.equal((await b.req('/products/5')).json.price_cents, 4242);
      assert.equal((await b.req('/products')).json.total, 13);
    } finally {
      await b.stop();
    }
  });

  test('two replicas started together on one fresh data dir both serve, seeded once', async () => {
    const shared = mkdtempSync(path.join(os.tmpdir(), 'shop-catalog-pair-'));
    let pair = [];
    try {
      const results = await Promise.allSettled([
        startShopService('catalog', { dataDir: shared }),
        startShopService('catalog', { dataDir: shared }),
      ]);
      pair = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      for (const r of results) assert.equal(r.status, 'fulfilled', String(r.reason));
      for (const s of pair) {
        const r = await s.req('/products?limit=100');
        assert.equal(r.status, 200);
        assert.equal(r.json.total, 12);
        assert.deepEqual(r.json.items.map((p) => p.id), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert.equal((await s.req('/categories')).json.length, 3);
      }
      // A write through one replica is visible through the other: one database.
      const w = await pair[0].req('/products', { method: 'POST', json: validProduct() });
      assert.equal(w.status, 201);
      assert.deepEqual((await pair[1].req(w.headers.location)).json, w.json);
    } finally {
      for (const s of pair) await s.stop();
      rmSync(shared, { recursive: true, force: true });
    }
  });
});
