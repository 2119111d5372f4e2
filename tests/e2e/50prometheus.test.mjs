// A real Prometheus server (Debian's `prometheus`) scrapes trellis and answers a PromQL
// query about the gateway's requests: the proof that our /metrics text is what Prometheus
// reads, not just what we think it reads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startGateway, startEchoes, request, freePort, until, ms } from './lib/gateway.mjs';

const T = { timeout: ms(90000) };
let echo, gw, prom, promPort, dir;

before(async () => {
  [echo] = await startEchoes(1);
  gw = await startGateway({
    access_log: 'off',
    upstreams: { e: { endpoints: [`127.0.0.1:${echo.port}`] } },
    routes: [{ name: 'api', match: { prefix: '/api' }, strip_prefix: true, upstream: 'e' }],
  });
  dir = mkdtempSync(path.join(os.tmpdir(), 'trellis-prom-'));
  promPort = await freePort();
  writeFileSync(path.join(dir, 'prometheus.yml'), [
    'global: {scrape_interval: 1s, evaluation_interval: 1s}',
    'scrape_configs:',
    '  - job_name: trellis-gateway',
    `    static_configs: [{targets: ["127.0.0.1:${gw.adminPort}"]}]`,
    '',
  ].join('\n'));
  prom = spawn('prometheus', [
    `--config.file=${path.join(dir, 'prometheus.yml')}`,
    `--storage.tsdb.path=${path.join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${promPort}`,
    '--log.level=warn',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  prom.stderr.resume();
});

after(async () => {
  if (prom) {
    prom.kill('SIGTERM');
    await new Promise((r) => (prom.exitCode !== null ? r() : prom.on('exit', r)));
  }
  if (gw) await gw.stop();
  if (echo) await echo.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function promql(q) {
  const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`,
    { signal: AbortSignal.timeout(ms(5000)) });
  const body = await res.json();
  assert.equal(body.status, 'success', JSON.stringify(body));
  return body.data.result;
}

test('Prometheus scrapes the gateway and PromQL returns its request count', T, async () => {
  for (let i = 0; i < 25; i++) assert.equal((await request(gw.port, '/api/echo')).status, 200);
  let seen = -1;
  await until(async () => {
    try {
      const r = await promql('sum(trellis_gateway_route_requests_total{route="api",code="2xx"})');
      seen = r.length ? Number(r[0].value[1]) : -1;
    } catch { seen = -1; }
    return seen >= 25;
  }, { timeout: ms(60000), every: 500, what: `Prometheus to report 25 requests (last: ${seen})` });
  const up = await promql('up{job="trellis-gateway"}');
  assert.equal(up[0].value[1], '1', 'the scrape target is up');
  const p99 = await promql(
    'histogram_quantile(0.99, sum by (le) (trellis_gateway_route_duration_seconds_bucket{route="api"}))');
  assert.equal(p99.length, 1, 'the latency histogram is queryable');
  assert.ok(Number(p99[0].value[1]) > 0, `a p99 latency comes back: ${JSON.stringify(p99)}`);
});
