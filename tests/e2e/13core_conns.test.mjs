// Many idle keep-alive connections: the server keeps every one open and each costs
// little memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { startEcho, rssBytes, ms, sleep, withDeadline, SANITIZED } from './lib/trellis.mjs';

const N = SANITIZED ? 2000 : 10000;
const BATCH = 500;

/** This process's soft RLIMIT_NOFILE (inherited by the server it spawns). */
function openFileLimit() {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  if (!m) return 0;
  return m[1] === 'unlimited' ? Infinity : Number(m[1]);
}

/** Each connection needs one fd in this process and one in the server. */
const NEED = N + 500;
const limit = openFileLimit();
const skip = limit < NEED
  ? `needs ${NEED} open files per process, RLIMIT_NOFILE is ${limit}: run under 'ulimit -n $(ulimit -Hn)' (make test-e2e does)`
  : false;

/** Opens one connection, sends GET /, resolves with the socket once "hello\n" arrived. */
function openServed(port, state) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    state.all?.push(s);
    let buf = '';
    let served = false;
    s.setNoDelay(true);
    s.on('connect', () => s.write('GET / HTTP/1.1\r\nHost: t\r\n\r\n'));
    s.on('data', (d) => {
      buf += d.toString('latin1');
      if (!served && buf.endsWith('\r\n\r\nhello\n')) {
        served = true;
        assert.match(buf, /^HTTP\/1\.1 200 OK\r\n/);
        buf = '';
        s.removeAllListeners('data');
        s.on('data', (x) => { s.got = (s.got || '') + x.toString('latin1'); });
        resolve(s);
      }
    });
    s.on('error', (e) => { if (!served) reject(e); else state.errors++; });
    s.on('close', () => { if (served) state.closed++; else reject(new Error('closed before the answer')); });
  });
}

test(`${N} concurrent idle keep-alive connections stay open and cost little memory`, { skip, timeout: ms(120000) }, async (t) => {
  const srv = await startEcho(['--workers', '2', '--idle-timeout', '300s', '--header-timeout', '60s']);
  const socks = [];
  const state = { closed: 0, errors: 0, all: [] };
  try {
    // Warm up both workers' pools and the allocator with a few connections first.
    const warm = await Promise.all(Array.from({ length: 20 }, () => openServed(srv.port, { closed: 0, errors: 0 })));
    for (const s of warm) s.destroy();
    await sleep(300);
    const rss0 = rssBytes(srv.pid);

    const t0 = Date.now();
    for (let i = 0; i < N; i += BATCH) {
      const batch = Array.from({ length: Math.min(BATCH, N - i) }, () => openServed(srv.port, state));
      socks.push(...await withDeadline(Promise.all(batch), ms(20000), `connections ${i}..${i + BATCH}`));
    }
    const openMs = Date.now() - t0;
    await sleep(500);
    const rss1 = rssBytes(srv.pid);
    assert.equal(socks.length, N);
    assert.equal(state.closed, 0, 'the server closed none of them');
    assert.equal(state.errors, 0);

    // The server still holds every one: a sample of 100 spread over all of them answer again.
    const sample = Array.from({ length: 100 }, (_, k) => socks[Math.floor((k * N) / 100) + (k % 7)]);
    for (const s of sample) { s.got = ''; s.write('GET /status/203 HTTP/1.1\r\nHost: t\r\n\r\n'); }
    await withDeadline((async () => {
      while (!sample.every((s) => /\r\n\r\n\{"status":203\}$/.test(s.got))) await sleep(20);
    })(), ms(10000), 'answers on the sampled connections');
    for (const s of sample) assert.match(s.got, /^HTTP\/1\.1 203 /);
    await sleep(200);
    assert.equal(state.closed, 0, 'still none closed');

    const per = (rss1 - rss0) / N;
    t.diagnostic(`opened ${N} connections in ${openMs} ms; server RSS ${(rss0 / 1048576).toFixed(1)} MiB -> ` +
      `${(rss1 / 1048576).toFixed(1)} MiB: ${Math.round(per)} bytes per connection`);
    if (!SANITIZED) assert.ok(per < 8192, `${Math.round(per)} bytes of RSS per idle connection (limit 8 KiB)`);
  } finally {
    for (const s of state.all) s.destroy();
    if (state.all.length) await sleep(300);
    await srv.stop();
  }
});
