// OpenTelemetry interop: a Node service instrumented with the OpenTelemetry Node SDK (HTTP
// instrumentation, OTLP/HTTP exporter) is called through the trellis gateway with a
// traceparent from the test. The stored trace must hold the gateway's server span, its
// client span and the Node service's server span, parented under one trace id, and
// /api/dependencies must show gateway → node service.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCollector } from './lib/collector.mjs';
import { startGateway, request, until, ms, withDeadline } from './lib/gateway.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const T = { timeout: ms(60000) };
let col, svc, svcPort, gw, dir;

function startNodeService(otlp) {
  const proc = spawn(process.execPath, [path.join(here, 'fixtures/otel-service.cjs')], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PORT: '0', OTEL_SERVICE_NAME: 'node-svc',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${otlp}/v1/traces` },
  });
  let out = '';
  let err = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { err += d; });
  const ready = new Promise((resolve, reject) => {
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening (\d+)/);
      if (m) resolve(Number(m[1]));
    });
    proc.on('exit', (code) => reject(new Error(`node service exited ${code}: ${err}`)));
  });
  return { proc, ready: withDeadline(ready, ms(15000), `node service start: ${err}`) };
}

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-otel-'));
  col = await startCollector(path.join(dir, 'data'));
  svc = startNodeService(col.otlp);
  svcPort = await svc.ready;
  gw = await startGateway({
    access_log: 'off',
    tracing: { endpoint: `${col.otlp}/v1/traces`, service: 'gateway', flush_interval: '100ms' },
    upstreams: { node: { endpoints: [`127.0.0.1:${svcPort}`] } },
    routes: [{ name: 'node', match: { prefix: '/node' }, strip_prefix: true, upstream: 'node' }],
  });
});

after(async () => {
  if (gw) await gw.stop();
  if (svc) {
    svc.proc.kill('SIGTERM');
    await new Promise((r) => (svc.proc.exitCode !== null ? r() : svc.proc.on('exit', r)));
  }
  if (col) await col.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('gateway and an OpenTelemetry Node service share one trace, parented correctly', T, async () => {
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
  const clientSpan = '00f067aa0ba902b7';
  const r = await request(gw.port, '/node/orders/7', {
    headers: { traceparent: `00-${traceId}-${clientSpan}-01`, 'x-correlation-id': 'otel-e2e-1' },
  });
  assert.equal(r.status, 200, r.text);
  const seenByService = JSON.parse(r.text).traceparent;
  assert.match(seenByService, new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`), 'the service got the trace');

  let trace;
  await until(async () => {
    const res = await fetch(`${col.query}/api/traces/${traceId}`);
    if (res.status !== 200) return false;
    trace = await res.json();
    return trace.spans.length >= 3;
  }, { timeout: ms(20000), every: 200, what: 'three spans of the trace in the collector' });

  const byKind = (service, kind) => trace.spans.filter((s) => s.service === service && s.kind === kind);
  const [gwServer] = byKind('gateway', 'SERVER');
  const [gwClient] = byKind('gateway', 'CLIENT');
  const [nodeServer] = byKind('node-svc', 'SERVER');
  assert.ok(gwServer && gwClient && nodeServer, `spans: ${JSON.stringify(trace.spans.map((s) => [s.service, s.kind, s.name]))}`);
  assert.equal(gwServer.parentSpanId, clientSpan, 'the gateway continues the caller\'s trace');
  assert.equal(gwClient.parentSpanId, gwServer.spanId, 'the attempt is a child of the gateway request');
  assert.equal(nodeServer.parentSpanId, gwClient.spanId, 'the service\'s span is a child of the attempt');
  assert.equal(seenByService.split('-')[2], gwClient.spanId, 'traceparent carried the client span');
  assert.equal(gwServer.correlationId, 'otel-e2e-1');

  await until(async () => {
    const deps = await (await fetch(`${col.query}/api/dependencies`)).json();
    return deps.dependencies.some((d) => d.parent === 'gateway' && d.child === 'node-svc' && d.callCount >= 1);
  }, { timeout: ms(10000), every: 200, what: 'the gateway → node-svc dependency' });
});
