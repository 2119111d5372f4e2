// `trellis gateway` resilience over the wire: retries (and what turns them off),
// per-try and total timeouts, the circuit breaker (open → fallback fast → half-open →
// closed), outlier ejection and readmission (visible in /admin/upstreams), the bulkhead.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  startGateway, startEchoes, startEcho, request, assertGatewayError, echoCount, pool, until,
  freePort, ms, sleep, withDeadline,
} from './lib/gateway.mjs';

const T = { timeout: ms(60000) };

let echo1, echo2, echoS, gw, bad, badHits = 0, cbPort, cbEcho;

/** A node HTTP server that answers 500 to everything (an unhealthy endpoint). */
function startBad() {
  return withDeadline(new Promise((resolve) => {
    const s = http.createServer((req, res) => {
      badHits++;
      req.resume();
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('broken\n');
    });
    s.listen(0, '127.0.0.1', () => resolve(s));
  }), ms(5000), 'bad server');
}

before(async () => {
  [echo1, echo2, echoS] = await startEchoes(3);
  bad = await startBad();
  const dead = await freePort();
  cbPort = await freePort();
  const badAddr = `127.0.0.1:${bad.address().port}`;
  gw = await startGateway({
    access_log: 'off',
    upstreams: {
      // A budget that never limits 8 clients, so only the endpoint pick decides.
      flaky: { endpoints: [`127.0.0.1:${echo1.port}`, `127.0.0.1:${echo2.port}`, `127.0.0.1:${dead}`],
        retry_budget: { percent: '100%', min_concurrency: 64 } },
      single: { endpoints: [`127.0.0.1:${echoS.port}`] },
      cb: {
        endpoints: [`127.0.0.1:${cbPort}`],
        connect_timeout: '500ms',
        circuit_breaker: { consecutive_failures: 3, open: '500ms', half_open_calls: 1, half_open_timeout: '5s' },
      },
      od: {
        endpoints: [`127.0.0.1:${echo1.port}`, `127.0.0.1:${echo2.port}`, badAddr],
        outlier_detection: {
          consecutive_5xx: 3, base_ejection_time: '3s', max_ejection_time: '30s',
          max_ejection_percent: '50%', interval: '500ms',
        },
      },
      bh: { endpoints: [`127.0.0.1:${echoS.port}`], bulkhead: { max_requests: 2 } },
      cbok: { endpoints: [`127.0.0.1:${echoS.port}`],
        circuit_breaker: { consecutive_failures: 3, open: '30s' },
        outlier_detection: { consecutive_5xx: 3, consecutive_gateway_failure: 3 } },
      // Discovered, but no registry answers: never an endpoint.
      nowhere: { service: 'nowhere' },
    },
    discovery: { registry: `127.0.0.1:${dead}` },
    routes: [
      { name: 'retry', match: { prefix: '/retry' }, strip_prefix: true, upstream: 'flaky',
        retry: { attempts: 3, retry_on: ['connect-failure', '5xx'] } },
      { name: 'noretry', match: { prefix: '/noretry' }, strip_prefix: true, upstream: 'flaky',
        retry: { attempts: 1, retry_on: ['connect-failure', '5xx'] } },
      { name: 's5xx', match: { prefix: '/s5xx' }, strip_prefix: true, upstream: 'single',
        retry: { attempts: 3, retry_on: ['5xx'], backoff_base: '5ms', backoff_max: '20ms' } },
      { name: 's5xx-once', match: { prefix: '/s1' }, strip_prefix: true, upstream: 'single',
        retry: { attempts: 1, retry_on: ['5xx'] } },
      { name: 's5xx-post', match: { prefix: '/spost' }, strip_prefix: true, upstream: 'single',
        retry: { attempts: 3, retry_on: ['5xx'], allow_non_idempotent: true, backoff_base: '5ms', backoff_max: '20ms' } },
      { name: 'per-try', match: { prefix: '/pertry' }, strip_prefix: true, upstream: 'single',
        per_try_timeout: '200ms', timeout: '10s', retry: { attempts: 1 } },
      { name: 'per-try-retried', match: { prefix: '/ptr' }, strip_prefix: true, upstream: 'single',
        per_try_timeout: '200ms', timeout: '10s',
        retry: { attempts: 3, retry_on: ['5xx'], backoff_base: '5ms', backoff_max: '20ms' } },
      { name: 'total', match: { prefix: '/total' }, strip_prefix: true, upstream: 'single',
        timeout: '300ms', retry: { attempts: 3, retry_on: ['5xx'] } },
      { name: 'cb', match: { prefix: '/cb' }, strip_prefix: true, upstream: 'cb', retry: { attempts: 1 },
        fallback: { status: 200, body: { degraded: true } } },
      { name: 'cb-nofb', match: { prefix: '/nofb' }, strip_prefix: true, upstream: 'cb', retry: { attempts: 1 } },
      { name: 'od', match: { prefix: '/od' }, strip_prefix: true, upstream: 'od', retry: { attempts: 1 } },
      { name: 'bh', match: { prefix: '/bh' }, strip_prefix: true, upstream: 'bh', retry: { attempts: 1 } },
      { name: 'cbok', match: { prefix: '/cbok' }, strip_prefix: true, upstream: 'cbok', retry: { attempts: 1 } },
      { name: 'fb-up', match: { prefix: '/fbup' }, strip_prefix: true, upstream: 'nowhere',
        fallback: { upstream: 'single' } },
    ],
  });
});

after(async () => {
  const errs = [];
  for (const p of [gw, echo1, echo2, echoS, cbEcho]) {
    if (!p) continue;
    try { await p.stop(); } catch (e) { errs.push(e); p.kill(); }
  }
  if (bad) await new Promise((r) => bad.close(r));
  if (errs.length) throw errs[0];
});

const statusCount = () => echoCount(echoS, 'status');
const delayCount = () => echoCount(echoS, 'delay');

test('clients that hang up are not upstream failures: the breaker stays closed', T, async () => {
  // Five clients give up on slow requests; the gateway cancels those upstream requests,
  // which must not count against the (healthy) upstream.
  const gone = await Promise.all([0, 1, 2, 3, 4].map(() =>
    request(gw.port, '/cbok/delay/1500', { timeout: 150 }).catch((e) => ({ error: e }))));
  assert.ok(gone.every((r) => r.error), 'the clients gave up');
  await sleep(200);
  const r = await request(gw.port, '/cbok/echo');
  assert.equal(r.status, 200, `after clients hung up the upstream still serves: ${r.status} ${r.headers['x-trellis-error'] || ''}`);
});

test('fallback to another upstream: no endpoint for the route\'s upstream → the fallback upstream answers', T, async () => {
  const r = await request(gw.port, '/fbup/echo');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers['x-trellis-fallback'], 'no_healthy_endpoint');
  assert.equal(JSON.parse(r.text).path, '/echo');
});

test('retries: one endpoint of three refuses connections → 100% success with attempts 3 (sequential)', T, async () => {
  const res = await pool(150, 1, () => request(gw.port, '/retry/echo'));
  const bad = res.filter((r) => r.error || r.status !== 200);
  assert.equal(bad.length, 0, `all 150 answered 200; failures: ${JSON.stringify(bad.slice(0, 3).map((r) => r.error ? String(r.error) : [r.status, r.text]))}`);
});

test('retries: one endpoint of three refuses connections → 100% success with attempts 3 (8 concurrent clients)', T, async () => {
  const res = await pool(600, 8, () => request(gw.port, '/retry/echo'));
  const bad = res.filter((r) => r.error || r.status !== 200);
  assert.equal(bad.length, 0, `all 600 answered 200; ${bad.length} failed, e.g. ${JSON.stringify(bad.slice(0, 2).map((r) => r.error ? String(r.error) : [r.status, r.headers['x-trellis-error'], r.text]))}`);
});

test('retries: attempts 1 really disables them (connect failures reach the client as 502)', T, async () => {
  const res = await pool(60, 1, () => request(gw.port, '/noretry/echo'));
  const failed = res.filter((r) => r.status !== 200);
  assert.ok(failed.length >= 10 && failed.length <= 30, `about 1 in 3 of 60 failed (got ${failed.length})`);
  for (const f of failed) assertGatewayError(f, 502, 'upstream_connect_failure');
});

test('retries: GET on 5xx is retried up to attempts; POST is not unless allow_non_idempotent', T, async () => {
  let c0 = await statusCount();
  let res = await request(gw.port, '/s5xx/status/503');
  assert.equal(res.status, 503, 'the upstream\'s 503 is passed through after the last attempt');
  assert.equal((await statusCount()) - c0, 3, 'GET /status/503 with attempts 3 reached the upstream 3 times');

  c0 = await statusCount();
  res = await request(gw.port, '/s1/status/503');
  assert.equal(res.status, 503);
  assert.equal((await statusCount()) - c0, 1, 'attempts 1: exactly one upstream request');

  c0 = await statusCount();
  res = await request(gw.port, '/s5xx/status/503', { method: 'POST', body: 'x' });
  assert.equal(res.status, 503);
  assert.equal((await statusCount()) - c0, 1, 'POST is not retried on 5xx');

  c0 = await statusCount();
  res = await request(gw.port, '/spost/status/503', { method: 'POST', body: 'x' });
  assert.equal(res.status, 503);
  assert.equal((await statusCount()) - c0, 3, 'POST with allow_non_idempotent is retried');

  c0 = await statusCount();
  res = await request(gw.port, '/s5xx/status/404');
  assert.equal(res.status, 404);
  assert.equal((await statusCount()) - c0, 1, 'a 4xx is never retried');
});

test('timeouts: per_try_timeout → 504 upstream_timeout, long before the upstream answers', T, async () => {
  const res = await request(gw.port, '/pertry/delay/3000');
  assertGatewayError(res, 504, 'upstream_timeout');
  assert.ok(res.elapsed < 2500, `answered in ${res.elapsed} ms (per-try 200 ms, upstream 3000 ms)`);
});

test('timeouts: per_try_timeout with retry_on 5xx retries the timed-out try', T, async () => {
  const d0 = await delayCount();
  const res = await request(gw.port, '/ptr/delay/2000');
  assertGatewayError(res, 504, 'upstream_timeout');
  assert.equal((await delayCount()) - d0, 3, 'three tries of 200 ms each');
  assert.ok(res.elapsed < 1900, `answered in ${res.elapsed} ms`);
});

test('timeouts: the total timeout bounds the request, retries included', T, async () => {
  const res = await request(gw.port, '/total/delay/3000');
  assertGatewayError(res, 504, 'upstream_timeout');
  assert.ok(res.elapsed >= 250 && res.elapsed < 2500, `answered in ${res.elapsed} ms (timeout 300 ms)`);
});

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function breakerStates(name) {
  const r = await gw.admin('/admin/upstreams');
  return r.json.workers.map((w) => w[name] && w[name].breaker);
}

test('circuit breaker: opens after consecutive failures, fallback < 5 ms while open, closes via half-open', T, async () => {
  // Each request on a new connection, so both workers see failures (breakers are per worker).
  let fails = 0;
  let fallbacks = 0;
  let consecutiveFallbacks = 0;
  for (let i = 0; i < 60 && consecutiveFallbacks < 10; i++) {
    const res = await request(gw.port, '/cb/echo');
    if (res.headers['x-trellis-fallback']) {
      assert.equal(res.headers['x-trellis-fallback'], 'circuit_open');
      assert.equal(res.status, 200);
      assert.deepEqual(res.json, { degraded: true });
      fallbacks++;
      consecutiveFallbacks++;
    } else {
      assertGatewayError(res, 502, 'upstream_connect_failure');
      fails++;
      consecutiveFallbacks = 0;
    }
  }
  assert.equal(consecutiveFallbacks, 10, `breaker opened (failures ${fails}, fallbacks ${fallbacks})`);
  assert.ok(fails >= 3 && fails <= 6, `it took 3 failures per worker at most (2 workers): ${fails}`);

  // While open: the route without a fallback answers 503 circuit_open.
  const nofb = await request(gw.port, '/nofb/echo');
  assertGatewayError(nofb, 503, 'circuit_open');

  // Fallback latency while open: median of 21 keep-alive requests.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const times = [];
  try {
    await request(gw.port, '/cb/echo', { agent });
    for (let i = 0; i < 21; i++) {
      const res = await request(gw.port, '/cb/echo', { agent });
      assert.equal(res.headers['x-trellis-fallback'], 'circuit_open', `request ${i} still answered by the fallback`);
      times.push(res.elapsed);
    }
  } finally {
    agent.destroy();
  }
  assert.ok(median(times) < 5, `median fallback time ${median(times).toFixed(2)} ms < 5 ms (all: ${times.map((t) => t.toFixed(1)).join(' ')})`);
  const states = await until(async () => {
    const s = await breakerStates('cb');
    return s.some((b) => b && b.opened >= 1) && s;
  }, { what: '/admin/upstreams shows the cb breaker opened' });
  assert.ok(states.every((b) => b && b.enabled), `breaker enabled on every worker: ${JSON.stringify(states)}`);

  // Recovery: the endpoint comes up; after `open: 500ms` probes pass and the breaker closes.
  cbEcho = await startEcho(['--workers', '1', '--listen', `127.0.0.1:${cbPort}`].slice(0));
  let ok = 0;
  await until(async () => {
    const res = await request(gw.port, '/cb/echo');
    ok = res.status === 200 && !res.headers['x-trellis-fallback'] && res.json && res.json.path === '/echo' ? ok + 1 : 0;
    return ok >= 20;
  }, { timeout: ms(15000), every: 50, what: '20 consecutive real answers after recovery' });
  await until(async () => {
    const s = await breakerStates('cb');
    return s.every((b) => b && b.state === 'closed') && s;
  }, { timeout: ms(10000), what: 'every worker\'s cb breaker closed in /admin/upstreams' });
});

async function odView() {
  const r = await gw.admin('/admin/upstreams');
  return r.json.workers.map((w) => w.od);
}

test('outlier detection: a 5xx endpoint is ejected, visible in /admin/upstreams, then readmitted', T, async () => {
  const badAddr = `127.0.0.1:${bad.address().port}`;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 }); // one connection: one worker
  try {
    // Drive traffic until the bad endpoint is ejected (3 consecutive 5xx on that worker).
    let fails = 0;
    for (let i = 0; i < 30; i++) {
      const res = await request(gw.port, '/od/echo', { agent });
      if (res.status !== 200) fails++;
    }
    assert.ok(fails >= 3 && fails <= 4, `the bad endpoint answered 3 times before ejection (got ${fails} failures)`);
    const hitsAtEjection = badHits;
    // While ejected (3 s): every request succeeds, the bad endpoint gets nothing.
    const res = await pool(30, 1, () => request(gw.port, '/od/echo', { agent }));
    assert.ok(res.every((r) => r.status === 200), 'no request reaches the ejected endpoint');
    assert.equal(badHits, hitsAtEjection);
    const view = await until(async () => {
      const v = await odView();
      return v.some((u) => u && u.endpoints.some((e) => e.address === badAddr && e.ejected === true)) && v;
    }, { timeout: ms(3000), what: `/admin/upstreams shows ${badAddr} ejected: true` });
    const w = view.find((u) => u.endpoints.some((e) => e.address === badAddr && e.ejected));
    assert.ok(w.outlier.ejections_total >= 1);
    assert.equal(w.endpoints.filter((e) => e.ejected).length, 1, 'only the bad endpoint is ejected');
    // Every attempt is counted per endpoint, across workers: the bad one's are all failures.
    const badEp = w.endpoints.find((e) => e.address === badAddr);
    assert.ok(badEp.attempts >= 3 && badEp.failures === badEp.attempts, JSON.stringify(badEp));
    assert.ok(w.endpoints.some((e) => e.address !== badAddr && e.attempts > 0 && e.failures === 0),
      JSON.stringify(w.endpoints));
    // Readmitted after base_ejection_time (3 s).
    await until(async () => {
      const v = await odView();
      return v.every((u) => u && u.endpoints.every((e) => e.ejected === false));
    }, { timeout: ms(10000), every: 200, what: `${badAddr} readmitted (ejected: false) on every worker` });
    const before = badHits;
    await pool(9, 1, () => request(gw.port, '/od/echo', { agent }));
    assert.ok(badHits > before, 'the readmitted endpoint receives traffic again');
  } finally {
    agent.destroy();
  }
});

test('bulkhead: max_requests 2 and 3 concurrent slow requests → one immediate 503 overloaded', T, async () => {
  const started = Date.now();
  const res = await Promise.all([0, 1, 2].map((i) => sleep(i * 20).then(() => request(gw.port, '/bh/delay/700'))));
  const rejected = res.filter((r) => r.status === 503);
  const okd = res.filter((r) => r.status === 200);
  assert.equal(rejected.length, 1, `one rejected; statuses ${res.map((r) => r.status)}`);
  assert.equal(okd.length, 2);
  assertGatewayError(rejected[0], 503, 'overloaded');
  assert.ok(rejected[0].elapsed < 500, `the refusal is immediate (${rejected[0].elapsed} ms), not queued`);
  assert.ok(Date.now() - started < ms(5000));
  const after = await request(gw.port, '/bh/delay/10');
  assert.equal(after.status, 200, 'capacity is released after the requests finish');
});
