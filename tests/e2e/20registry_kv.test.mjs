// `trellis registry` KV API over the wire, checked against Consul's documented behaviour:
// https://developer.hashicorp.com/consul/api-docs/kv and .../api-docs/features/blocking
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { startRegistry, call, assertProblemJson, ms, sleep, withDeadline, BIN } from './lib/registry.mjs';

const b64 = (s) => Buffer.from(s).toString('base64');
const PENDING = Symbol('pending');
/** Resolves PENDING if p has not settled within n ms, else p's value. */
const settledWithin = (p, n) => Promise.race([p, sleep(n).then(() => PENDING)]);

describe('registry KV', () => {
  let reg;
  before(async () => { reg = await startRegistry(); });
  after(async () => {
    if (!reg) return;
    try { await reg.stop(); } finally { await reg.cleanup(); }
  });

  const put = (key, body, q = '') => call(reg, 'PUT', `/v1/kv/${key}${q}`, { body });
  const get = (key, q = '', opts) => call(reg, 'GET', `/v1/kv/${key}${q}`, opts);
  const del = (key, q = '') => call(reg, 'DELETE', `/v1/kv/${key}${q}`);
  /** PUT that must answer 200 true. */
  const putOk = async (key, body, q = '') => {
    const r = await put(key, body, q);
    assert.equal(r.status, 200, `PUT ${key}${q}: ${r.text}`);
    assert.equal(r.json, true, `PUT ${key}${q} body: ${r.text}`);
    return r;
  };

  test('PUT answers 200 application/json true', async () => {
    const r = await put('put/a', 'hello');
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^application\/json/);
    assert.equal(r.text.trim(), 'true');
  });

  test('GET returns the Consul entry shape with a base64 Value', async () => {
    await putOk('shape/key', 'hello world');
    const r = await get('shape/key');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type'), /^application\/json/);
    assert.ok(Array.isArray(r.json), `body is an array: ${r.text}`);
    assert.equal(r.json.length, 1);
    const e = r.json[0];
    assert.deepEqual(Object.keys(e).sort(), ['CreateIndex', 'Flags', 'Key', 'LockIndex', 'ModifyIndex', 'Value']);
    assert.equal(e.Key, 'shape/key');
    assert.equal(e.Value, b64('hello world'));
    assert.equal(e.Flags, 0);
    assert.equal(e.LockIndex, 0);
    assert.ok(Number.isInteger(e.CreateIndex) && e.CreateIndex > 0, `CreateIndex ${e.CreateIndex}`);
    assert.equal(e.ModifyIndex, e.CreateIndex, 'a new key has ModifyIndex == CreateIndex');
    assert.ok(r.index >= e.ModifyIndex, `X-Consul-Index ${r.index} >= ModifyIndex ${e.ModifyIndex}`);
    assert.equal(r.headers.get('x-consul-knownleader'), 'true');
    assert.equal(r.headers.get('x-consul-lastcontact'), '0');
  });

  test('binary values round-trip through base64 and ?raw', async () => {
    const bytes = Buffer.from([0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0x0d, 0x0a, 0x22, 0x5c]);
    await putOk('bin/k', bytes);
    const r = await get('bin/k');
    assert.equal(r.json[0].Value, bytes.toString('base64'));
    const raw = await get('bin/k', '?raw');
    assert.equal(raw.status, 200);
    assert.deepEqual(raw.body, bytes, 'raw body is exactly the stored bytes');
    const raw2 = await get('bin/k', '?raw=true');
    assert.deepEqual(raw2.body, bytes);
  });

  test('an empty value reads back as Value null', async () => {
    await putOk('empty/k', '');
    const r = await get('empty/k');
    assert.equal(r.status, 200);
    assert.equal(r.json[0].Value, null);
    const raw = await get('empty/k', '?raw');
    assert.equal(raw.status, 200);
    assert.equal(raw.body.length, 0);
  });

  test('?flags is stored and returned; a later PUT without flags resets it to 0', async () => {
    await putOk('flags/k', 'x', '?flags=42');
    assert.equal((await get('flags/k')).json[0].Flags, 42);
    await putOk('flags/k', 'y', '?flags=18446744073709551615');
    // JSON numbers beyond 2^53 lose precision in JS; check the raw text instead.
    assert.match((await get('flags/k')).text, /"Flags":\s*18446744073709551615\b/);
    await putOk('flags/k', 'z');
    assert.equal((await get('flags/k')).json[0].Flags, 0);
  });

  test('keys with escaped characters are decoded', async () => {
    await putOk('esc/sp%20ace', 'v');
    const r = await get('esc/?recurse');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.map((e) => e.Key), ['esc/sp ace']);
    assert.equal((await get('esc/sp%20ace')).json[0].Key, 'esc/sp ace');
  });

  test('a missing key is 404 with X-Consul-Index', async () => {
    const r = await get('missing/nothing-here');
    assert.equal(r.status, 404);
    assert.ok(Number.isInteger(r.index) && r.index > 0, `X-Consul-Index on 404: ${r.headers.get('x-consul-index')}`);
    const rr = await get('missing/', '?recurse');
    assert.equal(rr.status, 404, 'recurse over an empty prefix is 404');
    const rk = await get('missing/', '?keys');
    assert.equal(rk.status, 404, 'keys over an empty prefix is 404');
  });

  test('X-Consul-Index and ModifyIndex increase with every write; CreateIndex stays', async () => {
    const first = await putOk('idx/k', 'v0').then(() => get('idx/k'));
    let prevIdx = first.index;
    let prevMod = first.json[0].ModifyIndex;
    const create = first.json[0].CreateIndex;
    for (let i = 1; i <= 5; i++) {
      await putOk('idx/k', `v${i}`);
      const r = await get('idx/k');
      assert.ok(r.index > prevIdx, `X-Consul-Index ${r.index} > ${prevIdx}`);
      assert.ok(r.json[0].ModifyIndex > prevMod, `ModifyIndex ${r.json[0].ModifyIndex} > ${prevMod}`);
      assert.equal(r.json[0].CreateIndex, create);
      assert.equal(r.json[0].Value, b64(`v${i}`));
      prevIdx = r.index;
      prevMod = r.json[0].ModifyIndex;
    }
  });

  test('?recurse returns every entry under the prefix, sorted by key', async () => {
    for (const k of ['rec/b', 'rec/a/2', 'rec/c', 'rec/a/1', 'rec/a', 'recx/out']) await putOk(k, `val-${k}`);
    const r = await get('rec/', '?recurse');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.map((e) => e.Key), ['rec/a', 'rec/a/1', 'rec/a/2', 'rec/b', 'rec/c']);
    assert.deepEqual(r.json.map((e) => e.Value), ['rec/a', 'rec/a/1', 'rec/a/2', 'rec/b', 'rec/c'].map((k) => b64(`val-${k}`)));
    const maxMod = Math.max(...r.json.map((e) => e.ModifyIndex));
    assert.ok(r.index >= maxMod, `X-Consul-Index ${r.index} >= newest ModifyIndex ${maxMod}`);
    // Without the trailing slash the prefix also matches recx/.
    const r2 = await get('rec', '?recurse=true');
    assert.deepEqual(r2.json.map((e) => e.Key), ['rec/a', 'rec/a/1', 'rec/a/2', 'rec/b', 'rec/c', 'recx/out']);
  });

  test('?keys lists key names; ?separator groups them', async () => {
    for (const k of ['ks/z', 'ks/db/url', 'ks/db/user', 'ks/a', 'ks/db/pool/max', 'ks/web/']) await putOk(k, 'v');
    const all = await get('ks/', '?keys');
    assert.equal(all.status, 200);
    assert.deepEqual(all.json, ['ks/a', 'ks/db/pool/max', 'ks/db/url', 'ks/db/user', 'ks/web/', 'ks/z']);
    const grouped = await get('ks/', '?keys&separator=/');
    assert.equal(grouped.status, 200);
    assert.deepEqual(grouped.json, ['ks/a', 'ks/db/', 'ks/web/', 'ks/z']);
    const deeper = await get('ks/db/', '?keys&separator=%2F');
    assert.deepEqual(deeper.json, ['ks/db/pool/', 'ks/db/url', 'ks/db/user']);
    const partial = await get('ks/d', '?keys&separator=/');
    assert.deepEqual(partial.json, ['ks/db/']);
  });

  test('?cas: 0 creates only when absent; ModifyIndex swaps; stale index fails', async () => {
    const c1 = await put('cas/k', 'first', '?cas=0');
    assert.equal(c1.status, 200);
    assert.equal(c1.json, true, 'cas=0 on a missing key creates it');
    const c2 = await put('cas/k', 'second', '?cas=0');
    assert.equal(c2.status, 200);
    assert.equal(c2.json, false, 'cas=0 on an existing key fails');
    const cur = (await get('cas/k')).json[0];
    assert.equal(cur.Value, b64('first'));
    const c3 = await put('cas/k', 'third', `?cas=${cur.ModifyIndex}`);
    assert.equal(c3.json, true, 'cas=ModifyIndex succeeds');
    const after3 = (await get('cas/k')).json[0];
    assert.equal(after3.Value, b64('third'));
    assert.ok(after3.ModifyIndex > cur.ModifyIndex);
    const c4 = await put('cas/k', 'fourth', `?cas=${cur.ModifyIndex}`);
    assert.equal(c4.status, 200);
    assert.equal(c4.json, false, 'a stale cas index fails');
    const after4 = (await get('cas/k')).json[0];
    assert.equal(after4.Value, b64('third'), 'a failed cas leaves the value');
    assert.equal(after4.ModifyIndex, after3.ModifyIndex, 'a failed cas leaves ModifyIndex');
  });

  test('DELETE removes a key; deleting a missing key is still true', async () => {
    await putOk('del/k', 'v');
    await putOk('del/k2', 'v');
    const d = await del('del/k');
    assert.equal(d.status, 200);
    assert.equal(d.json, true);
    assert.equal((await get('del/k')).status, 404);
    assert.equal((await get('del/k2')).status, 200, 'a sibling survives');
    const d2 = await del('del/never-existed');
    assert.equal(d2.status, 200);
    assert.equal(d2.json, true);
  });

  test('DELETE ?cas deletes only at the current ModifyIndex', async () => {
    await putOk('delcas/k', 'v');
    const m = (await get('delcas/k')).json[0].ModifyIndex;
    const bad = await del('delcas/k', `?cas=${m - 1}`);
    assert.equal(bad.status, 200);
    assert.equal(bad.json, false);
    assert.equal((await get('delcas/k')).status, 200);
    const good = await del('delcas/k', `?cas=${m}`);
    assert.equal(good.json, true);
    assert.equal((await get('delcas/k')).status, 404);
  });

  test('DELETE ?recurse removes the whole prefix and nothing else', async () => {
    for (const k of ['tree/a', 'tree/b/c', 'tree/b/d', 'treetop', 'other/tree/a']) await putOk(k, 'v');
    const d = await del('tree/', '?recurse');
    assert.equal(d.status, 200);
    assert.equal(d.json, true);
    assert.equal((await get('tree/', '?recurse')).status, 404);
    assert.equal((await get('treetop')).status, 200, 'a key sharing the prefix without the slash survives');
    assert.equal((await get('other/tree/a')).status, 200);
  });

  test('blocking GET on a key ignores other keys and wakes promptly on its own change', async () => {
    await putOk('blk/a', 'a1');
    await putOk('blk/b', 'b1');
    const r0 = await get('blk/a');
    const n = r0.index;
    assert.ok(n > 0);
    const waiting = get('blk/a', `?index=${n}&wait=5s`, { timeout: ms(10000) });
    await sleep(ms(100)); // let the watcher register
    await putOk('blk/b', 'b2');
    await putOk('blk/b2', 'x');
    assert.equal(await settledWithin(waiting, 300), PENDING, 'a watcher on blk/a was answered by a change to blk/b');
    const t0 = Date.now();
    await putOk('blk/a', 'a2');
    const r = await waiting;
    const dt = Date.now() - t0;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json[0].Value, b64('a2'));
    assert.ok(r.index > n, `X-Consul-Index ${r.index} > ${n}`);
    assert.ok(r.index >= r.json[0].ModifyIndex);
    assert.ok(dt < ms(200), `watcher answered ${dt} ms after the PUT started (goal < 50 ms)`);
  });

  test('blocking recurse GET wakes on a delete under its prefix, not on other prefixes', async () => {
    await putOk('pw/x', '1');
    await putOk('pw/y', '2');
    const r0 = await get('pw/', '?recurse');
    const n = r0.index;
    const waiting = get('pw/', `?recurse&index=${n}&wait=5s`, { timeout: ms(10000) });
    await sleep(ms(100));
    await putOk('pwx', 'outside the prefix');
    await putOk('other/pw/x', 'outside the prefix');
    assert.equal(await settledWithin(waiting, 300), PENDING, 'a pw/ watcher was answered by a change outside pw/');
    const t0 = Date.now();
    const d = await del('pw/x');
    assert.equal(d.json, true);
    const r = await waiting;
    const dt = Date.now() - t0;
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.map((e) => e.Key), ['pw/y']);
    assert.ok(r.index > n, `X-Consul-Index ${r.index} > ${n}`);
    assert.ok(dt < ms(200), `watcher answered ${dt} ms after the DELETE started`);
  });

  test('blocking ?keys watcher wakes when a key appears under the prefix', async () => {
    await putOk('kw/a', '1');
    const r0 = await get('kw/', '?keys');
    const waiting = get('kw/', `?keys&index=${r0.index}&wait=5s`, { timeout: ms(10000) });
    await sleep(ms(100));
    await putOk('kw/b', '2');
    const r = await waiting;
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, ['kw/a', 'kw/b']);
    assert.ok(r.index > r0.index);
  });

  test('blocking GET on a missing key wakes when it is created', async () => {
    const r0 = await get('appear/k');
    assert.equal(r0.status, 404);
    const waiting = get('appear/k', `?index=${r0.index}&wait=5s`, { timeout: ms(10000) });
    await sleep(ms(100));
    await putOk('appear/other', 'x');
    assert.equal(await settledWithin(waiting, 300), PENDING, 'a watcher on a missing key was answered by an unrelated PUT');
    await putOk('appear/k', 'here');
    const r = await waiting;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json[0].Value, b64('here'));
    assert.ok(r.index > r0.index);
  });

  test('a blocking GET times out after ?wait with 200 and the same index', async () => {
    await putOk('to/a', 'v');
    const r0 = await get('to/a');
    const r = await get('to/a', `?index=${r0.index}&wait=200ms`, { timeout: ms(5000) });
    assert.equal(r.status, 200);
    assert.equal(r.index, r0.index, 'index unchanged after a timeout');
    assert.deepEqual(r.json, r0.json);
    // Consul adds up to wait/16 of jitter: 200..212.5 ms, plus scheduling slack.
    assert.ok(r.elapsed >= 190, `answered after ${r.elapsed} ms, before the 200 ms wait`);
    assert.ok(r.elapsed < ms(1000), `answered after ${r.elapsed} ms, long after the 200 ms wait`);
  });

  test('a blocking GET with an index older than the key answers at once', async () => {
    await putOk('old/a', 'v1');
    await putOk('old/a', 'v2');
    const cur = await get('old/a');
    const r = await get('old/a', `?index=${cur.json[0].ModifyIndex - 1}&wait=5s`, { timeout: ms(5000) });
    assert.equal(r.status, 200);
    assert.ok(r.elapsed < ms(1000), `answered after ${r.elapsed} ms`);
    assert.equal(r.json[0].Value, b64('v2'));
  });

  test('?cas=abc is 400', async () => {
    const r = await put('bad/k', 'v', '?cas=abc');
    assertProblemJson(r, 400);
    assert.equal((await get('bad/k')).status, 404, 'nothing stored');
  });

  test('a PUT or non-recursive DELETE without a key name is 400; ?flags=abc is 400', async () => {
    assertProblemJson(await call(reg, 'PUT', '/v1/kv/', { body: 'v' }), 400);
    await putOk('nokey/k', 'v');
    assertProblemJson(await call(reg, 'DELETE', '/v1/kv/'), 400);
    assert.equal((await get('nokey/k')).status, 200, 'a rejected root DELETE deletes nothing');
    assertProblemJson(await put('nokey/f', 'v', '?flags=abc'), 400);
    assert.equal((await get('nokey/f')).status, 404);
  });

  test('?wait=10x and ?index=abc are 400', async () => {
    await putOk('bad/w', 'v');
    assertProblemJson(await get('bad/w', '?index=1&wait=10x'), 400);
    assertProblemJson(await get('bad/w', '?index=abc'), 400);
  });

  test('values up to 512 KiB are accepted; larger ones are 413 and not stored', async () => {
    const max = Buffer.alloc(512 * 1024, 0x61);
    await putOk('big/max', max);
    const raw = await get('big/max', '?raw');
    assert.equal(raw.body.length, max.length);
    assert.ok(raw.body.equals(max));
    const r = await put('big/over', Buffer.alloc(600 * 1024, 0x62));
    assertProblemJson(r, 413);
    assert.equal((await get('big/over')).status, 404, 'an oversized value is not stored');
    const r1 = await put('big/over1', Buffer.alloc(512 * 1024 + 1, 0x62));
    assert.equal(r1.status, 413, '512 KiB + 1 byte is over the limit');
  });

  test('other methods on /v1/kv are 405', async () => {
    const r = await call(reg, 'POST', '/v1/kv/m/k', { body: 'v' });
    assert.equal(r.status, 405, r.text);
    assert.equal((await get('m/k')).status, 404);
  });
});

test('KV survives kill -9 and indexes stay monotonic across restarts', async () => {
  const reg = await startRegistry();
  try {
    const put = (key, body, q = '') => call(reg, 'PUT', `/v1/kv/${key}${q}`, { body });
    const get = (key) => call(reg, 'GET', `/v1/kv/${key}`);
    for (let i = 0; i < 20; i++) assert.equal((await put(`dur/n${i}`, `v${i}`)).json, true);
    assert.equal((await put('dur/k', 'durable', '?flags=7')).json, true);
    const before = (await get('dur/k')).json[0];
    await reg.stop({ signal: 'SIGKILL' });

    await reg.restart();
    const r = await get('dur/k');
    assert.equal(r.status, 200, `after kill -9 the acknowledged PUT is there: ${r.text}`);
    assert.deepEqual(r.json[0], before);
    assert.ok(r.index >= before.ModifyIndex, `X-Consul-Index ${r.index} after restart >= ${before.ModifyIndex}`);
    const all = await call(reg, 'GET', '/v1/kv/dur/n?recurse');
    assert.equal(all.json.length, 20);

    assert.equal((await put('dur/k2', 'after')).json, true);
    const k2 = (await get('dur/k2')).json[0];
    assert.ok(k2.ModifyIndex > before.ModifyIndex, `new ModifyIndex ${k2.ModifyIndex} > ${before.ModifyIndex} from before the restart`);

    await reg.restart(); // SIGTERM: asserts exit 0
    assert.deepEqual((await get('dur/k2')).json[0], k2);
    assert.deepEqual((await get('dur/k')).json[0], before);
    await reg.stop();
  } finally {
    await reg.cleanup();
  }
});

test('a fresh registry creates a missing data dir and answers X-Consul-Index >= 1', async () => {
  const parent = mkdtempSync(path.join(os.tmpdir(), 'trellis-registry-parent-'));
  const dir = path.join(parent, 'state');
  let reg;
  try {
    reg = await startRegistry({ dataDir: dir });
    // The npm consul watcher treats index 0 as an error, so even an empty store says >= 1.
    const r = await call(reg, 'GET', '/v1/kv/nothing');
    assert.equal(r.status, 404);
    // (checked after the first answer: "listening" is logged before the store is opened)
    assert.ok(statSync(dir).isDirectory(), 'data dir created');
    assert.ok(r.index >= 1, `X-Consul-Index ${r.headers.get('x-consul-index')}`);
    // Consul (KVSGetKeys): "We do not generate not found for the root, but just provide the
    // empty list"; a recurse over the root is still a 404.
    const rk = await call(reg, 'GET', '/v1/kv/?keys');
    assert.equal(rk.status, 200, 'keys over the empty root is 200 []');
    assert.deepEqual(rk.json, []);
    assert.equal((await call(reg, 'GET', '/v1/kv/?recurse')).status, 404, 'recurse over the empty root is 404');
    await reg.stop();
  } finally {
    if (reg) await reg.cleanup();
    rmSync(parent, { recursive: true, force: true });
  }
});

test('an unusable data dir makes the registry exit non-zero saying which path', async () => {
  const parent = mkdtempSync(path.join(os.tmpdir(), 'trellis-registry-bad-'));
  const file = path.join(parent, 'a-file');
  writeFileSync(file, 'not a directory');
  const bad = path.join(file, 'state');
  try {
    const proc = spawn(BIN, ['registry', '--listen', '127.0.0.1:0', '--log-format', 'json', '--data-dir', bad],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => { err += d; });
    const res = await withDeadline(new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal }))),
      ms(10000), 'registry exit on a bad data dir').catch((e) => { proc.kill('SIGKILL'); throw e; });
    assert.equal(res.signal, null, `exit by signal; stderr:\n${err}`);
    assert.notEqual(res.code, 0, `exit code; stderr:\n${err}`);
    assert.ok(err.includes(file), `stderr names the path:\n${err}`);
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});
