// Core HTTP/1.1 behaviour of `trellis echo` over the wire: framing, keep-alive,
// pipelining, chunked bodies, HEAD, Date, Connection handling, 100-continue, endpoints.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import {
  startEcho, rawExchange, rawRequest, parseAll, parseResponses, assertProblem, openClient,
  get, ms, sleep, withDeadline,
} from './lib/trellis.mjs';

let srv;
before(async () => { srv = await startEcho(['--workers', '2']); });
after(async () => { if (srv) await srv.stop(); });

const T = { timeout: ms(15000) };
const sha256 = (b) => createHash('sha256').update(b).digest('hex');

/** One request over Node's http client; resolves {status, headers, body (Buffer)}. */
function httpGet(port, pathname, { agent, method = 'GET', headers = {}, body } = {}) {
  return withDeadline(new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: pathname, method, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), socket: req.socket }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  }), ms(5000), `${method} ${pathname}`);
}

test('GET / answers exactly "hello\\n" as text/plain', T, async () => {
  const [res] = parseAll(await rawRequest(srv.port, get('/', 'Connection: close\r\n')));
  assert.equal(res.version, '1.1');
  assert.equal(res.status, 200);
  assert.equal(res.reason, 'OK');
  assert.equal(res.headers['content-type'], 'text/plain');
  assert.equal(res.headers['content-length'], '6');
  assert.equal(res.headers.connection, 'close');
  assert.equal(res.body, 'hello\n');
});

test('keep-alive: an http.Agent with one socket reuses it for every request', T, async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set();
  agent.on('free', (s) => sockets.add(s));
  try {
    for (let i = 0; i < 10; i++) {
      const res = await httpGet(srv.port, `/echo?n=${i}`, { agent });
      assert.equal(res.status, 200);
      assert.equal(JSON.parse(res.body).query, `n=${i}`);
      assert.notEqual(res.headers.connection, 'close');
      sockets.add(res.socket);
    }
    assert.equal(sockets.size, 1, 'all 10 requests used one connection');
  } finally {
    agent.destroy();
  }
});

test('keep-alive: sequential requests on one raw socket are all answered and it stays open', T, async () => {
  const c = await openClient(srv.port);
  try {
    for (let i = 0; i < 20; i++) {
      c.send(get(`/status/${200 + (i % 3)}`));
      const [res] = await c.next(1);
      assert.equal(res.status, 200 + (i % 3));
      assert.equal(res.body, JSON.stringify({ status: 200 + (i % 3) }));
      assert.equal(res.headers.connection, undefined, 'no Connection header on a kept-alive 1.1 answer');
    }
    assert.equal(await c.waitClose(300), false, 'server keeps the connection open');
    assert.equal(c.pending(), '', 'no extra bytes');
  } finally {
    c.close();
  }
});

test('pipelining: 100 requests in one write get 100 answers in order', T, async () => {
  let reqs = '';
  for (let i = 0; i < 100; i++) {
    reqs += i % 2 ? get(`/status/${200 + (i % 50)}`) : get(`/echo?i=${i}`);
  }
  reqs += get('/', 'Connection: close\r\n');
  const { data, closed } = await rawExchange(srv.port, reqs, { timeout: ms(5000) });
  assert.equal(closed, true, 'server closes after the Connection: close request');
  const res = parseAll(data);
  assert.equal(res.length, 101);
  for (let i = 0; i < 100; i++) {
    if (i % 2) {
      const code = 200 + (i % 50);
      assert.equal(res[i].status, code, `response ${i}`);
      if (code !== 204 && code !== 205) assert.deepEqual(JSON.parse(res[i].body), { status: code }, `response ${i}`);
      else assert.equal(res[i].body, '');
    } else {
      assert.equal(res[i].status, 200, `response ${i}`);
      const j = JSON.parse(res[i].body);
      assert.equal(j.query, `i=${i}`, `response ${i} answers request ${i}`);
    }
  }
  assert.equal(res[100].body, 'hello\n');
});

test('pipelining: requests split into 7-byte writes are still answered in order', T, async () => {
  const reqs = get('/echo?a=1') + 'POST /echo?b=2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz' + get('/status/202', 'Connection: close\r\n');
  const pieces = [];
  for (let i = 0; i < reqs.length; i += 7) pieces.push(reqs.slice(i, i + 7));
  const { data, closed } = await rawExchange(srv.port, pieces, { gap: 1, timeout: ms(5000) });
  assert.equal(closed, true);
  const res = parseAll(data);
  assert.deepEqual(res.map((r) => r.status), [200, 200, 202]);
  assert.equal(JSON.parse(res[0].body).query, 'a=1');
  const b = JSON.parse(res[1].body);
  assert.equal(b.query, 'b=2');
  assert.equal(b.method, 'POST');
  assert.equal(b.body, 'xyz');
});

test('/echo reports method, path, query, lowercased headers and the body', T, async () => {
  const body = '{"hello":"world"}';
  const req = `PUT /echo?x=1&y=two HTTP/1.1\r\nHost: example.test\r\nX-Custom-Thing: Value  \r\n` +
    `X-Multi: a\r\nX-Multi: b\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`;
  const [res] = parseAll(await rawRequest(srv.port, req));
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-type'], 'application/json');
  const j = JSON.parse(res.body);
  assert.equal(j.method, 'PUT');
  assert.equal(j.path, '/echo');
  assert.equal(j.query, 'x=1&y=two');
  assert.equal(j.headers.host, 'example.test');
  assert.equal(j.headers['x-custom-thing'], 'Value', 'trailing whitespace is not part of the value');
  assert.equal(j.headers['x-multi'], 'a, b', 'repeated fields are combined');
  assert.equal(j.headers['content-length'], String(body.length));
  assert.equal(j.body, body);
  assert.equal(j.body_bytes, body.length);
  assert.equal(j.body_sha256, sha256(body));
  assert.equal(j.body_truncated, false);
});

test('/echo with no body: empty body and the sha256 of nothing', T, async () => {
  const [res] = parseAll(await rawRequest(srv.port, get('/echo', 'Connection: close\r\n')));
  const j = JSON.parse(res.body);
  assert.equal(j.method, 'GET');
  assert.equal(j.query, '');
  assert.equal(j.body, '');
  assert.equal(j.body_bytes, 0);
  assert.equal(j.body_sha256, sha256(''));
  assert.equal(j.body_truncated, false);
});

test('/headers returns the request headers as JSON', T, async () => {
  const [res] = parseAll(await rawRequest(srv.port, get('/headers', 'X-Trace: abc\r\nConnection: close\r\n')));
  assert.equal(res.status, 200);
  assert.deepEqual(JSON.parse(res.body), { headers: { host: 't', 'x-trace': 'abc', connection: 'close' } });
});

test('chunked request body: /echo counts and hashes the decoded bytes', T, async () => {
  // 200 KiB of printable bytes in uneven chunks, one with a chunk extension, plus a trailer.
  const total = 200 * 1024;
  const body = Buffer.alloc(total);
  for (let i = 0; i < total; i++) body[i] = 0x21 + ((i * 7) % 90);
  let wire = 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n';
  const parts = [];
  let off = 0;
  const sizes = [1, 10, 4096, 16384, 65536, 3];
  for (let k = 0; off < total; k++) {
    const n = Math.min(sizes[k % sizes.length], total - off);
    parts.push(n.toString(16) + (k === 2 ? ';ext=1' : '') + '\r\n' + body.subarray(off, off + n).toString('latin1') + '\r\n');
    off += n;
  }
  wire += parts.join('') + '0\r\nX-Trailer: t\r\n\r\n';
  const c = await openClient(srv.port);
  let res;
  try {
    c.send(wire);
    [res] = await c.next(1);
  } finally {
    c.close();
  }
  assert.equal(res.status, 200);
  const j = JSON.parse(res.body);
  assert.equal(j.body_bytes, total);
  assert.equal(j.body_sha256, sha256(body));
  assert.equal(j.body, body.toString('latin1'));
  assert.equal(j.body_truncated, false);
  assert.equal(j.headers['transfer-encoding'], 'chunked');
});

test('/echo returns a body of exactly 1 MiB inline (the default --max-body)', T, async () => {
  const body = Buffer.alloc(1024 * 1024, 'q');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const res = await httpGet(srv.port, '/echo', { method: 'POST', body, agent }).finally(() => agent.destroy());
  assert.equal(res.status, 200);
  const j = JSON.parse(res.body);
  assert.equal(j.body_bytes, body.length);
  assert.equal(j.body_sha256, sha256(body));
  assert.equal(j.body_truncated, false);
  assert.equal(j.body.length, body.length);
});

test('chunked response: /stream/5 is Transfer-Encoding: chunked with 5 JSON lines', T, async () => {
  const raw = await rawRequest(srv.port, get('/stream/5', 'Connection: close\r\n'));
  const [res] = parseAll(raw);
  assert.equal(res.status, 200);
  assert.equal(res.headers['transfer-encoding'], 'chunked');
  assert.equal(res.headers['content-length'], undefined);
  assert.equal(res.headers['content-type'], 'application/x-ndjson');
  assert.ok(raw.endsWith('0\r\n\r\n'), 'ends with the last-chunk');
  assert.equal(res.body, [0, 1, 2, 3, 4].map((i) => JSON.stringify({ id: i }) + '\n').join(''));
});

test('chunked response: HTTP/1.0 client gets /stream/3 delimited by close, not chunked', T, async () => {
  const { data, closed } = await rawExchange(srv.port, 'GET /stream/3 HTTP/1.0\r\n\r\n');
  assert.equal(closed, true);
  const [res] = parseAll(data);
  assert.equal(res.status, 200);
  assert.equal(res.headers['transfer-encoding'], undefined);
  assert.equal(res.body, '{"id":0}\n{"id":1}\n{"id":2}\n');
});

test('HEAD: headers with Content-Length and no body (next pipelined answer follows at once)', T, async () => {
  const wire = 'HEAD / HTTP/1.1\r\nHost: t\r\n\r\nHEAD /bytes/100 HTTP/1.1\r\nHost: t\r\n\r\n' + get('/status/201', 'Connection: close\r\n');
  const { data, closed } = await rawExchange(srv.port, wire);
  assert.equal(closed, true);
  const res = parseAll(data, { head: [true, true, false] });
  assert.equal(res.length, 3);
  assert.equal(res[0].status, 200);
  assert.equal(res[0].headers['content-length'], '6');
  assert.equal(res[0].body, '');
  assert.equal(res[1].status, 200);
  assert.equal(res[1].headers['content-length'], '100');
  // The bytes right after the HEAD answers' blank lines must be the next status line.
  const second = data.indexOf('\r\n\r\n') + 4;
  assert.ok(data.startsWith('HTTP/1.1 200 OK\r\n', second), 'no body after the first HEAD answer');
  const third = data.indexOf('\r\n\r\n', second) + 4;
  assert.ok(data.startsWith('HTTP/1.1 201 Created\r\n', third), 'no body after the second HEAD answer');
  assert.equal(res[2].body, '{"status":201}');
});

test('Date header is present and in RFC 7231 IMF-fixdate format, close to now', T, async () => {
  const [res] = parseAll(await rawRequest(srv.port, get('/', 'Connection: close\r\n')));
  const d = res.headers.date;
  assert.match(d, /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$/);
  const when = Date.parse(d);
  assert.ok(Math.abs(when - Date.now()) < 5000, `Date ${d} is within 5 s of now`);
  // Error answers carry a Date too.
  const [p] = parseAll(await rawRequest(srv.port, 'BROKEN\r\n\r\n'));
  assert.match(p.headers.date || '', / GMT$/);
});

test('Connection: close is honoured: answer carries it, server closes, later bytes ignored', T, async () => {
  const wire = get('/status/200', 'Connection: close\r\n') + get('/status/299');
  const { data, closed, elapsed } = await rawExchange(srv.port, wire, { timeout: ms(4000) });
  assert.equal(closed, true, 'server closed the connection');
  assert.ok(elapsed < ms(2000), `closed promptly (${elapsed} ms)`);
  const res = parseAll(data);
  assert.equal(res.length, 1, 'the request after Connection: close is not answered');
  assert.equal(res[0].status, 200);
  assert.equal(res[0].headers.connection, 'close');
});

test('HTTP/1.0 without keep-alive: answered, then closed', T, async () => {
  const { data, closed, elapsed } = await rawExchange(srv.port, 'GET /echo HTTP/1.0\r\n\r\n' + 'GET /status/299 HTTP/1.0\r\n\r\n');
  assert.equal(closed, true);
  assert.ok(elapsed < ms(2000), `closed promptly (${elapsed} ms)`);
  const res = parseAll(data);
  assert.equal(res.length, 1);
  assert.equal(res[0].status, 200);
  assert.equal(res[0].headers.connection, 'close');
  assert.equal(JSON.parse(res[0].body).method, 'GET');
});

test('HTTP/1.0 with Connection: keep-alive stays open and says so', T, async () => {
  const c = await openClient(srv.port);
  try {
    for (let i = 0; i < 3; i++) {
      c.send('GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
      const [res] = await c.next(1);
      assert.equal(res.status, 200);
      assert.equal(res.headers.connection.toLowerCase(), 'keep-alive');
      assert.equal(res.headers['content-length'], '6');
      assert.equal(res.body, 'hello\n');
    }
    assert.equal(await c.waitClose(300), false);
  } finally {
    c.close();
  }
});

test('client half-close after a request: the answer still arrives, then the server closes', T, async () => {
  const { data, closed } = await rawExchange(srv.port, get('/echo?half=1'), { endAfterWrite: true });
  assert.equal(closed, true);
  const [res] = parseAll(data);
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(res.body).query, 'half=1');
});

test('Expect: 100-continue: "HTTP/1.1 100 Continue" comes before the body is sent', T, async () => {
  const c = await openClient(srv.port);
  try {
    c.send('POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n');
    const [cont] = await c.next(1);
    assert.equal(cont.status, 100);
    assert.equal(cont.reason, 'Continue');
    await sleep(100);
    assert.equal(c.pending(), '', 'nothing but the 100 before the body is sent');
    c.send('hello world');
    const [res] = await c.next(1);
    assert.equal(res.status, 200);
    const j = JSON.parse(res.body);
    assert.equal(j.body, 'hello world');
    assert.equal(j.headers.expect, '100-continue');
    // The connection is still usable.
    c.send(get('/'));
    const [again] = await c.next(1);
    assert.equal(again.body, 'hello\n');
  } finally {
    c.close();
  }
});

test('Expect: 100-continue with a body over --max-body: 413 instead of 100, then close', T, async () => {
  const { data, closed } = await rawExchange(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n');
  assert.equal(closed, true);
  const res = parseAll(data);
  assert.equal(res.length, 1, 'no 100 Continue for a body that will be refused');
  assertProblem(res[0], 413, 'body-too-large');
});

test('/delay/300 answers after at least 300 ms', T, async () => {
  const t0 = Date.now();
  const [res] = parseAll(await rawRequest(srv.port, get('/delay/300', 'Connection: close\r\n')));
  const took = Date.now() - t0;
  assert.equal(res.status, 200);
  assert.deepEqual(JSON.parse(res.body), { delay_ms: 300 });
  assert.ok(took >= 295, `took ${took} ms`);
  assert.ok(took < ms(2000), `took ${took} ms`);
});

test('/delay requests on one connection do not block other connections', T, async () => {
  const slow = rawRequest(srv.port, get('/delay/700', 'Connection: close\r\n'));
  const t0 = Date.now();
  const [fast] = parseAll(await rawRequest(srv.port, get('/', 'Connection: close\r\n')));
  assert.equal(fast.body, 'hello\n');
  assert.ok(Date.now() - t0 < 600, 'a fast request is not held behind a slow one');
  const [s] = parseAll(await slow);
  assert.deepEqual(JSON.parse(s.body), { delay_ms: 700 });
});

test('/bytes/100000: Content-Length and the exact a..z pattern', T, async () => {
  const c = await openClient(srv.port);
  let res;
  try {
    c.send(get('/bytes/100000'));
    [res] = await c.next(1);
    assert.equal(c.pending(), '', 'nothing after the body');
  } finally {
    c.close();
  }
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-length'], '100000');
  assert.equal(res.headers['content-type'], 'application/octet-stream');
  assert.equal(res.body.length, 100000);
  let expected = '';
  for (let i = 0; i < 100000; i++) expected += String.fromCharCode(97 + (i % 26));
  assert.equal(res.body, expected);
});

test('/bytes/0 is an empty 200 with Content-Length: 0', T, async () => {
  const [res] = parseAll(await rawRequest(srv.port, get('/bytes/0', 'Connection: close\r\n')));
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-length'], '0');
  assert.equal(res.body, '');
});

test('/drop closes the connection without any response bytes', T, async () => {
  const { data, closed, elapsed } = await rawExchange(srv.port, get('/drop'));
  assert.equal(closed, true);
  assert.equal(data, '');
  assert.ok(elapsed < ms(2000));
});

test('/status/503 and /status/418 answer with that status', T, async () => {
  const wire = get('/status/503') + get('/status/418') + get('/status/599', 'Connection: close\r\n');
  const res = parseAll(await rawRequest(srv.port, wire));
  assert.deepEqual(res.map((r) => r.status), [503, 418, 599]);
  assert.equal(res[0].reason, 'Service Unavailable');
  assert.equal(res[0].body, '{"status":503}');
  assert.equal(res[1].body, '{"status":418}');
});

test('/status with a bad code is a 400 bad-status problem', T, async () => {
  for (const code of ['99', '600', 'abc', '1000000000000000']) {
    const [res] = parseAll(await rawRequest(srv.port, get(`/status/${code}`, 'Connection: close\r\n')));
    assertProblem(res, 400, 'bad-status');
  }
});

test('/status/204 and /status/304 carry no body, and the connection stays in sync', T, async () => {
  const wire = get('/status/204') + get('/status/304') + get('/', 'Connection: close\r\n');
  const data = await rawRequest(srv.port, wire);
  const res = parseAll(data);
  assert.deepEqual(res.map((r) => r.status), [204, 304, 200]);
  assert.equal(res[0].headers['content-length'], undefined, '204 has no Content-Length');
  assert.equal(res[2].body, 'hello\n');
});

test('/status/205 (Reset Content) carries no content (RFC 9110 §15.3.6)', { ...T }, async () => {
  const wire = get('/status/205') + get('/', 'Connection: close\r\n');
  const res = parseAll(await rawRequest(srv.port, wire));
  assert.deepEqual(res.map((r) => r.status), [205, 200]);
  assert.ok(['0', undefined].includes(res[0].headers['content-length']), `205 Content-Length is ${res[0].headers['content-length']}`);
  assert.equal(res[0].body, '');
  assert.equal(res[1].body, 'hello\n');
});

test('unknown path: 404 problem+json with slug not-found', T, async () => {
  const [res] = parseAll(await rawRequest(srv.port, get('/no/such/thing', 'Connection: close\r\n')));
  const p = assertProblem(res, 404, 'not-found');
  assert.equal(p.title, 'Not Found');
  assert.match(p.detail, /\/echo/);
});

test('health endpoints answer 200 application/health+json {"status":"pass"}', T, async () => {
  for (const p of ['/health/live', '/health/ready']) {
    const res = await httpGet(srv.port, p, { agent: false });
    assert.equal(res.status, 200, p);
    assert.equal(res.headers['content-type'], 'application/health+json');
    assert.deepEqual(JSON.parse(res.body), { status: 'pass' });
  }
});

test('/metrics is Prometheus text and counts requests by endpoint', T, async () => {
  const scrape = async () => {
    const res = await httpGet(srv.port, '/metrics', { agent: false });
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/);
    return res.body.toString();
  };
  const count = (text, ep) => {
    const m = new RegExp(`^trellis_echo_requests_total\\{endpoint="${ep}"\\} (\\d+)$`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  };
  const before = await scrape();
  assert.match(before, /^# TYPE trellis_echo_requests_total counter$/m);
  assert.match(before, /^# HELP trellis_echo_requests_total /m);
  assert.match(before, /^process_resident_memory_bytes \d+$/m);
  assert.match(before, /^process_open_fds \d+$/m);
  const wire = get('/headers') + get('/headers') + get('/headers', 'Connection: close\r\n');
  assert.equal(parseAll(await rawRequest(srv.port, wire)).length, 3);
  const afterText = await scrape();
  assert.equal(count(afterText, 'headers') - count(before, 'headers'), 3);
  assert.ok(count(afterText, 'metrics') >= 1, 'the first scrape was counted');
});

test('each request on a keep-alive connection is independent of the previous one\'s body', T, async () => {
  // A POST whose body the handler reads, followed by requests that must parse cleanly.
  const c = await openClient(srv.port);
  try {
    c.send('POST /status/201 HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789');
    const [a] = await c.next(1);
    assert.equal(a.status, 201);
    c.send('POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nGET /');
    const [b] = await c.next(1);
    assert.equal(b.body, 'hello\n');
    c.send(get('/echo?z=1'));
    const [d] = await c.next(1);
    assert.equal(JSON.parse(d.body).query, 'z=1');
    assert.equal(await c.waitClose(200), false);
    assert.equal(parseResponses(c.pending()).responses.length, 0);
  } finally {
    c.close();
  }
});

// Bodies and answers larger than one socket read / the output high-water mark, on
// connections that close after the answer (Connection: close, HTTP/1.0).

test('Connection: close with the body in a later packet: the body is read and answered', { ...T }, async () => {
  const head = 'POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\n';
  const { data, closed } = await rawExchange(srv.port, [head, 'hello'], { gap: 100, timeout: ms(3000) });
  assert.equal(closed, true, 'closed after the answer');
  const res = parseAll(data);
  assert.equal(res.length, 1, 'answered');
  assert.equal(JSON.parse(res[0].body).body, 'hello');
});

test('HTTP/1.0 POST with the body in a later packet is read and answered', { ...T }, async () => {
  const head = 'POST /echo HTTP/1.0\r\nContent-Length: 5\r\n\r\n';
  const { data, closed } = await rawExchange(srv.port, [head, 'hello'], { gap: 100, timeout: ms(3000) });
  assert.equal(closed, true);
  const res = parseAll(data);
  assert.equal(res.length, 1, 'answered');
  assert.equal(JSON.parse(res[0].body).body, 'hello');
});

test('Connection: close with a 200 KiB chunked body (larger than one read) is answered', { ...T }, async () => {
  const body = 'z'.repeat(200 * 1024);
  const wire = 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n' +
    body.length.toString(16) + '\r\n' + body + '\r\n0\r\n\r\n';
  const { data, closed } = await rawExchange(srv.port, wire, { timeout: ms(3000) });
  assert.equal(closed, true);
  const res = parseAll(data);
  assert.equal(res.length, 1, 'answered');
  assert.equal(JSON.parse(res[0].body).body_bytes, body.length);
});

test('node http.request with agent:false (Connection: close) POSTing 1 MiB gets its answer', { ...T }, async () => {
  const body = Buffer.alloc(1024 * 1024, 'k');
  const res = await httpGet(srv.port, '/echo', { method: 'POST', body, agent: false });
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(res.body).body_bytes, body.length);
});

test('/bytes/100000 with Connection: close: the body, then the server closes', T, async () => {
  const { data, closed, elapsed } = await rawExchange(srv.port, get('/bytes/100000', 'Connection: close\r\n'), { timeout: ms(3000) });
  assert.equal(closed, true, `server closed after the body (waited ${elapsed} ms)`);
  const [res] = parseAll(data);
  assert.equal(res.body.length, 100000);
});

test('/bytes/200000 over HTTP/1.0: the body, then the server closes', T, async () => {
  const { data, closed } = await rawExchange(srv.port, 'GET /bytes/200000 HTTP/1.0\r\n\r\n', { timeout: ms(3000) });
  assert.equal(closed, true, 'server closed after the body');
  const [res] = parseAll(data);
  assert.equal(res.body.length, 200000);
});
