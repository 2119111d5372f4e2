// Posts OTLP/HTTP JSON span batches to a collector as fast as it answers, over keep-alive
// connections, and prints the accepted spans per second.
// Usage: node bench/collector-load.mjs URL [--spans 500] [--seconds 10] [--connections 4]
import http from 'node:http';
import { randomBytes } from 'node:crypto';

const args = process.argv.slice(2);
const url = new URL(args[0] || 'http://127.0.0.1:4318/v1/traces');
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const SPANS = opt('spans', 500);
const SECONDS = opt('seconds', 10);
const CONNS = opt('connections', 4);

let batchNo = 0;
const hex = (n, w) => n.toString(16).padStart(w, '0');
/** A batch of SPANS spans: traces of 10 spans across 3 services, like a small request tree. */
function batch() {
  const b = batchNo++;
  const now = BigInt(Date.now()) * 1000000n;
  const byService = [[], [], []];
  let traceId = '';
  for (let i = 0; i < SPANS; i++) {
    // Random ids, as W3C trace ids are: an index on them sees real scatter.
    if (i % 10 === 0) traceId = randomBytes(16).toString('hex');
    const trace = traceId;
    const span = { traceId: trace, spanId: hex((b * SPANS + i + 1) % 2 ** 48, 16), name: `op-${i % 7}`, kind: 2,
      startTimeUnixNano: String(now + BigInt(i) * 1000n), endTimeUnixNano: String(now + BigInt(i) * 1000n + 500000n),
      attributes: [{ key: 'http.request.method', value: { stringValue: 'GET' } },
        { key: 'http.response.status_code', value: { intValue: '200' } },
        { key: 'correlation_id', value: { stringValue: `c-${b}-${i}` } }] };
    if (i % 10) span.parentSpanId = hex((b * SPANS + i - (i % 10) + 1) % 2 ** 48, 16);
    byService[i % 3].push(span);
  }
  return JSON.stringify({ resourceSpans: byService.map((spans, s) => ({
    resource: { attributes: [{ key: 'service.name', value: { stringValue: `svc-${s}` } }] },
    scopeSpans: [{ scope: { name: 'bench' }, spans }] })) });
}

// Bodies are made (and encoded) before the clock starts so the generator's own cost stays off
// the figure.
const bodies = Array.from({ length: 64 }, () => Buffer.from(batch()));
const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS });
let accepted = 0;
let failed = 0;
let next = 0;
const deadline = Date.now() + SECONDS * 1000;
const started = process.hrtime.bigint();

function send() {
  return new Promise((resolve) => {
    const body = bodies[next++ % bodies.length];
    const req = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode === 200) accepted += SPANS; else failed++;
        resolve();
      });
    });
    req.on('error', () => { failed++; resolve(); });
    req.end(body);
  });
}

async function worker() {
  while (Date.now() < deadline) await send();
}

await Promise.all(Array.from({ length: CONNS }, worker));
const secs = Number(process.hrtime.bigint() - started) / 1e9;
console.log(JSON.stringify({ spans: accepted, failed_requests: failed, seconds: Number(secs.toFixed(2)),
  spans_per_second: Math.round(accepted / secs), batch: SPANS, connections: CONNS }));
agent.destroy();
