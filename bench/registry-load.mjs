// Drives bench/registry.sh: registers the instances and the service the watchers watch.
// Usage: node bench/registry-load.mjs register BASE_URL SERVICES PER_SERVICE ECHO_PORTS(comma)
//        node bench/registry-load.mjs watched BASE_URL SERVICE
import http from 'node:http';

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function call(base, method, path, body, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const req = http.request(base + path, { method, agent, timeout: timeoutMs }, (res) => {
      let data = '';
      res.on('data', (c) => (data += c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
    req.on('error', reject);
    if (body !== undefined) req.write(typeof body === 'string' ? body : JSON.stringify(body));
    req.end();
  });
}

async function register(base, services, perService, echoPorts) {
  const start = Date.now();
  const jobs = [];
  for (let s = 0; s < services; s++) {
    for (let i = 0; i < perService; i++) {
      const port = echoPorts[(s * perService + i) % echoPorts.length];
      jobs.push({
        ID: `svc${s}-${i}`,
        Name: `svc${s}`,
        Address: '127.0.0.1',
        Port: port,
        Check: { HTTP: `http://127.0.0.1:${port}/health/live`, Interval: '10s', Timeout: '2s' },
      });
    }
  }
  let next = 0;
  async function worker() {
    while (next < jobs.length) {
      const job = jobs[next++];
      const r = await call(base, 'PUT', '/v1/agent/service/register', job);
      if (r.status !== 200) throw new Error(`register ${job.ID}: ${r.status} ${r.body}`);
    }
  }
  await Promise.all(Array.from({ length: 32 }, worker));
  console.log(`registered ${jobs.length} instances in ${services} services in ${Date.now() - start} ms`);
}

// Registers the first instance of the watched service, so its health query has an index
// and a body; trellis-loadgen watchers then times the wake-up when a second one registers.
async function watched(base, service) {
  const reg = await call(base, 'PUT', '/v1/agent/service/register', {
    ID: `${service}-0`,
    Name: service,
    Port: 1,
    Check: { TTL: '10m', Status: 'passing' },
  });
  if (reg.status !== 200) throw new Error(`register ${service}: ${reg.status} ${reg.body}`);
}

const [cmd, base, ...rest] = process.argv.slice(2);
if (cmd === 'register') await register(base, +rest[0], +rest[1], rest[2].split(',').map(Number));
else if (cmd === 'watched') await watched(base, rest[0]);
else {
  console.error('usage: registry-load.mjs register|watched ...');
  process.exit(2);
}
agent.destroy();
