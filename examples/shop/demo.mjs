// The shop's demo story, told against a running `trellis up examples/shop/topology.yaml`:
// get a token, browse the catalog; place orders, each the create-order saga (a card that
// pays, an out-of-stock product, a card that is declined and compensated); kill an inventory
// replica (orders keep going through); stop every inventory replica (sagas undo their
// orders, no card charged); bring them back; one order's trace waterfall and its log lines;
// then SIGKILL the control plane mid-saga and watch the saga end after the restart. Every step checks what it tells; the exit code is 0 only if every step behaved
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

/** POST /api/v1/orders: the gateway runs the create-order saga and answers with it. */
async function placeOrder(token, customerId, items, card, extra = {}) {
  return gw('POST', '/api/v1/orders', { token, body: { customer_id: customerId, items, card }, ...extra });
}

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
  const at = (x) => x.compensation.started_ms || 0;
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

  chapter('4. Place an order: the create-order saga');
  say('POST /api/v1/orders runs the create-order saga in the control plane: create the order');
  say('(pending), reserve stock, charge the card (the pivot), confirm the reservation and the order');
  const email = `alice+${Date.now()}@example.com`;
  const cust = await gw('POST', '/api/v1/customers', { token, body: { email, name: 'Alice Liddell' } });
  check(cust.status === 201, 'create customer Alice', `id ${cust.json?.id}`);
  const customerId = cust.json?.id || 1;
  const traceId = randomBytes(16).toString('hex');
  const correlationId = `demo-${randomBytes(4).toString('hex')}`;
  const before = await stock(token, 5);
  const paid = await placeOrder(token, customerId, [{ product_id: 5, quantity: 2 }], CARD_OK, {
    headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01`, 'x-correlation-id': correlationId },
  });
  const saga = paid.json;
  check(paid.status === 200 && saga?.state === 'completed', `an order paid with card …${CARD_OK.slice(-4)}: saga completed`,
    `saga ${saga?.id}: ${saga?.state || paid.text}`);
  for (const st of saga?.steps || []) sayStep(st);
  const orderId = responseOf(saga, 'order').id;
  const placed = await gw('GET', `/api/v1/orders/${orderId}`, { token });
  check(placed.json?.status === 'confirmed' && placed.json?.payment === responseOf(saga, 'charge').id,
    'the order is confirmed, with its payment',
    `order ${orderId}: ${placed.json?.status}, total €${((placed.json?.total_cents || 0) / 100).toFixed(2)}, payment ${placed.json?.payment}`);
  const resv = await gw('GET', `/api/v1/inventory/reservations/${responseOf(saga, 'reserve').id}`, { token });
  const after = await stock(token, 5);
  check(resv.json?.status === 'confirmed' && after.on_hand === before.on_hand - 2 && after.reserved === before.reserved,
    'the stock was reserved, then the reservation confirmed: on hand is 2 lower',
    `product 5 on hand ${before.on_hand} → ${after.on_hand}, reservation ${resv.json?.id}: ${resv.json?.status}`);
  const oos = await placeOrder(token, customerId, [{ product_id: 12, quantity: 1 }], CARD_OK);
  const oosOrder = await gw('GET', `/api/v1/orders/${responseOf(oos.json, 'order').id}`, { token });
  check(oos.json?.state === 'compensated' && stepOf(oos.json, 'reserve')?.action?.status === 409 &&
    stepOf(oos.json, 'charge')?.action?.state === 'pending' && oosOrder.json?.status === 'cancelled',
  'an out-of-stock product: inventory says 409, the order is cancelled, the card never charged',
  oos.json?.error || oos.text);
  const empty = await placeOrder(token, customerId, [], CARD_OK);
  check(empty.json?.state === 'compensated' && stepOf(empty.json, 'order')?.action?.status === 422,
    'an order without items: the order service says 422, nothing to undo', stepOf(empty.json, 'order')?.action?.error || empty.text);

  chapter('5. A declined card is compensated');
  const declined = await placeOrder(token, customerId, [{ product_id: 5, quantity: 1 }], CARD_DECLINED);
  const ds = declined.json;
  check(declined.status === 200 && ds?.state === 'compensated', `an order paid with card …${CARD_DECLINED.slice(-4)}: declined, saga compensated`,
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
    'the notification service heard of the paid order from the event store', okMsgs?.map((m) => `"${m.text}"`).join(' ') || 'no messages');
  const noMsgs = await told(responseOf(ds, 'order').id, 2);
  check(noMsgs?.map((m) => m.kind).join(',') === 'order-placed,order-cancelled',
    'and of the cancelled one', noMsgs?.at(-1) ? `"${noMsgs.at(-1).text}"` : 'no messages');

  chapter('6. Kill one inventory replica: orders keep going through');
  await sleep(1500); // services export spans every second: let the first order's spans leave
  const inv = await instances('inventory');
  const victim = inv.find((i) => i.pid);
  if (check(!!victim, `inventory has ${inv.length} replicas`, victim ? `killing pid ${victim.pid} (SIGKILL)` : '')) {
    process.kill(victim.pid, 'SIGKILL');
  }
  let completed = 0;
  let retried = 0;
  for (let i = 0; i < 20; i++) {
    const r = await placeOrder(token, customerId, [{ product_id: 2, quantity: 1 }], CARD_OK);
    if (r.json?.state === 'completed') completed++;
    if ((r.json?.steps || []).some((x) => x.action?.attempts > 1)) retried++;
  }
  check(completed === 20, '20 orders right after the kill: every saga completed',
    `${completed}/20 completed (${retried} needed a second attempt): the supervisor took the dead replica out of the registry`);
  const back = await until(async () => (await instances('inventory')).filter((i) => i.ready).length >= 2, 15000);
  check(!!back, 'the supervisor restarted the killed replica');

  chapter('7. Stop every inventory replica: orders are undone, no card is charged');
  const stop = trellis('stop', 'inventory', '--url', API);
  check(stop.code === 0, 'trellis stop inventory', stop.out.trim() || stop.err.trim());
  await until(async () => (await instances('inventory')).every((i) => !i.ready), 10000);
  const outcomes = [];
  for (let i = 0; i < 3; i++) outcomes.push(await placeOrder(token, customerId, [{ product_id: 3, quantity: 1 }], CARD_OK));
  const undoneAll = outcomes.filter((r) => r.json?.state === 'compensated' && stepOf(r.json, 'charge')?.action?.state === 'pending');
  check(undoneAll.length === outcomes.length, 'each saga could not reserve stock: it cancelled its order, the charge never ran',
    `${undoneAll.length}/${outcomes.length} compensated: "${outcomes.at(-1).json?.error || outcomes.at(-1).text}"`);
  const cancelled = await gw('GET', `/api/v1/orders/${responseOf(outcomes.at(-1).json, 'order').id}`, { token });
  check(cancelled.json?.status === 'cancelled', 'the order is there, cancelled', `order ${cancelled.json?.id}: ${cancelled.json?.status}`);
  check(outcomes.every((r) => r.ms < 5000), 'and the client had its answer quickly',
    outcomes.map((r) => `${r.ms.toFixed(0)} ms`).join(', '));

  chapter('8. Bring inventory back: orders go through again');
  const start = trellis('start', 'inventory', '--url', API);
  check(start.code === 0, 'trellis start inventory', start.out.trim() || start.err.trim());
  await until(async () => (await instances('inventory')).filter((i) => i.ready).length >= 1, 15000);
  const healed = await until(async () => {
    const r = await placeOrder(token, customerId, [{ product_id: 4, quantity: 1 }], CARD_OK);
    return r.json?.state === 'completed' ? r : undefined;
  }, 20000, 500);
  check(!!healed, 'an order completes again', healed ? `order ${responseOf(healed.json, 'order').id}: saga ${healed.json.state}` : '');

  chapter('9. Follow one request: its trace and its log lines');
  say(`the first order's correlation ID ${bold(correlationId)}, trace ${bold(traceId)}`);
  const traced = await until(async () => {
    const r = await http('GET', `${API}/api/traces/${traceId}`);
    const spans = r.json?.spans || [];
    const services = new Set(spans.map((s) => s.service));
    return ['gateway', 'saga', 'order', 'catalog', 'inventory', 'payment'].every((x) => services.has(x)) ? r : undefined;
  }, 10000, 300);
  check(!!traced, 'the trace holds the gateway, the saga and every service it called: order, catalog, inventory, payment');
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
 * Chapter 10: an order paid with a card that hangs, started without waiting; SIGKILL of
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
  check(started.status === 202 && !!id, `an order paid with card …${CARD_SLOW.slice(-4)} (it hangs), started without waiting: 202`,
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

main().then((f) => process.exit(f ? 1 : 0), (e) => {
  console.error(e);
  process.exit(1);
});
