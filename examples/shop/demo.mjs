// The shop's demo story, told against a running `trellis up examples/shop/topology.yaml`:
// get a token, browse the catalog, place orders; kill an inventory replica (traffic keeps
// flowing); stop every inventory replica (the order service's breaker opens and its
// fallback answers); bring them back (the breaker closes); then one request's trace
// waterfall and its log lines. Every step checks what it tells; the exit code is 0 only
// if every step behaved as told. Node built-ins only.
//
// Usage: node examples/shop/demo.mjs [--gateway URL] [--api URL] [--trellis BIN]
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const GATEWAY = arg('gateway', 'http://127.0.0.1:8080');
const API = arg('api', 'http://127.0.0.1:8500');
const TRELLIS = arg('trellis', path.resolve(here, '../../build/trellis'));

const color = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code, s) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = (s) => paint('1', s);
const dim = (s) => paint('2', s);
let failures = 0;

function chapter(title) {
  console.log(`\n${bold(`== ${title}`)}`);
}
function say(text) {
  console.log(`   ${text}`);
}
function check(ok, text, detail = '') {
  if (!ok) failures++;
  console.log(`   ${ok ? paint('32', 'ok  ') : paint('31', 'FAIL')} ${text}${detail ? dim(`  ${detail}`) : ''}`);
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An HTTP call with a 10 s deadline; resolves {status, json, headers, ms}. */
async function http(method, url, { token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (body !== undefined) h['content-type'] = 'application/json';
  const t0 = performance.now();
  try {
    const res = await fetch(url, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000) });
    const text = await res.text();
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    return { status: res.status, json, text, headers: res.headers, ms: performance.now() - t0 };
  } catch (e) {
    return { status: 0, error: e.message, ms: performance.now() - t0 };
  }
}
const gw = (method, p, opts) => http(method, `${GATEWAY}${p}`, opts);

/** Polls fn until it returns a truthy value, or the deadline passes (returns undefined). */
async function until(fn, timeoutMs, everyMs = 200) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const v = await fn();
    if (v) return v;
    await sleep(everyMs);
  }
  return undefined;
}

function trellis(...args) {
  const r = spawnSync(TRELLIS, args, { encoding: 'utf8', timeout: 15000, env: { ...process.env, NO_COLOR: '1' } });
  return { code: r.status, out: r.stdout || '', err: r.stderr || '' };
}

async function instances(service) {
  const r = await http('GET', `${API}/api/services`);
  const svc = (r.json?.services || r.json || []).find?.((s) => s.name === service);
  return svc?.instances || [];
}

async function placeOrder(token, customerId, items, extra = {}) {
  return gw('POST', '/api/v1/orders', { token, body: { customer_id: customerId, items }, ...extra });
}

async function main() {
  console.log(bold('\nThe trellis shop: a story in eight chapters'));
  say(dim(`gateway ${GATEWAY}   control plane ${API}`));

  chapter('1. Everything is up');
  const ready = await until(async () => (await gw('GET', '/api/v1/products')).status === 401, 30000);
  check(!!ready, 'the gateway answers, and refuses a request without a token (401)');

  chapter('2. Get a token from the demo identity provider');
  const tok = await gw('POST', '/api/v1/auth/token', { body: { username: 'alice', password: 'demo' } });
  const token = tok.json?.access_token;
  check(tok.status === 200 && !!token, 'POST /api/v1/auth/token → 200 with an RS256 access token',
    token ? `${token.slice(0, 24)}…` : tok.text);
  const bad = await gw('POST', '/api/v1/auth/token', { body: { username: 'alice', password: 'guess' } });
  check(bad.status === 401, 'a wrong password gets 401 problem+json', bad.json?.title || '');
  // The gateway learns the key from the JWKS at start; right after a cold start it may fetch
  // it on the first token it sees, so the first authorised call is retried briefly.
  const first = await until(async () => {
    const r = await gw('GET', '/api/v1/categories', { token });
    return r.status === 200 ? r : undefined;
  }, 10000, 300);
  check(!!first, 'the token opens the API: GET /api/v1/categories → 200',
    first ? first.json.map((c) => c.name).join(', ') : '');

  chapter('3. Browse the catalog');
  const coffee = await gw('GET', '/api/v1/products?category=coffee', { token });
  check(coffee.status === 200 && coffee.json?.items?.length > 0, 'the coffee category',
    (coffee.json?.items || []).map((p) => `${p.name} (€${(p.price_cents / 100).toFixed(2)})`).join('; '));
  const search = await gw('GET', '/api/v1/products?q=programm', { token });
  check(search.status === 200 && search.json?.items?.length > 0, 'search "programm"',
    (search.json?.items || []).map((p) => p.name).join('; '));
  const one = await gw('GET', '/api/v1/products/1', { token });
  check(one.status === 200 && one.json?.id === 1, 'GET /api/v1/products/1', one.json?.name || '');
  const missing = await gw('GET', '/api/v1/products/99999', { token });
  check(missing.status === 404 && /problem\+json/.test(missing.headers?.get('content-type') || ''),
    'an unknown product is a 404 problem+json');

  chapter('4. Place orders');
  const email = `alice+${Date.now()}@example.com`;
  const cust = await gw('POST', '/api/v1/customers', { token, body: { email, name: 'Alice Liddell' } });
  check(cust.status === 201, 'create customer Alice', `id ${cust.json?.id}`);
  const customerId = cust.json?.id || 1;
  const traceId = randomBytes(16).toString('hex');
  const correlationId = `demo-${randomBytes(4).toString('hex')}`;
  const order = await placeOrder(token, customerId, [{ product_id: 1, quantity: 2 }, { product_id: 9, quantity: 1 }], {
    headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01`, 'x-correlation-id': correlationId },
  });
  check(order.status === 201 && order.json?.status === 'created' && order.json?.stock_check === 'verified',
    'order with stock checked by the inventory service',
    `order ${order.json?.id}: ${order.json?.status}, total €${((order.json?.total_cents || 0) / 100).toFixed(2)}`);
  const oos = await placeOrder(token, customerId, [{ product_id: 12, quantity: 1 }]);
  check(oos.status === 409, 'an out-of-stock product is refused with 409', oos.json?.detail || '');

  chapter('5. Kill one inventory replica: traffic keeps flowing');
  await sleep(1500); // services export spans every second: let the first order's spans leave
  const inv = await instances('inventory');
  const victim = inv.find((i) => i.pid);
  if (check(!!victim, `inventory has ${inv.length} replicas`, victim ? `killing pid ${victim.pid} (SIGKILL)` : '')) {
    process.kill(victim.pid, 'SIGKILL');
  }
  let ok = 0;
  let verified = 0;
  for (let i = 0; i < 20; i++) {
    const r = await placeOrder(token, customerId, [{ product_id: 2, quantity: 1 }]);
    if (r.status === 201) ok++;
    if (r.json?.stock_check === 'verified') verified++;
  }
  check(ok === 20 && verified === 20, '20 orders right after the kill: all created, all stock-checked',
    `${ok}/20 created, ${verified}/20 verified (retries went to the other replica)`);
  const back = await until(async () => (await instances('inventory')).filter((i) => i.ready).length >= 2, 15000);
  check(!!back, 'the supervisor restarted the killed replica');

  chapter('6. Stop every inventory replica: the breaker opens, the fallback answers');
  const stop = trellis('stop', 'inventory', '--url', API);
  check(stop.code === 0, 'trellis stop inventory', stop.out.trim() || stop.err.trim());
  await until(async () => (await instances('inventory')).every((i) => !i.ready), 10000);
  const outcomes = [];
  for (let i = 0; i < 8; i++) {
    const r = await placeOrder(token, customerId, [{ product_id: 3, quantity: 1 }]);
    outcomes.push(r);
  }
  const deferred = outcomes.filter((r) => r.status === 201 && r.json?.stock_check === 'deferred').length;
  check(deferred === outcomes.length, 'orders are still accepted, as pending with the stock check deferred',
    `${deferred}/${outcomes.length} pending; last took ${outcomes.at(-1).ms.toFixed(1)} ms`);
  const open = await breakerStates();
  check(open.some((s) => s === 1), 'the order service reports its inventory breaker open',
    `trellis_app_breaker_state{target="inventory"} = ${open.join(', ')}`);
  const fast = outcomes.slice(-3).every((r) => r.ms < 200);
  check(fast, 'with the breaker open, orders no longer wait for inventory timeouts',
    outcomes.slice(-3).map((r) => `${r.ms.toFixed(1)} ms`).join(', '));

  chapter('7. Bring inventory back: the breaker closes');
  const start = trellis('start', 'inventory', '--url', API);
  check(start.code === 0, 'trellis start inventory', start.out.trim() || start.err.trim());
  await until(async () => (await instances('inventory')).filter((i) => i.ready).length >= 1, 15000);
  const healed = await until(async () => {
    const r = await placeOrder(token, customerId, [{ product_id: 4, quantity: 1 }]);
    return r.json?.stock_check === 'verified' ? r : undefined;
  }, 20000, 500);
  check(!!healed, 'orders are stock-checked again once the breaker has closed', healed ? `order ${healed.json.id}: created` : '');
  const closed = await breakerStates();
  say(dim(`trellis_app_breaker_state{target="inventory"} = ${closed.join(', ')}`));

  chapter('8. Follow one request: its trace and its log lines');
  say(`the first order's correlation ID ${bold(correlationId)}, trace ${bold(traceId)}`);
  const traced = await until(async () => {
    const r = await http('GET', `${API}/api/traces/${traceId}`);
    const spans = r.json?.spans || [];
    const services = new Set(spans.map((s) => s.service));
    return services.has('gateway') && services.has('order') && services.has('inventory') && services.has('catalog') ? r : undefined;
  }, 10000, 300);
  check(!!traced, 'the trace holds the gateway, order, catalog and inventory spans');
  const wf = trellis('trace', traceId, '--collector', API);
  console.log(wf.out.replace(/^/gm, '   '));
  const logs = trellis('logs', '--correlation-id', correlationId, '--url', API, '-n', '20');
  const lines = logs.out.trim().split('\n').filter(Boolean);
  check(lines.length > 0 && /order/.test(logs.out), `log lines with correlation ID ${correlationId}`, `${lines.length} lines`);
  console.log(logs.out.replace(/^/gm, '   '));

  console.log(`\n${bold('Explore')}`);
  say(`gateway            ${GATEWAY}/api/v1/products   (Authorization: Bearer <token>)`);
  say(`a token            curl -s ${GATEWAY}/api/v1/auth/token -d '{"username":"you","password":"demo"}'`);
  say(`services           ${TRELLIS} ps          ${API}/api/services`);
  say(`traces             ${API}/api/traces?service=order      ${TRELLIS} trace <id> --collector ${API}`);
  say(`dependencies       ${API}/api/dependencies`);
  say(`logs               ${TRELLIS} logs -f      ${API}/api/logs?correlation_id=${correlationId}`);
  say(`metrics            ${API}/metrics   http://127.0.0.1:9901/metrics (gateway admin)`);
  say(`walk-through       examples/shop/README.md`);
  console.log(failures ? paint('31', `\n${failures} step(s) did not behave as told.`) : paint('32', '\nEvery step behaved as told.'));
  return failures;
}

/** trellis_app_breaker_state{target="inventory"} of every order replica. */
async function breakerStates() {
  const states = [];
  for (const i of await instances('order')) {
    if (!i.port) continue;
    const r = await http('GET', `http://127.0.0.1:${i.port}/metrics`);
    const m = /trellis_app_breaker_state\{target="inventory"\} (\d+)/.exec(r.text || '');
    if (m) states.push(Number(m[1]));
  }
  return states;
}

main().then((f) => process.exit(f ? 1 : 0), (e) => {
  console.error(e);
  process.exit(1);
});
