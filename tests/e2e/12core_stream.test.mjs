// Streaming: request and response bodies far larger than memory budgets pass through
// `trellis echo` with flat server RSS, and every byte arrives intact and in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  startEcho, connect, parseResponses, sampleRss, rssBytes, ms, sleep, withDeadline, SANITIZED,
} from './lib/trellis.mjs';

const MiB = 1024 * 1024;

test('upload: a 1 GiB body streamed to /echo is counted and hashed, server RSS stays flat', { timeout: ms(120000) }, async (t) => {
  const total = SANITIZED ? 256 * MiB : 1024 * MiB;
  const srv = await startEcho(['--workers', '2', '--max-body', '2GiB', '--body-timeout', '30s']);
  let sock;
  let sampler;
  try {
    sock = await connect(srv.port);
    let reply = '';
    let closed = false;
    sock.on('data', (d) => { reply += d.toString('latin1'); });
    const closedP = new Promise((r) => sock.on('close', () => { closed = true; r(); }));
    sock.on('error', () => {});
    await sleep(100);
    const rss0 = rssBytes(srv.pid);
    sampler = sampleRss(srv.pid, 200);

    // Seven distinct 64 KiB blocks, each copy stamped with its sequence number, so a
    // lost, repeated or reordered block changes the hash.
    const CHUNK = 64 * 1024;
    const blocks = Array.from({ length: 7 }, () => randomBytes(CHUNK));
    const hash = createHash('sha256');
    sock.write(`POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: ${total}\r\nContent-Type: application/octet-stream\r\n\r\n`);
    const t0 = Date.now();
    const send = async () => {
      const n = total / CHUNK;
      for (let i = 0; i < n; i++) {
        const b = Buffer.from(blocks[i % 7]);
        b.writeUInt32BE(i, 0);
        hash.update(b);
        if (!sock.write(b)) {
          await withDeadline(new Promise((r) => { sock.once('drain', r); closedP.then(r); }), ms(30000), `drain at chunk ${i}`);
        }
        if (closed) throw new Error(`server closed the connection after ${i} chunks: ${reply.slice(0, 300)}`);
      }
    };
    await send();
    const expected = hash.digest('hex');
    const res = await withDeadline((async () => {
      for (;;) {
        const { responses } = parseResponses(reply);
        if (responses.length) return responses[0];
        if (closed) throw new Error(`closed without an answer: ${reply.slice(0, 300)}`);
        await sleep(20);
      }
    })(), ms(30000), 'answer to the upload');
    const secs = (Date.now() - t0) / 1000;
    const { max, samples } = sampler.stop();
    sock.destroy();
    await closedP;

    assert.equal(res.status, 200, res.body.slice(0, 300));
    const j = JSON.parse(res.body);
    assert.equal(j.body_bytes, total);
    assert.equal(j.body_sha256, expected);
    assert.equal(j.body_truncated, true);
    assert.equal(j.body, null);
    const growth = max - rss0;
    t.diagnostic(`uploaded ${total / MiB} MiB in ${secs.toFixed(1)} s (${(total / MiB / secs).toFixed(0)} MiB/s); ` +
      `server RSS ${(rss0 / MiB).toFixed(1)} MiB before, max ${(max / MiB).toFixed(1)} MiB over ${samples} samples: growth ${(growth / MiB).toFixed(2)} MiB`);
    assert.ok(samples >= 3, `RSS sampled while streaming (${samples} samples)`);
    assert.ok(growth < 64 * MiB, `server RSS grew by ${(growth / MiB).toFixed(1)} MiB (limit 64 MiB)`);
  } finally {
    sampler?.stop();
    sock?.destroy();
    await srv.stop();
  }
});

test('download: /bytes/104857600 to a slow reader keeps server RSS flat and every byte right', { timeout: ms(90000) }, async (t) => {
  const total = 100 * MiB;
  const srv = await startEcho(['--workers', '2']);
  let sock;
  let sampler;
  try {
    sock = await connect(srv.port);
    sock.on('error', () => {});
    await sleep(100);
    const rss0 = rssBytes(srv.pid);
    sampler = sampleRss(srv.pid, 200);

    let head = '';
    let headDone = false;
    let got = 0;
    let bad = -1;
    let closed = false;
    const closedP = new Promise((r) => sock.on('close', () => { closed = true; r(); }));
    const check = (buf, offset) => {
      for (let i = 0; i < buf.length; i++) {
        if (buf[i] !== 97 + ((offset + i) % 26)) { bad = offset + i; return; }
      }
    };
    const done = new Promise((resolve, reject) => {
      sock.on('data', (d) => {
        if (!headDone) {
          head += d.toString('latin1');
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) return;
          headDone = true;
          d = Buffer.from(head.slice(end + 4), 'latin1');
          head = head.slice(0, end);
        }
        if (bad < 0) check(d, got);
        got += d.length;
        if (got >= total) resolve();
      });
      sock.on('close', () => reject(new Error(`closed after ${got} body bytes`)));
    });
    done.catch(() => {}); // observed below; a close while paused must not be an unhandled rejection
    sock.write('GET /bytes/104857600 HTTP/1.1\r\nHost: t\r\n\r\n');
    // Read a little, then stop reading for 1.5 s: the server must hold back, not buffer.
    await withDeadline((async () => { while (got < MiB && !closed) await sleep(5); })(), ms(5000), 'first MiB');
    if (closed) await done;
    sock.pause();
    await sleep(1500);
    const pausedAt = got;
    const rssPaused = rssBytes(srv.pid);
    sock.resume();
    await withDeadline(done, ms(60000), 'the whole body');
    const { max, samples } = sampler.stop();
    await sleep(50);
    assert.equal(closed, false, 'keep-alive connection stays open after the body');
    sock.destroy();
    await closedP;

    assert.match(head, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(head, /\r\nContent-Length: 104857600(\r\n|$)/);
    assert.equal(got, total, 'exactly Content-Length bytes');
    assert.equal(bad, -1, `byte ${bad} breaks the a..z pattern`);
    assert.ok(pausedAt < 32 * MiB, `the server did not push the whole body while the reader paused (${pausedAt} bytes read)`);
    const growth = max - rss0;
    t.diagnostic(`server RSS ${(rss0 / MiB).toFixed(1)} MiB before, ${(rssPaused / MiB).toFixed(1)} MiB while paused, ` +
      `max ${(max / MiB).toFixed(1)} MiB over ${samples} samples: growth ${(growth / MiB).toFixed(2)} MiB`);
    assert.ok(growth < 32 * MiB, `server RSS grew by ${(growth / MiB).toFixed(1)} MiB (limit 32 MiB)`);
  } finally {
    sampler?.stop();
    sock?.destroy();
    await srv.stop();
  }
});
