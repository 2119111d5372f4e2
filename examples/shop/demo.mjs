// The shop's demo story, told against a running `trellis up examples/shop/topology.yaml`:
// get a token, browse the catalog, place orders; check out with the create-order saga (a
// card that pays, one that is declined and compensated); kill an inventory replica (traffic
// keeps flowing); stop every inventory replica (the order service's breaker opens and its
// fallback answers); bring them back (the breaker closes); one request's trace waterfall and
// its log lines; then SIGKILL the control plane mid-saga and watch the saga end after the
// restart. Every step checks what it tells; the exit code is 0 only if every step behaved
// as told. Node built-ins only.
//
// Usage: node examples/shop/demo.mjs [--gateway URL] [--api URL] [--trellis BIN]
//          [--up-pid-file FILE --topology FILE --up-log FILE]
// --up-pid-file holds the pid of the `trellis up` to SIGKILL in the last chapter, which then
// starts it again (topology, log appended) and writes the new pid there. Without them that
// chapter is skipped.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
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
const UP_PID_FILE = arg('up-pid-file', '');
const TOPOLOGY = arg('topology', '');
const UP_LOG = arg('up-log', '');
const CARD_OK = '4242424242424242';
const CARD_DECLINED = '4000000000000002';
const CARD_SLOW = '4000000000000003';

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

const checkout = (token, body) => gw('POST', '/api/v1/checkout', { token, body });
const stock = async (token, id) => (await gw('GET', `/api/v1/inventory/stock/${id}`, { token })).json || {};
const stepOf = (saga, name) => (saga?.steps || []).find((x) => x.name === name);
const responseOf = (saga, name) => stepOf(saga, name)?.action?.response || {};

/** Prints each step of a saga: its action's state, then its compensation's. */
function sayStep(st) {
  const call = (c) => (c ? `${c.state}${c.attempts > 1 ? ` ×${c.attempts}` : ''}${c.status ? ` (HTTP ${c.status})` : ''}` : '—');
  say(dim(`  ${st.name.padEnd(20)} action ${call(st.action).padEnd(22)} compensation ${call(st.compensation)}`));
}

/**
 * The compensations of a saga in the order they ran: by start time, and within the same
 * clock tick in reverse order of the steps (how the orchestrator runs them).
 */
function compensations(saga) {
  const at = (x) => { const v = x.compensation.started_at; return typeof v === 'number' ? v : Date.parse(v) || 0; };
  return (saga?.steps || []).map((x, i) => ({ ...x, i })).filter((x) => x.compensation)
    .sort((a, b) => at(a) - at(b) || b.i - a.i);
}

async function main() {
  console.log(bold('\nThe trellis shop: a story in ten chapters'));
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

  chapter('5. Check out with a saga');
  say('POST /api/v1/checkout runs the create-order saga in the control plane: create the order');
  say('(pending), reserve stock, charge the card (the pivot), confirm the reservation and the order');
  const before = await stock(token, 5);
  const paid = await checkout(token, { customer_id: customerId, items: [{ product_id: 5, quantity: 2 }], card: CARD_OK });
  const saga = paid.json;
  check(paid.status === 200 && saga?.state === 'completed', `checkout with card …${CARD_OK.slice(-4)}: saga completed`,
    `saga ${saga?.id}: ${saga?.state || paid.text}`);
  for (const st of saga?.steps || []) sayStep(st);
  const orderId = responseOf(saga, 'order').id;
  const placed = await gw('GET', `/api/v1/orders/${orderId}`, { token });
  check(placed.json?.status === 'confirmed' && placed.json?.payment === responseOf(saga, 'charge').id,
    'the order is confirmed, with its payment', `order ${orderId}: ${placed.json?.status}, payment ${placed.json?.payment}`);
  const resv = await gw('GET', `/api/v1/inventory/reservations/${responseOf(saga, 'reserve').id}`, { token });
  const after = await stock(token, 5);
  check(resv.json?.status === 'confirmed' && after.on_hand === before.on_hand - 2 && after.reserved === before.reserved,
    'the stock was reserved, then the reservation confirmed: on hand is 2 lower',
    `product 5 on hand ${before.on_hand} → ${after.on_hand}, reservation ${resv.json?.id}: ${resv.json?.status}`);

  const declined = await checkout(token, { customer_id: customerId, items: [{ product_id: 5, quantity: 1 }], card: CARD_DECLINED });
  const ds = declined.json;
  check(declined.status === 200 && ds?.state === 'compensated', `checkout with card …${CARD_DECLINED.slice(-4)}: declined, saga compensated`,
    ds?.error || declined.text);
  for (const st of ds?.steps || []) sayStep(st);
  const undone = compensations(ds);
  say(`compensations, in the order they ran: ${undone.map((x) => `${x.name} (${x.compensation.state})`).join(' → ')}`);
  check(undone.map((x) => x.name).join(',') === 'reserve,order' && undone.every((x) => x.compensation.state === 'done'),
    'the reservation was released, then the order cancelled (reverse order)');
  const dOrder = await gw('GET', `/api/v1/orders/${responseOf(ds, 'order').id}`, { token });
  const dResv = await gw('GET', `/api/v1/inventory/reservations/${responseOf(ds, 'reserve').id}`, { token });
  const dStock = await stock(token, 5);
  check(dOrder.json?.status === 'cancelled' && dResv.json?.status === 'released' && dStock.on_hand === after.on_hand &&
    dStock.reserved === after.reserved, 'the order is cancelled, the reservation released, the stock as it was',
  `order ${dOrder.json?.id}: ${dOrder.json?.status}; reservation ${dResv.json?.id}: ${dResv.json?.status}; on hand ${dStock.on_hand}, reserved ${dStock.reserved}`);
  // An order is an event-sourced aggregate: its stream order-<id> in the event store is its
  // state. The notification service keeps its messages from those streams (a projection).
  const stream = await http('GET', `${API}/api/streams/order-${responseOf(ds, 'order').id}`);
  const types = (stream.json?.events || []).map((e) => `${e.version}:${e.type}`);
  check(types.join(',') === '0:OrderPlaced,1:OrderCancelled',
    'the cancelled order is its stream in the event store', `order-${responseOf(ds, 'order').id}: ${types.join(' → ')}`);
  const told = async (id, n) => until(async () => {
    const r = await gw('GET', `/api/v1/notifications?order_id=${id}`, { token });
    return r.json?.items?.length >= n ? r.json.items : undefined;
  }, 10000, 200);
  const okMsgs = await told(orderId, 2);
  check(okMsgs?.map((m) => m.kind).join(',') === 'order-placed,order-confirmed',
    'the notification service heard of it from the event store', okMsgs?.map((m) => `"${m.text}"`).join(' ') || 'no messages');
  const noMsgs = await told(responseOf(ds, 'order').id, 2);
  check(noMsgs?.map((m) => m.kind).join(',') === 'order-placed,order-cancelled',
    'and of the cancelled one', noMsgs?.at(-1) ? `"${noMsgs.at(-1).text}"` : 'no messages');

  chapter('6. Kill one inventory replica: traffic keeps flowing');
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

  chapter('7. Stop every inventory replica: the breaker opens, the fallback answers');
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

  chapter('8. Bring inventory back: the breaker closes');
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

  chapter('9. Follow one request: its trace and its log lines');
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

  chapter('10. A saga survives a control-plane kill');
  await killMidSaga(token, customerId);

  console.log(`\n${bold('Explore')}`);
  say(`gateway            ${GATEWAY}/api/v1/products   (Authorization: Bearer <token>)`);
  say(`a token            curl -s ${GATEWAY}/api/v1/auth/token -d '{"username":"you","password":"demo"}'`);
  say(`services           ${TRELLIS} ps          ${API}/api/services`);
  say(`traces             ${API}/api/traces?service=order      ${TRELLIS} trace <id> --collector ${API}`);
  say(`dependencies       ${API}/api/dependencies`);
  say(`sagas              ${TRELLIS} saga ls      ${TRELLIS} saga show <id>      ${API}/api/sagas`);
  say(`logs               ${TRELLIS} logs -f      ${API}/api/logs?correlation_id=${correlationId}`);
  say(`metrics            ${API}/metrics   http://127.0.0.1:9901/metrics (gateway admin)`);
  say(`walk-through       examples/shop/README.md`);
  console.log(failures ? paint('31', `\n${failures} step(s) did not behave as told.`) : paint('32', '\nEvery step behaved as told.'));
  return failures;
}

/** Starts `trellis up` again in its own session, its log appended, its pid in the pid file. */
function restartUp() {
  const out = openSync(UP_LOG, 'a');
  const child = spawn(TRELLIS, ['up', TOPOLOGY, '--log-format', 'json'], { detached: true, stdio: ['ignore', out, out] });
  child.unref();
  closeSync(out);
  writeFileSync(UP_PID_FILE, `${child.pid}\n`);
  return child.pid;
}

/**
 * Chapter 10: a checkout with a card that hangs, started without waiting; SIGKILL of
 * `trellis up` while the charge is in flight; then `trellis up` again: the saga resumes from
 * its SQLite file and ends compensated (the card never answers in time).
 */
async function killMidSaga(token, customerId) {
  if (!UP_PID_FILE || !TOPOLOGY || !UP_LOG) {
    say(dim('skipped: run through scripts/demo.sh, which passes --up-pid-file, --topology and --up-log'));
    return;
  }
  const UP_PID = Number(readFileSync(UP_PID_FILE, 'utf8'));
  const input = { customer_id: customerId, items: [{ product_id: 6, quantity: 1 }], card: CARD_SLOW };
  const started = await http('POST', `${API}/api/sagas/create-order`, { body: input });
  const id = started.json?.id;
  check(started.status === 202 && !!id, `checkout with card …${CARD_SLOW.slice(-4)} (it hangs), without waiting: 202`,
    `saga ${id}: ${started.json?.state || started.text}`);
  if (!id) return;
  const charging = await until(async () => {
    const s = (await http('GET', `${API}/api/sagas/${id}`)).json;
    return stepOf(s, 'charge')?.action?.state === 'running' ? s : undefined;
  }, 10000, 100);
  check(!!charging, 'the saga is at its charge step, waiting for the card');
  try {
    process.kill(UP_PID, 'SIGKILL');
    check(true, `SIGKILL trellis up (pid ${UP_PID}): control plane, gateway, and with them every service`);
  } catch (e) {
    check(false, `SIGKILL trellis up (pid ${UP_PID})`, e.message);
    return;
  }
  const gone = await until(async () => (await http('GET', `${API}/api/sagas/${id}`)).status === 0, 5000, 100);
  check(!!gone, 'the control plane is gone');
  const pid = restartUp();
  say(`trellis up started again (pid ${pid}); the saga resumes from its SQLite file`);
  const ended = await until(async () => {
    const s = (await http('GET', `${API}/api/sagas/${id}`)).json;
    return s && !['running', 'compensating'].includes(s.state) ? s : undefined;
  }, 90000, 500);
  check(ended?.state === 'compensated', 'after the restart the saga ended: compensated (the card never answered in time)',
    ended ? `${ended.state}: ${ended.error || ''}` : 'not ended within 90 s');
  const show = trellis('saga', 'show', id, '--url', API);
  check(show.code === 0, `trellis saga show ${id}`, show.err.trim());
  console.log(show.out.replace(/^/gm, '   '));
  if (!ended) return;
  const tok = await until(async () => {
    const r = await gw('POST', '/api/v1/auth/token', { body: { username: 'alice', password: 'demo' } });
    return r.json?.access_token;
  }, 20000, 300);
  const o = await until(async () => {
    const r = await gw('GET', `/api/v1/orders/${responseOf(ended, 'order').id}`, { token: tok || token });
    return r.status === 200 ? r.json : undefined;
  }, 15000, 300);
  check(o?.status === 'cancelled', 'its order is cancelled, after the restart as before it', `order ${o?.id}: ${o?.status}`);
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
