// The trace collector end to end: OTLP/HTTP JSON and Zipkin v2 ingest, the query API, the
// dependency graph, persistence across restarts, retention, and `trellis trace`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import zipkin from 'zipkin';
import { BIN, SANITIZED, ms, sleep, withDeadline } from './lib/trellis.mjs';
import { startCollector } from './lib/collector.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const OTLP_EXAMPLE = path.resolve(here, '../data/otlp-trace.json');
const run = promisify(execFile);

const hex = (n, len) => n.toString(16).padStart(len, '0');
let seq = 1;
/** A fresh random-ish trace id (32 hex digits). */
const newTraceId = () => hex(Date.now(), 16) + hex(seq++, 16);

function otlpRequest(service, spans, resourceExtra = []) {
  return {
    resourceSpans: [{
      resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }, ...resourceExtra] },
      scopeSpans: [{ scope: { name: 'e2e' }, spans }],
    }],
  };
}

async function post(url, body, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, type: res.headers.get('content-type'), text, json: text ? JSON.parse(text) : null };
}

async function getJson(url) {
  const res = await fetch(url);
  return { status: res.status, type: res.headers.get('content-type'), json: await res.json() };
}

let dataDir;
let col;

before(async () => {
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'trellis-collector-'));
  col = await startCollector(dataDir);
});

after(async () => {
  if (col) col.kill();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('the OpenTelemetry example request is accepted and queryable as sent', async () => {
  const body = readFileSync(OTLP_EXAMPLE, 'utf8');
  const r = await post(`${col.otlp}/v1/traces`, body);
  assert.equal(r.status, 200, r.text);
  assert.match(r.type, /application\/json/);
  assert.deepEqual(r.json, { partialSuccess: {} });
  for (const id of ['5b8efff798038103d269b633813fc60c', '5B8EFFF798038103D269B633813FC60C']) {
    const { status, json } = await getJson(`${col.query}/api/traces/${id}`);
    assert.equal(status, 200);
    assert.equal(json.traceId, '5b8efff798038103d269b633813fc60c');
    assert.equal(json.spans.length, 1);
    const s = json.spans[0];
    assert.equal(s.spanId, 'eee19b7ec3c1b174');
    assert.equal(s.parentSpanId, 'eee19b7ec3c1b173');
    assert.equal(s.name, "I'm a server span");
    assert.equal(s.service, 'my.service');
    assert.equal(s.kind, 'SERVER');
    assert.equal(s.startTimeUnixNano, '1544712660000000000');
    assert.equal(s.endTimeUnixNano, '1544712661000000000');
    assert.equal(s.durationNs, 1e9);
    assert.deepEqual(s.attributes, { 'my.span.attr': 'some value' });
    assert.equal(s.scope.name, 'my.library');
    assert.deepEqual(json.roots, ['eee19b7ec3c1b174']); // its parent was never sent
  }
  const list = await getJson(`${col.query}/api/traces?service=my.service`);
  assert.ok(list.json.traces.some((t) => t.traceId === '5b8efff798038103d269b633813fc60c'));
});

test('upper-case ids, times as numbers and strings, integer enums, unknown fields', async () => {
  const traceId = newTraceId().toUpperCase();
  const now = BigInt(Date.now()) * 1000000n;
  // Nanosecond times as JSON numbers need more digits than a JS double keeps: write them raw.
  const raw = JSON.stringify({
    futureTopLevel: { x: 1 },
    ...otlpRequest('upper', [
      { traceId, spanId: 'ABCDEF0123456789', name: 'numbers', kind: 3, startTimeUnixNano: '@START@',
        endTimeUnixNano: '@END@', status: { code: 2, message: 'boom' }, unknownField: [1, 2],
        attributes: [{ key: 'n', value: { intValue: 7 } }, { key: 'f', value: { doubleValue: 1.5 } }] },
      { traceId, spanId: 'ABCDEF0123456780', parentSpanId: 'ABCDEF0123456789', name: 'strings',
        startTimeUnixNano: String(now + 100000n), endTimeUnixNano: String(now + 200000n), flags: 1 },
    ]),
  }).replace('"@START@"', String(now)).replace('"@END@"', String(now + 2000000n));
  const r = await post(`${col.otlp}/v1/traces`, raw);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { partialSuccess: {} });
  const { json } = await getJson(`${col.query}/api/traces/${traceId}`);
  assert.equal(json.spanCount, 2);
  assert.equal(json.error, true);
  const byName = Object.fromEntries(json.spans.map((s) => [s.name, s]));
  assert.equal(byName.numbers.kind, 'CLIENT');
  assert.equal(byName.numbers.durationNs, 2000000);
  assert.deepEqual(byName.numbers.status, { code: 2, message: 'boom' });
  assert.deepEqual(byName.numbers.attributes, { n: 7, f: 1.5 });
  assert.equal(byName.strings.durationNs, 100000);
  assert.deepEqual(byName.numbers.children, ['abcdef0123456780']);
  assert.equal(byName.strings.depth, 1);
  assert.deepEqual(json.roots, ['abcdef0123456789']);
});

test('a malformed body answers 400 problem+json', async () => {
  for (const body of ['{"resourceSpans": [', '[1,2,3]', '{"resourceSpans": 5}']) {
    const r = await post(`${col.otlp}/v1/traces`, body);
    assert.equal(r.status, 400, body);
    assert.match(r.type, /application\/problem\+json/);
    assert.equal(r.json.status, 400);
    assert.ok(r.json.detail.length > 0);
  }
  const z = await post(`${col.zipkin}/api/v2/spans`, '{"not": "a list"}');
  assert.equal(z.status, 400);
  assert.match(z.type, /application\/problem\+json/);
  const p = await post(`${col.otlp}/v1/traces`, 'x', { 'content-type': 'application/x-protobuf' });
  assert.equal(p.status, 415);
});

test('invalid spans are rejected with an OTLP partialSuccess answer; the rest is kept', async () => {
  const traceId = newTraceId();
  const r = await post(`${col.otlp}/v1/traces`, otlpRequest('partial', [
    { traceId: 'not-hex', spanId: '0123456789abcdef', name: 'bad-trace' },
    { traceId, spanId: '0123', name: 'bad-span' },
    { traceId, spanId: '0123456789abcdef', name: 'good' },
  ]));
  assert.equal(r.status, 200);
  assert.equal(r.json.partialSuccess.rejectedSpans, 2);
  assert.equal(typeof r.json.partialSuccess.errorMessage, 'string');
  assert.match(r.json.partialSuccess.errorMessage, /traceId/);
  const { json } = await getJson(`${col.query}/api/traces/${traceId}`);
  assert.deepEqual(json.spans.map((s) => s.name), ['good']);
});

test('a span batch made by the npm zipkin package is accepted (202) and queryable', async () => {
  const { Tracer, ExplicitContext, jsonEncoder, Annotation } = zipkin;
  const recorded = [];
  const recorder = { record: (rec) => recorded.push(rec) };
  const spans = [];
  const batch = new zipkin.BatchRecorder({ logger: { logSpan: (s) => spans.push(s) }, timeout: 60000 });
  const tracer = new Tracer({ ctxImpl: new ExplicitContext(), recorder: batch, localServiceName: 'zk-frontend', traceId128Bit: true });
  const root = tracer.createRootId();
  tracer.letId(root, () => {
    tracer.recordServiceName('zk-frontend');
    tracer.recordRpc('get /cart');
    tracer.recordAnnotation(new Annotation.ServerRecv());
    tracer.recordBinary('correlation_id', 'zk-corr-1');
  });
  const child = tracer.letId(root, () => tracer.createChildId());
  tracer.letId(child, () => {
    tracer.recordServiceName('zk-frontend');
    tracer.recordRpc('call cart');
    tracer.recordAnnotation(new Annotation.ClientSend());
    tracer.recordAnnotation(new Annotation.ClientRecv());
  });
  tracer.letId(root, () => tracer.recordAnnotation(new Annotation.ServerSend()));
  await sleep(20);
  batch.flush?.();
  assert.equal(recorded.length, 0);
  assert.equal(spans.length, 2, 'the zipkin package produced two spans');
  const body = `[${spans.map((s) => jsonEncoder.JSON_V2.encode(s)).join(',')}]`;
  const r = await post(`${col.zipkin}/api/v2/spans`, body);
  assert.equal(r.status, 202, r.text);
  const traceId = root.traceId;
  const { json } = await getJson(`${col.query}/api/traces/${traceId}`);
  assert.equal(json.spanCount, 2);
  assert.deepEqual(json.spans.map((s) => s.name).sort(), ['call cart', 'get /cart']);
  assert.equal(json.rootName, 'get /cart');
  assert.equal(json.spans.find((s) => s.name === 'get /cart').correlationId, 'zk-corr-1');
  const list = await getJson(`${col.query}/api/traces?correlation_id=zk-corr-1`);
  assert.deepEqual(list.json.traces.map((t) => t.traceId), [traceId]);
  // A 64-bit Zipkin trace id, upper case, and a whole batch rejected for one bad span.
  const bad = await post(`${col.zipkin}/api/v2/spans`, [
    { traceId: 'AAAAAAAAAAAAAAA1', id: 'BBBBBBBBBBBBBBB1', name: 'ok' },
    { traceId: 'AAAAAAAAAAAAAAA1', id: 'nope', name: 'bad' },
  ]);
  assert.equal(bad.status, 400);
  assert.equal((await getJson(`${col.query}/api/traces/AAAAAAAAAAAAAAA1`)).status, 404);
  const ok = await post(`${col.zipkin}/api/v2/spans`, [{ traceId: 'AAAAAAAAAAAAAAA1', id: 'BBBBBBBBBBBBBBB1', name: 'ok', timestamp: 1700000000000000, duration: 5 }]);
  assert.equal(ok.status, 202);
  const got = await getJson(`${col.query}/api/traces/AAAAAAAAAAAAAAA1`);
  assert.equal(got.json.traceId, '0000000000000000aaaaaaaaaaaaaaa1');
});

test('dependencies: parent/child across services, counted live even when the child arrives first', async () => {
  const traceId = newTraceId();
  const t0 = BigInt(Date.now()) * 1000000n;
  const child = await post(`${col.otlp}/v1/traces`, otlpRequest('dep-backend', [
    { traceId, spanId: '2000000000000001', parentSpanId: '1000000000000001', name: 'GET /items', kind: 2,
      startTimeUnixNano: String(t0 + 1000n), endTimeUnixNano: String(t0 + 5000n), status: { code: 2 } },
  ]));
  assert.equal(child.status, 200);
  const parent = await post(`${col.otlp}/v1/traces`, otlpRequest('dep-frontend', [
    { traceId, spanId: '1000000000000001', name: 'GET /', kind: 2, startTimeUnixNano: String(t0), endTimeUnixNano: String(t0 + 9000n) },
  ]));
  assert.equal(parent.status, 200);
  const deps = await getJson(`${col.query}/api/dependencies`);
  assert.deepEqual(deps.json.dependencies.find((d) => d.parent === 'dep-frontend'),
    { parent: 'dep-frontend', child: 'dep-backend', callCount: 1, errorCount: 1 });
  const z = await getJson(`${col.zipkin}/api/v2/dependencies?endTs=${Date.now()}&lookback=86400000`);
  assert.ok(Array.isArray(z.json));
  assert.deepEqual(z.json.find((d) => d.parent === 'dep-frontend'),
    { parent: 'dep-frontend', child: 'dep-backend', callCount: 1, errorCount: 1 });
  const services = await getJson(`${col.query}/api/services`);
  for (const s of ['dep-backend', 'dep-frontend', 'my.service', 'zk-frontend']) assert.ok(services.json.services.includes(s), s);
  const list = await getJson(`${col.query}/api/traces?service=dep-backend&error=true&limit=5`);
  const summary = list.json.traces.find((t) => t.traceId === traceId);
  assert.ok(summary);
  assert.equal(summary.rootService, 'dep-frontend');
  assert.equal(summary.spanCount, 2);
  assert.equal(summary.durationNs, 9000);
  assert.deepEqual(summary.services.sort(), ['dep-backend', 'dep-frontend']);
  assert.equal((await getJson(`${col.query}/api/traces?service=dep-backend&min_duration=1ms`)).json.traces.length, 0);
  assert.equal((await getJson(`${col.query}/api/traces?service=dep-backend&operation=GET%20%2Fitems`)).json.traces.length, 1);
  assert.equal((await getJson(`${col.query}/api/traces?limit=0`)).status, 400);

  // `trellis trace` prints every span name in a waterfall.
  const out = await run(BIN, ['trace', traceId, '--collector', col.query], { env: { ...process.env, NO_COLOR: '1' } });
  assert.match(out.stdout, /GET \/items/);
  assert.match(out.stdout, /GET \//);
  assert.doesNotMatch(out.stdout, /\x1b\[/, 'no colour without a TTY');
  const lines = out.stdout.split('\n');
  assert.ok(lines.findIndex((l) => /^dep-frontend GET \//.test(l)) < lines.findIndex((l) => /^ {2}dep-backend GET \/items/.test(l)));
  const asJson = await run(BIN, ['trace', traceId, '--collector', col.query, '--json']);
  assert.equal(JSON.parse(asJson.stdout).traceId, traceId);
  await assert.rejects(run(BIN, ['trace', 'ffffffffffffffffffffffffffffffff', '--collector', col.query]), (e) => e.code === 1);
});

test('errors: unknown trace 404, bad id 400, unknown path 404, wrong method 405, body over 8 MiB 413', async () => {
  assert.equal((await getJson(`${col.query}/api/traces/0123456789abcdef0123456789abcdee`)).status, 404);
  assert.equal((await getJson(`${col.query}/api/traces/xyz`)).status, 400);
  assert.equal((await getJson(`${col.query}/nope`)).status, 404);
  assert.equal((await fetch(`${col.otlp}/v1/traces`)).status, 405);
  const big = await fetch(`${col.otlp}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: `{"x":"${'a'.repeat(9 << 20)}"}` }).catch((e) => e);
  if (!(big instanceof Error)) assert.equal(big.status, 413);
});

test('traces survive a restart (SQLite)', async () => {
  const traceId = newTraceId();
  const r = await post(`${col.otlp}/v1/traces`, otlpRequest('durable', [{ traceId, spanId: '0123456789abcdef', name: 'kept' }]));
  assert.equal(r.status, 200);
  await col.stop();
  col = await startCollector(dataDir);
  const { status, json } = await getJson(`${col.query}/api/traces/${traceId}`);
  assert.equal(status, 200);
  assert.equal(json.spans[0].name, 'kept');
  const deps = await getJson(`${col.query}/api/dependencies`);
  assert.ok(deps.json.dependencies.some((d) => d.parent === 'dep-frontend'), 'the graph is rebuilt from stored spans');
});

test('retention drops traces older than --retention', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-collector-ret-'));
  const c = await startCollector(dir, ['--retention', '1s']);
  try {
    const traceId = newTraceId();
    const r = await post(`${c.otlp}/v1/traces`, otlpRequest('short', [{ traceId, spanId: '0123456789abcdef', name: 'brief' }]));
    assert.equal(r.status, 200);
    assert.equal((await getJson(`${c.query}/api/traces/${traceId}`)).status, 200);
    let status = 200;
    for (let i = 0; i < 40 && status === 200; i++) {
      await sleep(ms(200));
      status = (await getJson(`${c.query}/api/traces/${traceId}`)).status;
    }
    assert.equal(status, 404, 'dropped from memory and SQLite');
    await c.stop();
  } finally {
    c.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the collector stops cleanly', async () => {
  await col.stop();
  col = null;
});
