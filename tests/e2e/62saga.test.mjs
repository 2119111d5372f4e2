// Sagas in `trellis up` (docs/sagas.md): steps over HTTP to services found in the registry,
// compensation in reverse order, retries, the pivot, stuck → retry/abort, idempotent starts,
// bad input, parallel step groups, and durability: a saga in flight survives SIGKILL of
// `trellis up`.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { startUp, echoService } from './lib/up.mjs';
import { until, request } from './lib/gateway.mjs';
import { BIN, ms, withDeadline } from './lib/trellis.mjs';

/** A participant: records every call; its behaviour is chosen by the path. */
function participant() {
  const calls = [];
  const failures = new Map();
  const onceIds = new Map();
  const barriers = new Map();
  let next = 1;
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const call = { method: req.method, path: req.url, headers: req.headers, body: body ? JSON.parse(body) : null };
      calls.push(call);
      const send = (status, obj) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      const p = req.url.split('?')[0].split('/').filter(Boolean);
      if (p[0] === 'fail') return send(Number(p[1]), { error: 'told to fail' });
      if (p[0] === 'flaky') { // /flaky/<key>/<n>: 503 the first n times for key
        const seen = failures.get(p[1]) || 0;
        failures.set(p[1], seen + 1);
        return seen < Number(p[2]) ? send(503, { error: 'flaky' }) : send(200, { id: next++, key: p[1] });
      }
      if (p[0] === 'slow') return setTimeout(() => send(200, { id: next++ }), Number(p[1]));
      if (p[0] === 'barrier') { // /barrier/<key>/<n>: answers once n calls with the key are here (5 s at most)
        const b = barriers.get(p[1]) || { waiting: [] };
        barriers.set(p[1], b);
        b.waiting.push(() => send(200, { id: next++, barrier: p[1] }));
        if (b.waiting.length >= Number(p[2])) b.waiting.splice(0).forEach((f) => f());
        else setTimeout(() => { const i = b.waiting.length; if (i) b.waiting.splice(0).forEach(() => send(504, { error: 'the others never came' })); }, 5000);
        return undefined;
      }
      if (p[0] === 'slowonce') { // takes effect at once, answers slowly; a repeat of its key answers at once
        const key = req.headers['idempotency-key'];
        if (onceIds.has(key)) return send(200, { id: onceIds.get(key) });
        onceIds.set(key, next++);
        return setTimeout(() => send(200, { id: onceIds.get(key) }), Number(p[1]));
      }
      return send(200, { id: next++, path: req.url, got: call.body });
    });
  });
  return {
    calls,
    listen: () => new Promise((r) => server.listen(0, '127.0.0.1', () => r(server.address().port))),
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
    byKey: (key) => calls.filter((c) => c.headers['idempotency-key'] === key),
  };
}

const step = (name, action, compensation, extra = {}) => ({
  name, action: { service: 'part', ...action }, ...(compensation ? { compensation: { service: 'part', ...compensation } } : {}), ...extra,
});

const SAGAS = {
  ok: { steps: [
    step('a', { method: 'POST', path: '/a', body: { n: '${input.n}', label: 'n=${input.n}' } }, { path: '/undo/a/${steps.a.id}' }),
    step('b', { path: '/b/${steps.a.id}', body: { prev: '${steps.a.got}' } }, { path: '/undo/b' }),
    step('c', { path: '/c/${input.code}' }),
  ] },
  failing: { steps: [
    step('a', { path: '/a' }, { path: '/undo/a' }),
    step('b', { path: '/b' }, { path: '/undo/b' }),
    step('c', { path: '/fail/${input.code}' }, { path: '/undo/c' }, { retry: { attempts: 2, backoff: '10ms' } }),
  ] },
  flaky: { steps: [step('a', { path: '/flaky/${input.key}/2' }, null, { retry: { attempts: 3, backoff: '10ms' } })] },
  pivoted: { max_forward_attempts: 3, steps: [
    step('a', { path: '/a' }, { path: '/undo/a' }),
    step('pay', { path: '/pay' }, null, { pivot: true }),
    step('ship', { path: '/flaky/${input.key}/5' }, null, { retry: { attempts: 1, backoff: '10ms' } }),
  ] },
  badcomp: { max_compensation_attempts: 2, steps: [
    step('a', { path: '/a' }, { path: '/flaky/${input.key}/${input.undo_failures}' }, { retry: { attempts: 1, backoff: '10ms' } }),
    step('b', { path: '/fail/422' }),
  ] },
  pivotunsure: { steps: [
    step('a', { path: '/a' }, { path: '/undo/a' }),
    step('pay', { path: '/flaky/${input.key}/4' }, null, { pivot: true, retry: { attempts: 2, backoff: '10ms' } }),
  ] },
  learn: { steps: [
    step('a', { path: '/slowonce/1500' }, { path: '/undo/a/${steps.a.id}' }, { timeout: '300ms', retry: { attempts: 1, backoff: '10ms' } }),
  ] },
  parallel: { steps: [
    step('a', { path: '/a' }, { path: '/undo/a' }),
    { parallel: [
      step('b1', { path: '/barrier/${input.key}/2' }, { path: '/undo/b1/${steps.b1.id}' }, { timeout: '8s', retry: { attempts: 1 } }),
      step('b2', { path: '/barrier/${input.key}/2' }, { path: '/undo/b2' }, { timeout: '8s', retry: { attempts: 1 } }),
    ] },
    step('c', { path: '/c/${steps.b1.id}/${steps.b2.id}' }),
  ] },
  parfail: { steps: [
    step('a', { path: '/a' }, { path: '/undo/a' }),
    { parallel: [
      step('x', { path: '/fail/409' }, { path: '/undo/x' }),
      step('y', { path: '/slow/8000' }, { path: '/undo/y' }, { timeout: '20s' }),
      step('z', { path: '/z' }, { path: '/undo/z' }),
    ] },
    step('never', { path: '/never' }),
  ] },
  slow: { steps: [
    step('a', { path: '/a' }, { path: '/undo/a' }),
    step('b', { path: '/slow/${input.ms}' }, { path: '/undo/b' }, { timeout: '10s' }),
  ] },
};

describe('sagas in trellis up', () => {
  let up;
  let part;
  let dataDir;

  const startTrellis = async () => {
    up = await startUp({
      control_plane: { data_dir: dataDir },
      services: { echo: echoService({ probes: { readiness: { http: '/health/ready', period: '100ms' } } }) },
      sagas: SAGAS,
      // A client's POST /api/v1/orders runs a saga: the control plane is service `trellis`.
      gateway: {
        upstreams: { 'control-plane': { service: 'trellis' } },
        routes: [{ name: 'orders', match: { exact: '/api/v1/orders', methods: ['POST'] }, rewrite: { path: '/api/sagas/ok?wait=5s' }, upstream: 'control-plane' }],
      },
    });
    const port = part.port;
    const r = await up.api('/v1/agent/service/register', { method: 'PUT', body: JSON.stringify({ ID: 'part-1', Name: 'part', Address: '127.0.0.1', Port: port }) });
    assert.equal(r.status, 200, r.text);
  };
  const start = async (name, input, { wait = '10s', headers = {} } = {}) => {
    const r = await up.api(`/api/sagas/${name}${wait ? `?wait=${wait}` : ''}`, { method: 'POST', body: JSON.stringify(input), headers: { 'content-type': 'application/json', ...headers } });
    return r;
  };
  const get = async (id) => (await up.api(`/api/sagas/${id}`)).json;

  before(async () => {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'trellis-saga-'));
    part = participant();
    part.port = await part.listen();
    await startTrellis();
  });
  after(async () => {
    if (up) await up.stop().catch(() => {});
    if (up) up.cleanup();
    await part.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('happy path: templates, Idempotency-Key and traceparent on every call, completed', async () => {
    const r = await start('ok', { n: 7, code: 'x' });
    assert.equal(r.status, 200, r.text);
    const s = r.json;
    assert.equal(s.state, 'completed');
    assert.match(r.headers.location, new RegExp(`/api/sagas/${s.id}$`));
    assert.deepEqual(s.steps.map((x) => [x.name, x.action.state, x.action.attempts]), [['a', 'done', 1], ['b', 'done', 1], ['c', 'done', 1]]);
    const [a] = part.byKey(`${s.id}:a:action`);
    assert.deepEqual(a.body, { n: 7, label: 'n=7' }, 'a whole-string template keeps the type');
    const [b] = part.byKey(`${s.id}:b:action`);
    assert.equal(b.path, `/b/${s.steps[0].action.response.id}`, 'a path template uses the earlier response');
    assert.deepEqual(b.body, { prev: { n: 7, label: 'n=7' } });
    assert.match(a.headers.traceparent, new RegExp(`^00-${s.trace_id}-[0-9a-f]{16}-01$`));
    assert.equal(a.headers['x-correlation-id'], s.id);
    assert.equal(part.byKey(`${s.id}:c:action`)[0].path, '/c/x');
  });

  test('a gateway route starts a saga (the control plane is service `trellis` in its registry)', async () => {
    const traceId = randomBytes(16).toString('hex');
    const r = await request(up.gatewayPort, '/api/v1/orders', {
      method: 'POST',
      body: JSON.stringify({ n: 3, code: 'gw' }),
      headers: { 'content-type': 'application/json', traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01`, 'x-correlation-id': 'client-order-1' },
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.state, 'completed');
    const [c] = part.byKey(`${r.json.id}:c:action`);
    assert.equal(c.path, '/c/gw');
    // The saga joins the client's trace and passes its correlation id on to every step.
    assert.equal(r.json.trace_id, traceId);
    assert.notEqual(r.json.id, traceId, 'the saga id is its own, not the trace id');
    assert.equal(r.json.correlation_id, 'client-order-1');
    assert.match(c.headers.traceparent, new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    assert.equal(c.headers['x-correlation-id'], 'client-order-1');
    const t = await until(async () => {
      const x = await up.api(`/api/traces/${traceId}`);
      const names = (x.json?.spans || []).map((sp) => sp.name);
      return names.includes('saga ok') && names.includes('saga ok c action') ? x.json : undefined;
    }, { timeout: ms(10000), what: 'the saga spans in the client\'s trace' });
    const root = t.spans.find((sp) => sp.name === 'saga ok');
    const gw = t.spans.find((sp) => sp.spanId === root.parentSpanId);
    assert.equal(gw?.service, 'gateway', `the saga's span is a child of the gateway's: ${t.spans.map((sp) => `${sp.service}:${sp.name}`).join(', ')}`);
    // The client's Idempotency-Key reaches the control plane: a retry is the same saga.
    const once = { method: 'POST', body: JSON.stringify({ n: 4, code: 'idem' }), headers: { 'content-type': 'application/json', 'idempotency-key': `gw-${traceId}` } };
    const first = await request(up.gatewayPort, '/api/v1/orders', once);
    const again = await request(up.gatewayPort, '/api/v1/orders', once);
    assert.equal(first.json.state, 'completed', first.text);
    assert.equal(again.json.id, first.json.id);
    assert.equal(part.byKey(`${first.json.id}:c:action`).length, 1, 'the steps ran once');
  });

  test('a step that says no: the completed steps are compensated in reverse order', async () => {
    const s = (await start('failing', { code: 422 })).json;
    assert.equal(s.state, 'compensated');
    assert.match(s.error, /step c failed: HTTP 422/);
    assert.equal(s.steps[2].action.attempts, 1, 'a 4xx is not retried');
    assert.equal(s.steps[2].compensation, null, 'the failed step took no effect: not compensated');
    const undoB = part.byKey(`${s.id}:b:compensation`);
    const undoA = part.byKey(`${s.id}:a:compensation`);
    assert.equal(undoB.length, 1);
    assert.equal(undoA.length, 1);
    assert.ok(part.calls.indexOf(undoB[0]) < part.calls.indexOf(undoA[0]), 'b is undone before a');
  });

  test('a 5xx is retried, then compensated including the step that may have taken effect', async () => {
    const s = (await start('failing', { code: 503 })).json;
    assert.equal(s.state, 'compensated');
    assert.equal(s.steps[2].action.attempts, 2);
    assert.equal(part.byKey(`${s.id}:c:action`).length, 2, 'both attempts carry the same key');
    assert.equal(s.steps[2].compensation.state, 'done', 'an uncertain step is compensated too');
  });

  test('a step that timed out but took effect: its answer is learnt again, then it is compensated', async () => {
    const s = (await start('learn', {})).json;
    assert.equal(s.state, 'compensated', JSON.stringify(s));
    const calls = part.byKey(`${s.id}:a:action`);
    assert.equal(calls.length, 2, 'sent again with the same key to learn its answer');
    const [undo] = part.byKey(`${s.id}:a:compensation`);
    assert.equal(undo.path, `/undo/a/${s.steps[0].action.response.id}`, 'compensated with the id the step made');
  });

  test('a pivot without a definite answer is retried past its attempts, never compensated blindly', async () => {
    const s = (await start('pivotunsure', { key: `u-${Date.now()}` })).json;
    assert.equal(s.state, 'completed', JSON.stringify(s));
    assert.equal(s.steps[1].action.attempts, 5, 'retried with its key until the answer was definite');
    assert.equal(s.steps[0].compensation, null, 'nothing was undone');
  });

  test('a flaky step succeeds within its retries', async () => {
    const s = (await start('flaky', { key: `f-${Date.now()}` })).json;
    assert.equal(s.state, 'completed');
    assert.equal(s.steps[0].action.attempts, 3);
  });

  test('a flaky compensation is retried until it succeeds', async () => {
    const s = (await start('badcomp', { key: `c-${Date.now()}`, undo_failures: 1 })).json;
    assert.equal(s.state, 'compensated');
    assert.equal(s.steps[0].compensation.attempts, 2);
  });

  test('after the pivot only forward: stuck, retry by the operator, completed', async () => {
    const key = `p-${Date.now()}`;
    const s = (await start('pivoted', { key })).json;
    assert.equal(s.state, 'stuck', JSON.stringify(s));
    assert.equal(s.pivot_passed, true);
    assert.equal(s.steps[0].compensation, null, 'nothing is compensated after the pivot');
    assert.match(s.error, /after the pivot/);
    const metrics = (await up.api('/metrics')).text;
    assert.match(metrics, /trellis_saga_step_attempts_total\{name="pivoted",step="ship",phase="action",outcome="failed"\} [1-9]/);
    // Retry: three more attempts, the flaky step succeeds on its sixth call.
    const r = spawnSync(BIN, ['saga', 'retry', s.id, '--url', up.apiUrl], { encoding: 'utf8', timeout: 15000 });
    assert.equal(r.status, 0, r.stderr);
    const done = await until(async () => ((await get(s.id)).state === 'completed' ? true : undefined), { timeout: ms(10000), what: 'completed after retry' });
    assert.ok(done);
    assert.equal(part.byKey(`${s.id}:ship:action`).length, 6);
    assert.equal((await up.api(`/api/sagas/${s.id}/abort`, { method: 'POST' })).status, 409, 'a completed saga cannot be aborted');
  });

  test('a compensation that keeps failing: stuck, then aborted by the operator', async () => {
    const s = (await start('badcomp', { key: `s-${Date.now()}`, undo_failures: 100 })).json;
    assert.equal(s.state, 'stuck');
    assert.match(s.error, /compensation of step a keeps failing/);
    const stuck = (await up.api('/api/sagas?state=stuck&name=badcomp')).json.sagas.map((x) => x.id);
    assert.ok(stuck.includes(s.id));
    const r = spawnSync(BIN, ['saga', 'abort', s.id, '--url', up.apiUrl, '--json'], { encoding: 'utf8', timeout: 15000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).state, 'aborted');
    const ls = spawnSync(BIN, ['saga', 'ls', '--state', 'aborted', '--url', up.apiUrl], { encoding: 'utf8', timeout: 15000 });
    assert.match(ls.stdout, new RegExp(s.id));
  });

  test('abort of a running saga before its pivot compensates it', async () => {
    const r = await start('slow', { ms: 3000 }, { wait: null });
    assert.equal(r.status, 202);
    const id = r.json.id;
    await until(async () => part.byKey(`${id}:b:action`).length === 1, { timeout: ms(5000), what: 'step b called' });
    assert.equal((await up.api(`/api/sagas/${id}/abort`, { method: 'POST' })).status, 202);
    const s = await until(async () => { const x = await get(id); return x.state === 'compensated' ? x : undefined; }, { timeout: ms(10000), what: 'compensated' });
    assert.equal(s.error, 'aborted by an operator');
    assert.equal(s.steps[1].compensation.state, 'done', 'the step in flight is compensated');
  });

  test('a parallel group runs its steps at the same time; later steps see every answer', async () => {
    // Each step of the group answers only once the other has arrived: one after the other,
    // neither would ever answer (504 after 5 s), and the saga would compensate.
    const r = await start('parallel', { key: `par-${Date.now()}` }, { wait: '20s' });
    assert.equal(r.status, 200, r.text);
    const s = r.json;
    assert.equal(s.state, 'completed', s.error);
    assert.deepEqual(s.steps.map((x) => [x.name, x.group, x.action.state]),
      [['a', 0, 'done'], ['b1', 1, 'done'], ['b2', 1, 'done'], ['c', 2, 'done']]);
    assert.equal(part.byKey(`${s.id}:b1:action`).length, 1);
    assert.equal(part.byKey(`${s.id}:b2:action`).length, 1, 'each step its own key');
    const [b1, b2] = [s.steps[1].action.response.id, s.steps[2].action.response.id];
    assert.equal(part.byKey(`${s.id}:c:action`)[0].path, `/c/${b1}/${b2}`);
    const show = spawnSync(BIN, ['saga', 'show', s.id, '--url', up.apiUrl], { encoding: 'utf8', timeout: 10000 });
    assert.equal(show.status, 0, show.stderr);
    assert.match(show.stdout, /2a\. b1\s+\(parallel\)/);
    assert.match(show.stdout, /2b\. b2\s+\(parallel\)/);
    assert.match(show.stdout, /3\. c\n/);
  });

  test('a step of a parallel group says no: its siblings stop, and what took effect is undone in reverse', async () => {
    const r = await start('parfail', {}, { wait: '6s' });
    assert.equal(r.status, 200, `ended without waiting for the slow sibling: ${r.text}`);
    const s = r.json;
    assert.equal(s.state, 'compensated');
    assert.match(s.error, /step x failed: HTTP 409/);
    const undo = (n) => part.byKey(`${s.id}:${n}:compensation`);
    assert.equal(undo('x').length, 0, 'the step that said no took no effect');
    assert.equal(undo('y').length, 1, 'the sibling still in flight may have taken effect: undone');
    assert.equal(undo('a').length, 1);
    assert.equal(part.byKey(`${s.id}:never:action`).length, 0);
    const order = ['z', 'y', 'a'].filter((n) => undo(n).length).map((n) => part.calls.indexOf(undo(n)[0]));
    assert.deepEqual([...order].sort((p, q) => p - q), order, 'reverse order of the steps: z (if it took effect), y, a');
    assert.equal(s.steps[2].action.uncertain, true, 'y was stopped in flight');
  });

  test('parallel groups are checked: 2+ steps, no pivot inside, no sibling in a template', async () => {
    const put = (def) => up.api('/api/saga-definitions/pbad', { method: 'PUT', body: JSON.stringify(def) });
    const one = step('s1', { path: '/a' });
    const cases = [
      [{ steps: [{ parallel: [one] }] }, /2 to 16 steps/],
      [{ steps: [{ parallel: [one, step('s2', { path: '/b/${steps.s1.id}' })] }] }, /run at the same time/],
      [{ steps: [{ parallel: [one, step('s2', { path: '/b' }, null, { pivot: true })] }] }, /pivot must be a step of its own/],
      [{ steps: [{ parallel: [one, step('s1', { path: '/b' })] }] }, /defined twice/],
    ];
    for (const [def, re] of cases) {
      const r = await put(def);
      assert.equal(r.status, 422, r.text);
      assert.match(r.json.detail, re);
    }
    const ok = await put({ steps: [{ parallel: [one, step('s2', { path: '/b' })] }, step('s3', { path: '/c/${steps.s2.id}' })] });
    assert.ok(ok.status === 200 || ok.status === 201, ok.text);
  });

  test('starts are idempotent by Idempotency-Key; ?wait answers 202 when the saga is still going', async () => {
    const key = `start-${Date.now()}`;
    const one = await start('slow', { ms: 1500 }, { wait: '100ms', headers: { 'idempotency-key': key } });
    assert.equal(one.status, 202);
    assert.equal(one.json.state, 'running');
    const two = await start('slow', { ms: 1500 }, { wait: '5s', headers: { 'idempotency-key': key } });
    assert.equal(two.json.id, one.json.id);
    assert.equal(two.status, 200);
    assert.equal(two.json.state, 'completed');
    assert.equal(part.calls.filter((c) => c.headers['idempotency-key'] === `${one.json.id}:b:action`).length, 1);
  });

  test('bad input: unknown saga, bad wait, non-object body, bad definition; retry/abort rules', async () => {
    assert.equal((await start('nope', {})).status, 404);
    const bw = await up.api('/api/sagas/ok?wait=forever', { method: 'POST', body: '{}' });
    assert.equal(bw.status, 400);
    assert.equal(bw.headers['content-type'], 'application/problem+json');
    assert.equal((await up.api('/api/sagas/ok', { method: 'POST', body: '[1]' })).status, 400);
    assert.equal((await up.api('/api/sagas/ok', { method: 'POST', body: '{"n":' })).status, 400);
    assert.equal((await up.api('/api/sagas/0123456789abcdef0123456789abcdef')).status, 404);
    assert.equal((await up.api('/api/sagas/0123456789abcdef0123456789abcdef/retry', { method: 'POST' })).status, 404);
    const bad = await up.api('/api/saga-definitions/x', { method: 'PUT', body: JSON.stringify({ steps: [{ name: 'a', action: { service: 'part', path: '/a/${steps.b.id}' } }] }) });
    assert.equal(bad.status, 422);
    assert.match(bad.json.detail, /steps\[0\]\.action\.path|not an earlier step/);
    const good = await up.api('/api/saga-definitions/adhoc', { method: 'PUT', body: JSON.stringify({ steps: [{ name: 'a', action: { service: 'part', path: '/adhoc' } }] }) });
    assert.equal(good.status, 200, good.text);
    assert.equal((await start('adhoc', {})).json.state, 'completed');
    const defs = (await up.api('/api/saga-definitions')).json.definitions;
    assert.ok(defs.ok && defs.adhoc);
  });

  test('each step is a span in the saga\'s trace', async () => {
    const s = (await start('ok', { n: 1, code: 'y' })).json;
    const t = await until(async () => {
      const r = await up.api(`/api/traces/${s.trace_id}`);
      return r.status === 200 && r.json.spans.length >= 4 ? r.json : undefined;
    }, { timeout: ms(10000), what: 'the saga trace in the collector' });
    const names = t.spans.map((x) => x.name);
    assert.ok(names.includes('saga ok'), names.join(', '));
    assert.ok(names.includes('saga ok b action'), names.join(', '));
  });

  test('SIGKILL of trellis up mid-step: the saga resumes and the step is sent again', async () => {
    const r = await start('slow', { ms: 2500 }, { wait: null });
    assert.equal(r.status, 202, 'accepted at once, before the saga ends');
    const id = r.json.id;
    await until(async () => part.byKey(`${id}:b:action`).length === 1, { timeout: ms(5000), what: 'step b in flight' });
    up.kill();
    await withDeadline(up.exited, ms(5000), 'trellis up killed');
    await startTrellis();
    const s = await until(async () => { const x = await get(id); return x && x.state === 'completed' ? x : undefined; }, { timeout: ms(15000), what: 'resumed saga completed' });
    assert.equal(s.steps[1].action.attempts, 2, 'the step in flight was sent again');
    const calls = part.byKey(`${id}:b:action`);
    assert.equal(calls.length, 2, 'with the same Idempotency-Key');
    assert.equal(part.byKey(`${id}:a:action`).length, 1, 'a finished step is not sent again');
  });

  test('the event store is part of the control plane (/api/streams)', async () => {
    const stream = `order-${Date.now()}`;
    const a = await up.api(`/api/streams/${stream}?expected=no_stream`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify([{ type: 'OrderPlaced', data: { total: 5 } }, { type: 'OrderPaid', data: {} }]) });
    assert.equal(a.status, 201, a.text);
    assert.equal(a.json.last_version, 1);
    const again = await up.api(`/api/streams/${stream}?expected=no_stream`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'OrderPlaced', data: {} }) });
    assert.equal(again.status, 409);
    assert.equal(again.json.current_version, 1);
    const r = await up.api(`/api/streams/${stream}`);
    assert.deepEqual(r.json.events.map((e) => e.type), ['OrderPlaced', 'OrderPaid']);
  });

  test('a bad saga in the topology is refused with file:line:col', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-saga-bad-'));
    try {
      const file = path.join(dir, 'topology.yaml');
      const { writeFileSync } = await import('node:fs');
      writeFileSync(file, 'services:\n  a: {command: trellis, args: [echo]}\nsagas:\n  s:\n    steps:\n      - name: x\n        action: {service: a, path: nope}\n');
      const r = spawnSync(BIN, ['up', file, '--check'], { encoding: 'utf8', timeout: 15000 });
      assert.equal(r.status, 2);
      assert.match(r.stderr, /topology\.yaml:7:\d+: .*path/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
