// Limits, malformed input, request smuggling and deadlines: each bad request gets a
// problem+json answer, the connection closes, and nothing after the bad bytes is served.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startEcho, rawExchange, parseAll, assertProblem, openClient, get, ms, sleep,
} from './lib/trellis.mjs';

const T = { timeout: ms(20000) };
let srv; // defaults
let tight; // --max-body 1KiB and 1 s deadlines

before(async () => {
  srv = await startEcho(['--workers', '2']);
  tight = await startEcho(['--workers', '1', '--max-body', '1KiB', '--header-timeout', '1s',
    '--idle-timeout', '1s', '--body-timeout', '1s']);
});
after(async () => {
  await Promise.all([srv?.stop(), tight?.stop()]);
});

/** Slugs accepted for a header line whose name is not a token. */
const BAD_NAME = ['invalid-header-name', 'malformed-request'];

/** A request that must never be answered: its answer would prove smuggled bytes ran. */
const CANARY = 'GET /status/299 HTTP/1.1\r\nHost: t\r\n\r\n';

/**
 * Sends bytes (+ the canary), expects exactly one problem answer with status/slug,
 * the connection closed promptly, and no answer to the canary.
 */
async function expectRejected(server, bytes, status, slug, { canary = true } = {}) {
  const { data, closed, elapsed } = await rawExchange(server.port, bytes + (canary ? CANARY : ''), { timeout: ms(4000) });
  assert.equal(closed, true, `connection closed after the ${status} (got ${JSON.stringify(data.slice(0, 200))})`);
  assert.ok(elapsed < ms(3000), `closed within ${elapsed} ms`);
  assert.ok(!data.includes('HTTP/1.1 299'), 'the bytes after the bad request were not served');
  const res = parseAll(data);
  assert.equal(res.length, 1, `exactly one answer, got ${res.map((r) => r.status)}`);
  assert.equal(res[0].headers.connection, 'close');
  return assertProblem(res[0], status, slug);
}

// ---- size limits

test('431 header-too-large for headers over 16 KiB', T, async () => {
  const big = 'X-Big: ' + 'a'.repeat(17 * 1024) + '\r\n';
  await expectRejected(srv, `GET / HTTP/1.1\r\nHost: t\r\n${big}\r\n`, 431, 'header-too-large');
});

test('431 header-too-large when many moderate headers add up past 16 KiB', T, async () => {
  let h = '';
  for (let i = 0; i < 40; i++) h += `X-H${i}: ${'v'.repeat(500)}\r\n`;
  await expectRejected(srv, `GET / HTTP/1.1\r\nHost: t\r\n${h}\r\n`, 431, 'header-too-large');
});

test('headers just under 16 KiB are accepted', T, async () => {
  const value = 'a'.repeat(15 * 1024);
  const { data } = await rawExchange(srv.port, get('/headers', `X-Big: ${value}\r\nConnection: close\r\n`));
  const [res] = parseAll(data);
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(res.body).headers['x-big'], value);
});

test('431 too-many-headers for 101 header fields; 100 are accepted', T, async () => {
  let h = '';
  for (let i = 0; i < 99; i++) h += `X-N${i}: ${i}\r\n`;
  // Host + 99 = 100 fields: fine.
  const { data } = await rawExchange(srv.port, `GET /headers HTTP/1.1\r\nHost: t\r\n${h}\r\n` + get('/', 'Connection: close\r\n'));
  const res = parseAll(data);
  assert.equal(res[0].status, 200);
  assert.equal(Object.keys(JSON.parse(res[0].body).headers).length, 100);
  assert.equal(res[1].body, 'hello\n');
  // Host + 100 = 101 fields: refused.
  await expectRejected(srv, `GET / HTTP/1.1\r\nHost: t\r\n${h}X-N99: 99\r\n\r\n`, 431, 'too-many-headers');
});

test('414 uri-too-long for a 9 KiB request target; 8000 bytes are accepted', T, async () => {
  await expectRejected(srv, `GET /echo?q=${'x'.repeat(9 * 1024)} HTTP/1.1\r\nHost: t\r\n\r\n`, 414, 'uri-too-long');
  const q = 'y'.repeat(8000);
  const { data } = await rawExchange(srv.port, get(`/echo?${q}`, 'Connection: close\r\n'));
  const [res] = parseAll(data);
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(res.body).query, q);
});

test('413 body-too-large for Content-Length above --max-body 1KiB; exactly 1 KiB is fine', T, async () => {
  const ok = 'b'.repeat(1024);
  const c = await openClient(tight.port);
  try {
    c.send(`POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n${ok}`);
    const [res] = await c.next(1);
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.body).body_bytes, 1024);
  } finally {
    c.close();
  }
  // The body is not sent: the answer must come from the header alone.
  await expectRejected(tight, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n', 413, 'body-too-large');
});

test('413 body-too-large for a chunked body that grows past --max-body', T, async () => {
  const chunk = 'c'.repeat(600);
  const wire = 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n' +
    `258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`;
  await expectRejected(tight, wire, 413, 'body-too-large');
  // A chunked body within the limit passes on the same server.
  const { data } = await rawExchange(tight.port, 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n' +
    `258\r\n${chunk}\r\n0\r\n\r\n`);
  const [res] = parseAll(data);
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(res.body).body_bytes, 600);
});

// ---- malformed input

test('400 malformed-request for a garbage request line', T, async () => {
  await expectRejected(srv, 'HELLO THERE\r\n\r\n', 400, 'malformed-request');
  await expectRejected(srv, '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', 400, 'malformed-request', { canary: false });
  await expectRejected(srv, 'GET / FOO/1.1\r\nHost: t\r\n\r\n', 400, 'malformed-request');
});

test('400 malformed-request for a bad chunk size, and the rest is not served', T, async () => {
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n', 400, 'malformed-request');
});

test('400 for a non-numeric or negative Content-Length', T, async () => {
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello', 400, 'malformed-request');
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n', 400, 'malformed-request');
});

// ---- request smuggling: ambiguous framing is refused, never guessed

test('smuggling: Content-Length with Transfer-Encoding is refused with 400 and a close', T, async () => {
  const slugs = ['content-length-with-transfer-encoding', 'malformed-request'];
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400, slugs);
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 44\r\n\r\n0\r\n\r\n', 400, slugs);
});

test('smuggling: two different Content-Length values are refused with 400 and a close', T, async () => {
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n',
    400, ['conflicting-content-length', 'malformed-request']);
});

test('smuggling: Content-Length with Transfer-Encoding has the documented slug', { ...T }, async () => {
  // Framed by CL this is 5 bytes "0\r\n\r\n"; framed by TE the canary would be a second request.
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    400, 'content-length-with-transfer-encoding');
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 44\r\n\r\n0\r\n\r\n',
    400, 'content-length-with-transfer-encoding');
});

test('smuggling: two different Content-Length values have the documented slug', { ...T }, async () => {
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n',
    400, 'conflicting-content-length');
});

test('smuggling: invalid header-name bytes are refused', T, async () => {
  for (const line of ['Bad Header: x', 'X\x01Y: z', 'X-A : b', 'X-A\t: b', '(X): b', ': novalue']) {
    await expectRejected(srv, `GET /echo HTTP/1.1\r\nHost: t\r\n${line}\r\n\r\n`, 400, BAD_NAME);
  }
});

test('smuggling: a space before the colon cannot hide Transfer-Encoding', T, async () => {
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n',
    400, BAD_NAME);
});

test('smuggling: obs-fold header continuation lines are refused', T, async () => {
  await expectRejected(srv, 'GET /echo HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n', 400, 'obs-fold');
  await expectRejected(srv, 'GET /echo HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\tc\r\n\r\n', 400, 'obs-fold');
  await expectRejected(srv, 'GET /echo HTTP/1.1\r\nHost: t\r\n\tX-A: b\r\n\r\n', 400, 'obs-fold');
  // A fold that would extend Transfer-Encoding.
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    400, 'obs-fold');
});

test('smuggling: obs-fold split across two TCP segments is still refused', T, async () => {
  const { data, closed } = await rawExchange(srv.port, ['GET /echo HTTP/1.1\r\nHost: t\r\nX-A: b\r\n', ' c\r\n\r\n' + CANARY], { gap: 50, timeout: ms(3000) });
  assert.equal(closed, true);
  const res = parseAll(data);
  assert.equal(res.length, 1);
  assertProblem(res[0], 400, 'obs-fold');
});

test('smuggling: Transfer-Encoding other than plain "chunked" is refused (501)', T, async () => {
  for (const te of ['gzip', 'chunked, chunked', 'xchunked', 'gzip, chunked', 'chunked;q=1', 'identity']) {
    await expectRejected(srv, `POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: ${te}\r\n\r\n0\r\n\r\n`,
      501, 'unsupported-transfer-encoding');
  }
});

test('smuggling: two Transfer-Encoding: chunked headers are refused', T, async () => {
  await expectRejected(srv, 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    501, 'unsupported-transfer-encoding');
});

test('HTTP/1.1 without Host is refused (missing-host); HTTP/1.0 without Host is fine', T, async () => {
  await expectRejected(srv, 'GET /echo HTTP/1.1\r\n\r\n', 400, 'missing-host');
  const { data } = await rawExchange(srv.port, 'GET / HTTP/1.0\r\n\r\n');
  assert.equal(parseAll(data)[0].body, 'hello\n');
});

test('two Host headers are refused (duplicate-host)', T, async () => {
  await expectRejected(srv, 'GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400, 'duplicate-host');
});

test('CR or LF inside a header value is refused', T, async () => {
  const { data, closed } = await rawExchange(srv.port, 'GET /echo HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n' + CANARY);
  assert.equal(closed, true);
  const res = parseAll(data);
  assert.equal(res.length, 1);
  assert.equal(res[0].status, 400);
});

test('a bad request after good pipelined ones: the good ones are answered first', T, async () => {
  const wire = get('/status/201') + get('/status/202') + 'GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n' + CANARY;
  const { data, closed } = await rawExchange(srv.port, wire);
  assert.equal(closed, true);
  const res = parseAll(data);
  assert.deepEqual(res.map((r) => r.status), [201, 202, 400]);
  assertProblem(res[2], 400, 'duplicate-host');
});

// ---- deadlines

test('slowloris: headers trickled a byte every 300 ms get 408 and a close after --header-timeout 1s', T, async (t) => {
  const start = 'GET / HT';
  const drip = 'TP/1.1\r\nHost: t\r\nX-Slow: ' + 'a'.repeat(40);
  const pieces = [start, ...drip.split('')];
  const { data, closed, elapsed } = await rawExchange(tight.port, pieces, { gap: 300, timeout: ms(6000) });
  t.diagnostic(`closed after ${elapsed} ms`);
  assert.equal(closed, true);
  assert.ok(elapsed >= 900, `not before the timeout (${elapsed} ms)`);
  assert.ok(elapsed < ms(3000), `within ~1-3 s (${elapsed} ms)`);
  const res = parseAll(data);
  assert.equal(res.length, 1);
  assertProblem(res[0], 408, 'request-timeout');
});

test('a connection that sends nothing is closed after --header-timeout without a response', T, async (t) => {
  const { data, closed, elapsed } = await rawExchange(tight.port, [], { timeout: ms(6000) });
  t.diagnostic(`closed after ${elapsed} ms`);
  assert.equal(closed, true);
  assert.equal(data, '');
  assert.ok(elapsed >= 900 && elapsed < ms(3000), `closed after ${elapsed} ms`);
});

test('an idle keep-alive connection is closed after --idle-timeout 1s, without bytes', T, async (t) => {
  const c = await openClient(tight.port);
  try {
    c.send(get('/'));
    const [res] = await c.next(1);
    assert.equal(res.body, 'hello\n');
    const t0 = Date.now();
    const closed = await c.waitClose(ms(4000));
    const elapsed = Date.now() - t0;
    t.diagnostic(`closed ${elapsed} ms after the answer`);
    assert.equal(closed, true);
    assert.ok(elapsed >= 800 && elapsed < ms(3000), `closed after ${elapsed} ms`);
    assert.equal(c.pending(), '', 'no bytes on an idle close');
  } finally {
    c.close();
  }
});

test('activity keeps a keep-alive connection open past --idle-timeout', T, async () => {
  const c = await openClient(tight.port);
  try {
    for (let i = 0; i < 5; i++) {
      c.send(get(`/status/${200 + i}`));
      const [res] = await c.next(1);
      assert.equal(res.status, 200 + i);
      await sleep(500);
    }
    assert.equal(c.closed, false, 'open after 2.5 s of requests every 0.5 s');
  } finally {
    c.close();
  }
});

test('a stalled request body gets 408 after --body-timeout 1s', T, async (t) => {
  const { data, closed, elapsed } = await rawExchange(tight.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc', { timeout: ms(6000) });
  t.diagnostic(`closed after ${elapsed} ms`);
  assert.equal(closed, true);
  assert.ok(elapsed >= 900 && elapsed < ms(3000), `closed after ${elapsed} ms`);
  const res = parseAll(data);
  assert.equal(res.length, 1);
  assertProblem(res[0], 408, 'request-timeout');
});

test('a request body that never starts gets 408 after --body-timeout 1s', T, async (t) => {
  const { data, closed, elapsed } = await rawExchange(tight.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n', { timeout: ms(6000) });
  t.diagnostic(`closed after ${elapsed} ms`);
  assert.equal(closed, true, 'closed (no body byte ever arrives)');
  assert.ok(elapsed < ms(3000), `closed after ${elapsed} ms`);
  const res = parseAll(data);
  assert.equal(res.length, 1);
  assertProblem(res[0], 408, 'request-timeout');
});
