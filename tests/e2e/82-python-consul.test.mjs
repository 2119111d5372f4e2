// Interop: Debian's python3-consul (python-consul 0.7.x), used the way its users write it,
// against `trellis registry`. Nobody here wrote this client. Debian's python3-* packages
// belong to /usr/bin/python3 (the python3 first on PATH may be another install), so that
// interpreter is called by its full path; the test skips if it cannot import consul.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { startRegistry, ms, withDeadline } from './lib/registry.mjs';

const PYTHON = '/usr/bin/python3';

function pythonConsulMissing() {
  const r = spawnSync(PYTHON, ['-c', 'import consul; print(consul.__version__)'], {
    encoding: 'utf8', timeout: 20000,
  });
  if (r.error) return `${PYTHON} cannot run (${r.error.message}); install Debian python3-consul (scripts/deps.sh)`;
  if (r.status !== 0) {
    return `${PYTHON} cannot import consul (install Debian python3-consul: scripts/deps.sh): ${r.stderr.trim().split('\n').pop()}`;
  }
  return false;
}

/** Runs `script` under /usr/bin/python3 with PORT in the environment; resolves {code, signal, stdout, stderr}. */
function runPython(script, port, timeout) {
  const proc = spawn(PYTHON, ['-c', script], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PORT: String(port), PYTHONDONTWRITEBYTECODE: '1' },
  });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise((resolve) => {
    proc.on('error', (e) => resolve({ code: null, signal: null, stdout, stderr: `${stderr}spawn error: ${e.message}` }));
    proc.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return withDeadline(done, timeout, `python3-consul script; stderr:\n${stderr}`).catch((e) => {
    proc.kill('SIGKILL');
    throw e;
  });
}

// Each step records what the client returned; the script stops at the first exception
// (traceback on stderr, exit 1). Values are turned into JSON for the assertions below.
const SCRIPT = String.raw`
import json, os, sys, traceback
import consul

out = {}
def record(name, value):
    out[name] = value

def summarize_health(nodes):
    return [{'ServiceID': n['Service']['ID'], 'Service': n['Service']['Service'],
             'Address': n['Service'].get('Address'), 'Port': n['Service'].get('Port'),
             'Checks': [{'CheckID': ch['CheckID'], 'Status': ch['Status']} for ch in n['Checks']]}
            for n in nodes]

try:
    c = consul.Consul(host='127.0.0.1', port=int(os.environ['PORT']))
    record('register', c.agent.service.register('web', service_id='web-1', address='127.0.0.1',
                                                port=8080, check=consul.Check.ttl('10s')))
    record('agent_services', sorted(c.agent.services().keys()))
    record('agent_checks', {k: v['Status'] for k, v in c.agent.checks().items()})
    record('ttl_pass', c.agent.check.ttl_pass('service:web-1'))
    index, nodes = c.health.service('web', passing=True)
    record('health_index', index)
    record('health_passing', summarize_health(nodes))
    record('kv_put', c.kv.put('cfg/a', 'x'))
    index, data = c.kv.get('cfg/a')
    record('kv_index', index)
    record('kv_key', data and data['Key'])
    record('kv_value_is_bytes', isinstance(data and data['Value'], bytes))
    record('kv_value_repr', repr(data and data['Value']))
    record('kv_value_ok', data is not None and data['Value'] == b'x')
    index, services = c.catalog.services()
    record('catalog_index', index)
    record('catalog_services', services)
    record('deregister', c.agent.service.deregister('web-1'))
    index, nodes = c.health.service('web')
    record('health_after', summarize_health(nodes))
    index, nodes = c.health.service('web', passing=True)
    record('health_passing_after', summarize_health(nodes))
    record('agent_services_after', sorted(c.agent.services().keys()))
except Exception:
    traceback.print_exc()
    print(json.dumps(out))
    sys.exit(1)
print(json.dumps(out))
`;

const missing = pythonConsulMissing();

describe('python3-consul (Debian) against trellis registry', { skip: missing }, () => {
  let reg;
  before(async () => {
    reg = await startRegistry();
  });
  after(async () => {
    if (!reg) return;
    try { await reg.stop(); } finally { await reg.cleanup(); }
  });

  test('register with a TTL check, pass it, query health, kv put/get, catalog, deregister',
    { timeout: ms(30000) }, async () => {
      const r = await runPython(SCRIPT, reg.port, ms(25000));
      const lastLine = r.stdout.trim().split('\n').pop() || '{}';
      let res;
      try { res = JSON.parse(lastLine); } catch { res = {}; }
      const ctx = `python exit ${r.code}/${r.signal}; results so far: ${lastLine}\nstderr:\n${r.stderr}`;
      assert.equal(r.code, 0, `python3-consul script failed: ${ctx}`);

      assert.equal(res.register, true, ctx);
      assert.ok(res.agent_services.includes('web-1'), `agent services list web-1: ${ctx}`);
      assert.equal(res.agent_checks['service:web-1'], 'critical', `a new TTL check starts critical: ${ctx}`);
      // python-consul 0.7.x sends GET (as Consul 0.x agents accepted) for check pass/warn/fail
      // and for service/check deregister; CB.bool() turns a non-200 answer into False.
      assert.equal(res.ttl_pass, true, `ttl_pass (GET /v1/agent/check/pass/service:web-1) answered 200: ${ctx}`);

      assert.ok(Number.isInteger(Number(res.health_index)) && Number(res.health_index) > 0,
        `health index: ${ctx}`);
      assert.equal(res.health_passing.length, 1, `one passing instance of web: ${ctx}`);
      const [inst] = res.health_passing;
      assert.equal(inst.ServiceID, 'web-1', ctx);
      assert.equal(inst.Service, 'web', ctx);
      assert.equal(inst.Address, '127.0.0.1', ctx);
      assert.equal(inst.Port, 8080, ctx);
      const ttl = inst.Checks.find((ch) => ch.CheckID === 'service:web-1');
      assert.ok(ttl, `the entry carries the service's TTL check: ${ctx}`);
      assert.equal(ttl.Status, 'passing', ctx);
      assert.ok(inst.Checks.every((ch) => ch.Status === 'passing'), `passing=True keeps only all-passing entries: ${ctx}`);

      assert.equal(res.kv_put, true, ctx);
      assert.equal(res.kv_key, 'cfg/a', ctx);
      assert.equal(res.kv_value_is_bytes, true, `kv.get value is bytes: ${ctx}`);
      assert.equal(res.kv_value_repr, "b'x'", ctx);
      assert.equal(res.kv_value_ok, true, ctx);

      assert.ok(Number(res.catalog_index) > 0, `catalog index: ${ctx}`);
      assert.equal(typeof res.catalog_services, 'object', ctx);
      assert.ok(Object.hasOwn(res.catalog_services, 'web'), `catalog lists web: ${ctx}`);
      assert.ok(Array.isArray(res.catalog_services.web), `catalog tags are a list: ${ctx}`);

      assert.equal(res.deregister, true, `deregister (GET /v1/agent/service/deregister/web-1) answered 200: ${ctx}`);
      assert.deepEqual(res.health_after, [], `no instance of web after deregister: ${ctx}`);
      assert.deepEqual(res.health_passing_after, [], ctx);
      assert.ok(!res.agent_services_after.includes('web-1'), `agent services drop web-1: ${ctx}`);
    });
});
