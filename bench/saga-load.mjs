// Starts sagas as fast as they finish: `concurrency` clients each POST /api/sagas/<name>?wait=
// and start the next one when the saga has ended. Prints a JSON line: sagas, ended states,
// sagas/s, p50/p99 latency (start to outcome).
// Usage: node bench/saga-load.mjs API_URL NAME [--seconds 10] [--concurrency 64]
import http from 'node:http';

const args = process.argv.slice(2);
const api = new URL(args[0] || 'http://127.0.0.1:8500');
const name = args[1] || 'bench';
const opt = (n, d) => { const i = args.indexOf(`--${n}`); return i >= 0 ? Number(args[i + 1]) : d; };
const SECONDS = opt('seconds', 10);
const CONC = opt('concurrency', 64);
const agent = new http.Agent({ keepAlive: true, maxSockets: CONC });
const lat = [];
const states = {};
let errors = 0;
const deadline = Date.now() + SECONDS * 1000;
const body = Buffer.from(JSON.stringify({ order: 1, amount: 100 }));

function once() {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({ host: api.hostname, port: api.port, path: `/api/sagas/${name}?wait=30s`, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': body.length } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        try {
          const s = JSON.parse(text);
          states[s.state] = (states[s.state] || 0) + 1;
          if (res.statusCode === 200) lat.push(ms); else errors++;
        } catch { errors++; }
        resolve();
      });
    });
    req.on('error', () => { errors++; resolve(); });
    req.end(body);
  });
}

async function worker() { while (Date.now() < deadline) await once(); }
const t0 = Date.now();
await Promise.all(Array.from({ length: CONC }, worker));
const secs = (Date.now() - t0) / 1000;
lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : 0);
console.log(JSON.stringify({ sagas: lat.length, states, errors, seconds: Number(secs.toFixed(2)),
  sagas_per_second: Math.round(lat.length / secs), p50_ms: Number(q(0.5).toFixed(2)), p99_ms: Number(q(0.99).toFixed(2)) }));
agent.destroy();
