// `trellis gateway` routing over the wire: the match matrix (prefix, exact, template,
// regex, methods, header and query matchers, version), first match wins, 404 no_route,
// strip_prefix and rewrite with the query kept, path normalization, canary split and
// header subsets, discovery through `trellis registry`, and the proxy basics (streamed
// bodies, hop-by-hop headers, X-Forwarded-*, Via, Host).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import {
  startGateway, startEchoes, request, assertGatewayError, echoCount, pool, until, ms,
} from './lib/gateway.mjs';
import { rawExchange, parseAll } from './lib/trellis.mjs';
import { startRegistry, call } from './lib/registry.mjs';

const T = { timeout: ms(60000) };
const sha256 = (b) => createHash('sha256').update(b).digest('hex');

let echoA, echoB, gw, reg;

/** A route tagging the request with `x-route: <name>` (echo shows request headers). */
function r(name, match, extra = {}) {
  return {
    name, match, upstream: 'a', headers: { request: { add: { 'x-route': name } } }, ...extra,
  };
}

before(async () => {
  [echoA, echoB] = await startEchoes(2, ['--max-body', '4MiB']);
  reg = await startRegistry();
  const put = await call(reg, 'PUT', '/v1/agent/service/register', {
    body: JSON.stringify({ Name: 'disc', ID: 'disc-1', Address: '127.0.0.1', Port: echoB.port }),
  });
  assert.equal(put.status, 200, `register disc: ${put.text}`);
  gw = await startGateway({
    access_log: 'off',
    discovery: { registry: `127.0.0.1:${reg.port}` },
    upstreams: {
      a: { endpoints: [`127.0.0.1:${echoA.port}`] },
      b: { endpoints: [`127.0.0.1:${echoB.port}`] },
      disc: {},
    },
    routes: [
      r('exact', { exact: '/x/exact' }, { rewrite: { path: '/echo' } }),
      r('prefix', { prefix: '/x/pre' }, { rewrite: { path: '/echo' } }),
      r('template', { template: '/x/items/{id}' }, { rewrite: { path: '/echo' } }),
      r('regex', { regex: '^/x/v[0-9]+/r$' }, { rewrite: { path: '/echo' } }),
      r('m-write', { prefix: '/m', methods: ['POST', 'PUT'] }, { strip_prefix: true }),
      r('m-any', { prefix: '/m' }, { strip_prefix: true }),
      r('h-prefix', { prefix: '/h', headers: { 'x-tenant': { prefix: 'acme-' } } }, { strip_prefix: true }),
      r('h-present', { prefix: '/h', headers: { 'x-debug': { present: true } } }, { strip_prefix: true }),
      r('h-exact', { prefix: '/h', headers: { 'x-user-type': 'premium' } }, { strip_prefix: true }),
      r('h-absent', { prefix: '/h', headers: { 'x-legacy': { absent: true } } }, { strip_prefix: true }),
      r('h-rest', { prefix: '/h' }, { strip_prefix: true }),
      r('q-preview', { prefix: '/q', query: { preview: { exact: '1' } } }, { strip_prefix: true }),
      r('q-flag', { prefix: '/q', query: { flag: { present: true } } }, { strip_prefix: true }),
      r('q-rest', { prefix: '/q' }, { strip_prefix: true }),
      r('cat-v2', { prefix: '/catalog', version: 'v2' }, { strip_prefix: true }),
      r('cat-v1', { prefix: '/catalog' }, { strip_prefix: true }),
      r('dup-first', { prefix: '/dup' }, { strip_prefix: true }),
      r('dup-second', { prefix: '/dup' }, { strip_prefix: true }),
      r('dup-exact', { exact: '/dup/echo' }, { rewrite: { path: '/echo' } }),
      r('strip', { prefix: '/strip' }, { strip_prefix: true }),
      r('rw-exact', { exact: '/old-echo' }, { rewrite: { prefix: '/echo' } }),
      r('rw-prefix', { prefix: '/old' }, { rewrite: { prefix: '/status' } }),
      r('rw-template', { template: '/api/products/{id}' }, { rewrite: { path: '/{id}' } }),
      r('rw-status', { template: '/status-of/{code}' }, { rewrite: { path: '/status/{code}' } }),
      r('public', { prefix: '/api/public' }, { strip_prefix: true }),
      r('api', { prefix: '/api' }, { strip_prefix: true }),
      {
        name: 'hdrs', match: { prefix: '/hdrs' }, strip_prefix: true, upstream: 'a',
        headers: {
          request: { add: { 'x-gateway': 'trellis' }, remove: ['x-debug'] },
          response: { add: { 'x-served-by': 'gw' }, remove: ['content-type'] },
        },
      },
      {
        name: 'canary', match: { prefix: '/canary' }, strip_prefix: true,
        destinations: [{ upstream: 'a', weight: 90 }, { upstream: 'b', weight: 10 }],
        subsets: [{ headers: { 'x-user-type': 'premium' }, upstream: 'b' }],
      },
      { name: 'disc', match: { prefix: '/disc' }, strip_prefix: true, upstream: 'disc' },
      r('proxy', { prefix: '/p' }, { strip_prefix: true }),
    ],
  });
  await until(async () => (await gw.admin('/health/ready')).status === 200,
    { what: 'gateway /health/ready (discovery answered)' });
});

after(async () => {
  const errs = [];
  for (const p of [gw, echoA, echoB]) {
    if (!p) continue;
    try { await p.stop(); } catch (e) { errs.push(e); p.kill(); }
  }
  if (reg) await reg.cleanup();
  if (errs.length) throw errs[0];
});

/** GET through the gateway; the echo answer's JSON (or the raw response). */
async function via(p, opts = {}) {
  return request(gw.port, p, opts);
}

/** Asserts the request reached the echo /echo endpoint through `route`; returns echo's JSON. */
async function routed(p, route, opts = {}) {
  const res = await via(p, opts);
  assert.equal(res.status, 200, `${opts.method || 'GET'} ${p} ${JSON.stringify(opts.headers || {})}: status; body ${res.text}`);
  assert.ok(res.json && res.json.headers, `${p}: echo JSON; body ${res.text}`);
  assert.equal(res.json.headers['x-route'], route, `${opts.method || 'GET'} ${p} ${JSON.stringify(opts.headers || {})} is served by route ${route}`);
  return res.json;
}

test('path kinds: exact, prefix at a segment boundary, template, regex', T, async () => {
  await routed('/x/exact', 'exact');
  assertGatewayError(await via('/x/exact/'), 404, 'no_route');
  assertGatewayError(await via('/x/exactly'), 404, 'no_route');
  await routed('/x/pre', 'prefix');
  await routed('/x/pre/deeper/still', 'prefix');
  assertGatewayError(await via('/x/prefix'), 404, 'no_route');
  await routed('/x/items/42', 'template');
  assertGatewayError(await via('/x/items/42/more'), 404, 'no_route');
  assertGatewayError(await via('/x/items/'), 404, 'no_route');
  await routed('/x/v12/r', 'regex');
  assertGatewayError(await via('/x/vX/r'), 404, 'no_route');
  assertGatewayError(await via('/x/v1/r/s'), 404, 'no_route');
});

test('no route: 404 problem+json with x-trellis-error: no_route', T, async () => {
  const res = await via('/nowhere/at/all');
  const p = assertGatewayError(res, 404, 'no_route');
  assert.equal(p.type, 'https://trellis.dev/problems/no-route');
});

test('methods: a method list is compared exactly, others fall through', T, async () => {
  await routed('/m/echo', 'm-write', { method: 'POST', body: 'x' });
  await routed('/m/echo', 'm-write', { method: 'PUT', body: 'x' });
  await routed('/m/echo', 'm-any', { method: 'GET' });
  await routed('/m/echo', 'm-any', { method: 'DELETE' });
});

test('header matchers: prefix, present, exact (case-sensitive value), absent', T, async () => {
  await routed('/h/echo', 'h-prefix', { headers: { 'x-tenant': 'acme-7', 'x-legacy': '1' } });
  await routed('/h/echo', 'h-present', { headers: { 'x-tenant': 'bob', 'x-debug': '', 'x-legacy': '1' } });
  await routed('/h/echo', 'h-present', { headers: { 'X-DEBUG': 'on', 'x-legacy': '1' } });
  await routed('/h/echo', 'h-exact', { headers: { 'x-user-type': 'premium', 'x-legacy': '1' } });
  await routed('/h/echo', 'h-rest', { headers: { 'x-user-type': 'Premium', 'x-legacy': '1' } });
  await routed('/h/echo', 'h-absent', { headers: { 'x-user-type': 'premium-plus' } });
  await routed('/h/echo', 'h-absent', {});
  await routed('/h/echo', 'h-rest', { headers: { 'x-legacy': '' } });
});

test('query matchers: exact on the percent-decoded value, present', T, async () => {
  let j = await routed('/q/echo?preview=1', 'q-preview');
  assert.equal(j.query, 'preview=1');
  j = await routed('/q/echo?a=b&preview=%31', 'q-preview');
  assert.equal(j.query, 'a=b&preview=%31', 'the query is forwarded as sent');
  await routed('/q/echo?preview=2', 'q-rest');
  await routed('/q/echo?preview=1x', 'q-rest');
  await routed('/q/echo?flag', 'q-flag');
  await routed('/q/echo?flag=', 'q-flag');
  await routed('/q/echo', 'q-rest');
  await routed('/q/echo?Preview=1', 'q-rest');
});

test('version: by Accept-Version and by a /v2 first segment (stripped with the prefix)', T, async () => {
  let j = await routed('/catalog/echo', 'cat-v1');
  assert.equal(j.path, '/echo');
  j = await routed('/catalog/echo', 'cat-v2', { headers: { 'accept-version': 'v2' } });
  assert.equal(j.path, '/echo');
  j = await routed('/v2/catalog/echo?z=9', 'cat-v2');
  assert.equal(j.path, '/echo', '/v2 counts as part of the matched prefix');
  assert.equal(j.query, 'z=9');
  await routed('/catalog/echo', 'cat-v1', { headers: { 'accept-version': 'v3' } });
  assertGatewayError(await via('/v3/catalog/echo'), 404, 'no_route');
});

test('first match wins, in file order', T, async () => {
  for (let i = 0; i < 5; i++) await routed('/dup/echo', 'dup-first');
});

test('strip_prefix keeps the query and a leading /', T, async () => {
  const j = await routed('/strip/echo?a=1&b=two%20x', 'strip');
  assert.equal(j.path, '/echo');
  assert.equal(j.query, 'a=1&b=two%20x');
  const root = await via('/strip');
  assert.equal(root.status, 200);
  assert.equal(root.text, 'hello\n', '/strip reaches the upstream as /');
  const root2 = await via('/strip/?x=1');
  assert.equal(root2.status, 200);
  assert.equal(root2.text, 'hello\n', '/strip/ reaches the upstream as /');
});

test('rewrite: prefix (exact and prefix routes) and template path, query preserved', T, async () => {
  let j = await routed('/old-echo?q=1', 'rw-exact');
  assert.equal(j.path, '/echo');
  assert.equal(j.query, 'q=1');
  const st = await via('/old/203');
  assert.equal(st.status, 203, `/old/203 → /status/203; body ${st.text}`);
  j = await routed('/api/products/echo?lang=en', 'rw-template');
  assert.equal(j.path, '/echo');
  assert.equal(j.query, 'lang=en');
  const st2 = await via('/status-of/202?lang=en');
  assert.equal(st2.status, 202, `/status-of/202 → /status/202; body ${st2.text}`);
});

test('path normalization: dot segments, //, escapes; /api/public/../x never reaches /api/public', T, async () => {
  let j = await routed('/api/public/../echo', 'api');
  assert.equal(j.path, '/echo');
  j = await routed('/api/public/%2e%2e/echo', 'api');
  assert.equal(j.path, '/echo');
  j = await routed('/api/public/%2E%2E/echo?x=%2e', 'api');
  assert.equal(j.query, 'x=%2e', 'the query is not normalized');
  j = await routed('/api//public/./echo', 'public');
  assert.equal(j.path, '/echo');
  j = await routed('/api/public/x/../echo', 'public');
  assert.equal(j.path, '/echo');
  // Malformed or dangerous escapes are refused before routing.
  for (const bad of ['/api/public/%2F../echo', '/api/%zz', '/api/%2', '/api/a%5Cb', '/api/a%00b']) {
    const { data } = await rawExchange(gw.port, `GET ${bad} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n`, { timeout: ms(5000) });
    const [res] = parseAll(data);
    assert.equal(res.status, 400, `GET ${bad} → 400; got ${res.status} ${res.body}`);
  }
  const { data } = await rawExchange(gw.port, 'GET /api/a\\b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', { timeout: ms(5000) });
  assert.equal(parseAll(data)[0].status, 400, 'a raw \\ in the path → 400');
  const long = '/api/' + 'a'.repeat(9000);
  const { data: d2 } = await rawExchange(gw.port, `GET ${long} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n`, { timeout: ms(5000) });
  assert.equal(parseAll(d2)[0].status, 414, 'a path over 8 KiB → 414');
});

test('route headers: request add/remove reach the upstream, response add/remove reach the client', T, async () => {
  const res = await via('/hdrs/echo', { headers: { 'x-debug': '1', 'x-keep': 'yes' } });
  assert.equal(res.status, 200);
  assert.equal(res.json.headers['x-gateway'], 'trellis');
  assert.equal(res.json.headers['x-debug'], undefined, 'x-debug removed');
  assert.equal(res.json.headers['x-keep'], 'yes');
  assert.equal(res.headers['x-served-by'], 'gw');
  assert.equal(res.headers['content-type'], undefined, 'the upstream\'s content-type removed from the response');
});

test('canary: 90/10 over 10,000 requests within ±2 points', T, async () => {
  const a0 = await echoCount(echoA, 'echo');
  const b0 = await echoCount(echoB, 'echo');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  try {
    const N = 10000;
    const res = await pool(N, 64, () => request(gw.port, '/canary/echo', { agent }));
    const bad = res.filter((x) => x.error || x.status !== 200);
    assert.equal(bad.length, 0, `all 200; first failure: ${bad[0] && (bad[0].error || bad[0].status)}`);
    const a = (await echoCount(echoA, 'echo')) - a0;
    const b = (await echoCount(echoB, 'echo')) - b0;
    assert.equal(a + b, N, `every request reached one of the two upstreams (a=${a}, b=${b})`);
    const share = (100 * b) / N;
    assert.ok(share >= 8 && share <= 12, `v2 share ${share}% is 10 ± 2`);
  } finally {
    agent.destroy();
  }
});

test('canary: a header-matched subset (x-user-type: premium) always goes to v2', T, async () => {
  const a0 = await echoCount(echoA, 'echo');
  const b0 = await echoCount(echoB, 'echo');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  try {
    const res = await pool(300, 16, () => request(gw.port, '/canary/echo', { agent, headers: { 'x-user-type': 'premium' } }));
    assert.ok(res.every((x) => x.status === 200), 'all 200');
    assert.equal((await echoCount(echoA, 'echo')) - a0, 0, 'no premium request reached v1');
    assert.equal((await echoCount(echoB, 'echo')) - b0, 300, 'all 300 premium requests reached v2');
  } finally {
    agent.destroy();
  }
});

test('discovery: an upstream given by service name reaches the registered instance', T, async () => {
  const b0 = await echoCount(echoB, 'echo');
  const res = await via('/disc/echo?d=1');
  assert.equal(res.status, 200, `body ${res.text}`);
  assert.equal(res.json.query, 'd=1');
  assert.equal((await echoCount(echoB, 'echo')) - b0, 1, 'served by the registered echo');
});

test('proxy: a 1 MiB upload and a 1 MiB download stream through intact (sha256)', T, async () => {
  const up = Buffer.alloc(1 << 20);
  for (let i = 0; i < up.length; i++) up[i] = (i * 7 + (i >> 10)) & 0xff;
  const res = await via('/p/echo', { method: 'POST', body: up, headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(res.status, 200, `body ${res.text.slice(0, 300)}`);
  assert.equal(res.json.body_bytes, up.length);
  assert.equal(res.json.body_sha256, sha256(up));
  // Chunked upload (no Content-Length).
  const chunked = await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: gw.port, path: '/p/echo', method: 'PUT' }, (r) => {
      const c = [];
      r.on('data', (d) => c.push(d));
      r.on('end', () => resolve({ status: r.statusCode, json: JSON.parse(Buffer.concat(c).toString()) }));
    });
    req.on('error', reject);
    for (let off = 0; off < up.length; off += 65536) req.write(up.subarray(off, off + 65536));
    req.end();
  });
  assert.equal(chunked.status, 200);
  assert.equal(chunked.json.body_bytes, up.length);
  assert.equal(chunked.json.body_sha256, sha256(up));
  const n = 1 << 20;
  const down = await via(`/p/bytes/${n}`);
  assert.equal(down.status, 200);
  const want = Buffer.alloc(n);
  for (let i = 0; i < n; i++) want[i] = 97 + (i % 26);
  assert.equal(down.body.length, n);
  assert.equal(sha256(down.body), sha256(want));
});

test('proxy: hop-by-hop headers removed; X-Forwarded-*, Via added; client Host forwarded', T, async () => {
  const reqText = 'GET /p/echo HTTP/1.1\r\nHost: shop.example:8443\r\n'
    + 'Connection: close, x-secret\r\nx-secret: s3cr3t\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n'
    + 'Trailer: x-t\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n'
    + 'X-Forwarded-For: 10.1.2.3\r\nx-end-to-end: kept\r\n\r\n';
  const { data } = await rawExchange(gw.port, reqText, { timeout: ms(5000) });
  const [res] = parseAll(data);
  assert.equal(res.status, 200, res.body);
  const h = JSON.parse(res.body).headers;
  for (const k of ['x-secret', 'keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection', 'upgrade']) {
    assert.equal(h[k], undefined, `hop-by-hop ${k} not forwarded; upstream saw ${JSON.stringify(h)}`);
  }
  assert.notEqual(h.connection, 'close, x-secret', 'client Connection header not forwarded as is');
  assert.equal(h['x-end-to-end'], 'kept');
  assert.equal(h.host, 'shop.example:8443', 'client Host forwarded unchanged');
  assert.equal(h['x-forwarded-for'], '10.1.2.3, 127.0.0.1', 'X-Forwarded-For appended');
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.equal(h['x-forwarded-host'], 'shop.example:8443');
  assert.match(h.via || '', /(^|,\s*)1\.1 trellis$/);
  assert.equal(res.headers['keep-alive'], undefined);
  assert.ok(res.headers.date, 'the answer has a Date');
});

test('proxy: on a reused upstream connection each answer has its own Content-Length', T, async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (const n of [1000, 10, 543, 14, 100000, 3, 0, 7]) {
      const res = await request(gw.port, `/p/bytes/${n}`, { agent });
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-length'], String(n), `GET /p/bytes/${n}: Content-Length`);
      assert.equal(res.body.length, n, `GET /p/bytes/${n}: body length`);
    }
    for (const [p, want] of [['/p/echo', 200], ['/p/status/203', 203], ['/p/echo', 200], ['/p/status/202', 202]]) {
      const res = await request(gw.port, p, { agent });
      assert.equal(res.status, want);
      assert.equal(Number(res.headers['content-length']), res.body.length, `GET ${p}: Content-Length equals the body's length`);
    }
  } finally {
    agent.destroy();
  }
});
