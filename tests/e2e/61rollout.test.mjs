// Rollouts in `trellis up` end to end, under gateway load: a canary of a version that fails
// 5 % of its requests is rolled back by itself while clients see zero errors (the gateway
// retries; the judge sees every attempt), a blue-green switch and a rolling update finish
// with zero errors, and the API refuses what it cannot do.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ms } from './lib/trellis.mjs';
import { startUp, echoService, request, startLoad, runTrellis, until } from './lib/up.mjs';

const echo = (tag, extra = []) => ['trellis', 'echo', '--listen', '127.0.0.1:${PORT}', '--workers', '1', '--tag', tag, ...extra];

describe('trellis rollout', () => {
  let up;
  let url;
  before(async () => {
    up = await startUp({
      services: {
        web: echoService({
          args: ['echo', '--listen', '127.0.0.1:${PORT}', '--workers', '1', '--tag', 'v1'],
          replicas: 2, version: 'v1',
          probes: { readiness: { http: '/health/ready', period: '200ms' } },
        }),
      },
      gateway: {
        access_log: 'off',
        upstreams: { web: { service: 'web', retry_budget: { percent: '100%', min_concurrency: 32 } } },
        routes: [{
          name: 'web', match: { prefix: '/web' }, strip_prefix: true, upstream: 'web',
          retry: { attempts: 3, retry_on: ['5xx', 'connect-failure', 'reset'] },
        }],
      },
    });
    url = `http://127.0.0.1:${up.apiPort}`;
  });
  after(async () => { if (up) { try { await up.stop(); } finally { up.cleanup(); } } });

  /** The versions of web's instances, sorted, from /api/services. */
  async function versions() {
    const svc = (await up.services()).find((s) => s.name === 'web');
    return svc.instances.map((i) => i.version).sort();
  }

  async function servedBy() {
    const seen = new Set();
    for (let i = 0; i < 20; i++) seen.add((await request(up.gatewayPort, '/web/')).headers['x-served-by']);
    return [...seen].sort();
  }

  test('a canary failing 5 % is rolled back by itself; clients see zero errors', async () => {
    const load = startLoad(up.gatewayPort, '/web/', { clients: 8 });
    const r = await runTrellis(['rollout', 'web', '--url', url, '--version', 'v2', '--steps', '10,50,100',
      '--interval', '3s', '--max-error-rate', '1%', '--min-requests', '20', '--drain', '300ms',
      '--', ...echo('v2', ['--fail-percent', '5'])], { timeout: ms(40000) });
    const st = await load.stop();
    console.log(`# canary rollback: ${st.total} requests during the rollout, ${st.non2xx} non-2xx, ${st.errors} errors`);
    assert.equal(r.code, 1, `rollout should fail: ${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /rolling back: error rate [\d.]+% over \d+ attempts exceeds the limit of 1\.00%/);
    assert.match(r.stdout, /rollout rolled_back: web/);
    assert.ok(st.total > 100, `load ran: ${st.total}`);
    assert.equal(st.non2xx, 0, st.samples.join('\n'));
    assert.equal(st.errors, 0, st.samples.join('\n'));
    // v2 is gone, v1 serves; the history keeps the reason.
    await until(async () => JSON.stringify(await versions()) === '["v1","v1"]', { timeout: ms(10000), what: 'only v1 left' });
    assert.deepEqual(await servedBy(), ['v1']);
    const h = await up.api('/api/rollouts/web');
    assert.equal(h.status, 200);
    assert.equal(h.json.active, null);
    assert.equal(h.json.history[0].state, 'rolled_back');
    assert.equal(h.json.history[0].to_version, 'v2');
    assert.match(h.json.history[0].reason, /error rate/);
    assert.ok(h.json.history[0].window.failures > 0);
    const s = await runTrellis(['rollout', 'status', 'web', '--url', url]);
    assert.equal(s.code, 0);
    assert.match(s.stdout, /canary\s+v1\s+v2\s+rolled_back/);
  });

  test('blue-green under load: all traffic switches at once, zero errors, blue stopped', async () => {
    const load = startLoad(up.gatewayPort, '/web/', { clients: 8 });
    const r = await runTrellis(['rollout', 'web', '--url', url, '--version', 'v3', '--strategy', 'blue-green',
      '--interval', '2s', '--drain', '500ms', '--', ...echo('v3')], { timeout: ms(40000) });
    const st = await load.stop();
    console.log(`# blue-green: ${st.total} requests during the switch, ${st.non2xx} non-2xx, ${st.errors} errors`);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /green \(v3\) ready: switching all traffic/);
    assert.ok(st.total > 100, `load ran: ${st.total}`);
    assert.equal(st.non2xx, 0, st.samples.join('\n'));
    assert.equal(st.errors, 0, st.samples.join('\n'));
    assert.deepEqual(await versions(), ['v3', 'v3']);
    assert.deepEqual(await servedBy(), ['v3']);
    const svc = (await up.services()).find((s) => s.name === 'web');
    assert.equal(svc.version, 'v3');
    assert.deepEqual(await up.passing('web'), svc.instances.map((i) => i.id).sort());
  });

  test('rolling under load: one replica at a time, zero errors; a healthy canary is promoted', async () => {
    const load = startLoad(up.gatewayPort, '/web/', { clients: 8 });
    const r = await runTrellis(['rollout', 'web', '--url', url, '--version', 'v4', '--strategy', 'rolling',
      '--interval', '1s', '--drain', '300ms', '--', ...echo('v4')], { timeout: ms(40000) });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.equal((r.stdout.match(/leaves the registry and drains/g) || []).length, 2);
    const c = await runTrellis(['rollout', 'web', '--url', url, '--version', 'v5', '--steps', '50',
      '--interval', '1s', '--drain', '300ms', '--max-p99', '2s', '--', ...echo('v5')], { timeout: ms(40000) });
    const st = await load.stop();
    assert.equal(c.code, 0, `${c.stdout}\n${c.stderr}`);
    assert.match(c.stdout, /step 1\/2: 50% of traffic to v5/);
    assert.equal(st.non2xx, 0, st.samples.join('\n'));
    assert.equal(st.errors, 0, st.samples.join('\n'));
    assert.deepEqual(await versions(), ['v5', 'v5']);
    // Restarts and scaling after a rollout run the new version.
    const sc = await runTrellis(['scale', 'web', '3', '--url', url]);
    assert.equal(sc.code, 0, sc.stderr);
    await until(async () => JSON.stringify(await versions()) === '["v5","v5","v5"]', { timeout: ms(10000), what: 'three v5 replicas' });
    const h = await up.api('/api/rollouts/web');
    assert.deepEqual(h.json.history.map((x) => [x.strategy, x.state]),
      [['canary', 'succeeded'], ['rolling', 'succeeded'], ['blue-green', 'succeeded'], ['canary', 'rolled_back']]);
  });

  test('bad requests: problem+json; one rollout at a time; abort rolls back', async () => {
    const bad = async (body, re, status = 400) => {
      const res = await up.api('/api/rollouts/web', { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
      assert.equal(res.status, status, res.text);
      assert.match(res.headers['content-type'], /problem\+json/);
      assert.match(res.json.detail, re);
    };
    await bad({}, /version/);
    await bad({ version: 'v5' }, /already runs version v5/);
    await bad({ version: 'v6', strategy: 'big-bang' }, /canary, blue-green or rolling/);
    await bad({ version: 'v6', steps: [50, 10] }, /increasing/);
    await bad({ version: 'v6', max_error_rate: 5 }, /fraction/);
    await bad({ version: 'v6', command: [] }, /command/);
    const nf = await up.api('/api/rollouts/nope');
    assert.equal(nf.status, 404);
    const cli = await runTrellis(['rollout', 'web', '--url', url, '--version', 'v6', '--max-error-rate', 'lots']);
    assert.equal(cli.code, 2);
    assert.match(cli.stderr, /--max-error-rate/);

    // A slow rollout: the second is refused, scale is refused, abort rolls it back.
    const start = await up.api('/api/rollouts/web', { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: 'v6', command: echo('v6'), steps: [10], interval_ms: 60000, drain_ms: 200 }) });
    assert.equal(start.status, 201, start.text);
    await bad({ version: 'v7' }, /already rolling out v6/, 409);
    const sc = await up.api('/api/services/web/scale?replicas=1', { method: 'POST' });
    assert.equal(sc.status, 409);
    await until(async () => (await up.api('/api/rollouts/web')).json.active?.state === 'stepping', { timeout: ms(15000), what: 'stepping' });
    const ab = await runTrellis(['rollout', 'abort', 'web', '--url', url]);
    assert.equal(ab.code, 0, ab.stderr);
    await until(async () => (await up.api('/api/rollouts/web')).json.active === null, { timeout: ms(15000), what: 'rolled back' });
    const h = await up.api('/api/rollouts/web');
    assert.equal(h.json.history[0].state, 'rolled_back');
    assert.equal(h.json.history[0].reason, 'aborted by the user');
    await until(async () => JSON.stringify(await versions()) === '["v5","v5","v5"]', { timeout: ms(10000), what: 'v6 gone' });
  });
});
