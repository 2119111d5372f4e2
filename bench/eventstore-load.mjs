// Load for bench/eventstore.sh: appends (single events or batches) or $all page reads
// against `trellis eventstore` over keep-alive connections; prints one JSON line.
// Usage: node bench/eventstore-load.mjs http://127.0.0.1:PORT append --batch 100 --seconds 10 --connections 32
//        node bench/eventstore-load.mjs http://127.0.0.1:PORT read --page 1000 --seconds 10 --connections 4
import http from 'node:http';
import net from 'node:net';

const [base, mode, ...rest] = process.argv.slice(2);
// --floor 1: POST the same bodies to `trellis echo`'s /status/201 (no store): the cost of
// the HTTP exchange alone, the floor under a single-event append.
const opt = { depth: 1, batch: 1, page: 1000, seconds: 10, connections: 32, streams: 1000, floor: 0 };
for (let i = 0; i < rest.length; i += 2) opt[rest[i].replace(/^--/, '')] = Number(rest[i + 1]);
if (!base || !['append', 'read'].includes(mode)) {
  console.error('usage: eventstore-load.mjs BASE_URL append|read [--batch N] [--page N] [--seconds S] [--connections C]');
  process.exit(2);
}
const url = new URL(base);
const agent = new http.Agent({ keepAlive: true, maxSockets: opt.connections });

function send(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, path, method, agent,
      headers: body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {} },
    (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('latin1') }));
      res.on('error', reject);
    });
    req.setTimeout(30000, () => req.destroy(new Error('request deadline of 30 s passed')));
    req.on('error', reject);
    req.end(body);
  });
}

const payload = JSON.stringify({ sku: 'ABC-123', qty: 2, price: 1999, note: 'benchmark event' });
function batchBody(n) {
  const evs = [];
  for (let i = 0; i < n; i++) evs.push(`{"type":"ItemAdded","data":${payload}}`);
  return n === 1 ? evs[0] : `[${evs.join(',')}]`;
}

/*
 * Appends over a raw keep-alive socket with up to `depth` requests pipelined: node's http
 * client costs more CPU per request than the store, so it would measure itself.
 */
function appendConn(deadline, stats, worker) {
  const body = batchBody(opt.batch);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(url.port), url.hostname);
    let inFlight = 0;
    let i = 0;
    let buf = '';
    const sendOne = () => {
      const stream = `bench-${(worker * 7919 + i++) % opt.streams}`;
      inFlight++;
      sock.write(`POST ${opt.floor ? '/status/201' : `/api/streams/${stream}`} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    };
    const fill = () => { while (inFlight < opt.depth && Date.now() < deadline) sendOne(); };
    sock.setEncoding('latin1');
    sock.on('connect', fill);
    sock.on('data', (d) => {
      buf += d;
      for (;;) {
        const h = buf.indexOf('\r\n\r\n');
        if (h < 0) break;
        const m = /content-length: *(\d+)/i.exec(buf.slice(0, h));
        const len = m ? Number(m[1]) : 0;
        if (buf.length < h + 4 + len) break;
        const status = Number(buf.slice(9, 12));
        buf = buf.slice(h + 4 + len);
        inFlight--;
        if (status === 201) { stats.requests++; stats.events += opt.batch; } else stats.errors++;
      }
      if (Date.now() < deadline) fill();
      else if (inFlight === 0) { sock.end(); resolve(); }
    });
    sock.setTimeout(30000, () => sock.destroy(new Error('no answer for 30 s')));
    sock.on('error', reject);
    sock.on('close', resolve);
  });
}

async function readLoop(deadline, stats, worker, head) {
  // Each reader walks $all from its own offset, wrapping at the end.
  let from = Math.floor((head / opt.connections) * worker);
  while (Date.now() < deadline) {
    const r = await send('GET', `/api/streams/%24all?from_position=${from}&limit=${opt.page}`);
    if (r.status !== 200) { stats.errors++; continue; }
    stats.requests++;
    stats.bytes += r.text.length;
    const m = /"next_position":(\d+|null)\}$/.exec(r.text);
    if (!m || m[1] === 'null') {
      // The last page: count its events, then start over.
      stats.events += (r.text.match(/"position":/g) || []).length;
      from = 0;
    } else {
      stats.events += opt.page;
      from = Number(m[1]);
    }
  }
}

const stats = { requests: 0, events: 0, errors: 0, bytes: 0 };
let head = 0;
if (mode === 'read') {
  // The head position, to spread the readers over $all: a binary search on from_position.
  let lo = 0;
  let hi = 2 ** 40;
  while (lo < hi) {
    const mid = Math.floor((lo + hi + 1) / 2);
    const p = await send('GET', `/api/streams/%24all?from_position=${mid}&limit=1`);
    if (JSON.parse(p.text).events.length) lo = mid; else hi = mid - 1;
  }
  head = lo;
}
const started = Date.now();
const deadline = started + opt.seconds * 1000;
const loops = [];
for (let w = 0; w < opt.connections; w++) {
  loops.push(mode === 'append' ? appendConn(deadline, stats, w) : readLoop(deadline, stats, w, head));
}
await Promise.all(loops);
const secs = (Date.now() - started) / 1000;
agent.destroy();
console.log(JSON.stringify({
  mode, batch: opt.batch, page: opt.page, connections: opt.connections, seconds: secs,
  requests: stats.requests, events: stats.events, errors: stats.errors,
  events_per_second: Math.round(stats.events / secs),
  requests_per_second: Math.round(stats.requests / secs),
  mb_per_second: +(stats.bytes / secs / 1e6).toFixed(1),
}));
