// Helpers for the shop services' end-to-end tests: run one service binary of
// examples/shop (build/shop-<name>) on a free port with its own data directory, and talk
// to it over HTTP. Every wait has a deadline.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BIN, SANITIZED, ms, watchOutput, withDeadline } from './trellis.mjs';
import { request } from './gateway.mjs';

const SANITIZER_RE = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:/;

/** The path of a shop service's binary, next to the trellis binary under test. */
export function shopBin(name) {
  return path.join(path.dirname(BIN), `shop-${name}`);
}

/**
 * Starts shop service `name` (e.g. 'catalog') on a free port. With `registry` ("ip:port")
 * it registers itself there; without, it runs as if `trellis up` ran it (no registration).
 * `dataDir` defaults to a fresh temp dir (removed by stop()).
 * Returns {name, port, url, addr, proc, dataDir, logs(), waitLog(re), req(path, opts),
 * stop(), kill(), exited}.
 */
export async function startShopService(name, { registry, env = {}, dataDir, startTimeout = ms(10000) } = {}) {
  const ownDir = !dataDir;
  dataDir = dataDir || mkdtempSync(path.join(os.tmpdir(), `shop-${name}-`));
  const childEnv = {
    ...process.env,
    PORT: '0', // the kernel picks; the "app: serving" line says which (no probe-and-release race)
    TRELLIS_SERVICE: name,
    SHOP_DATA_DIR: dataDir,
    TRELLIS_LOG_FORMAT: 'json',
    OTEL_EXPORTER_OTLP_ENDPOINT: '',
    ...(registry ? { TRELLIS_REGISTRY: registry } : { TRELLIS_INSTANCE: 'test', TRELLIS_REGISTRY: '127.0.0.1:1' }),
    ...env,
  };
  if (registry) delete childEnv.TRELLIS_INSTANCE;
  const proc = spawn(shopBin(name), [], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv });
  const { exited, waitLog, stderr } = watchOutput(proc, `shop-${name}`);
  const serving = JSON.parse(await waitLog(/"msg":"app: serving"/, startTimeout));
  const port = Number(serving.addr.split(':').pop());
  const svc = {
    name, port, addr: `127.0.0.1:${port}`, url: `http://127.0.0.1:${port}`, proc, dataDir, exited, waitLog,
    logs: stderr,
    /** HTTP request; a `json` option is sent as a JSON body. Resolves {status, headers, text, json}. */
    req(p, { method = 'GET', json, headers = {}, body } = {}) {
      const h = { ...headers };
      let b = body;
      if (json !== undefined) {
        b = JSON.stringify(json);
        h['content-type'] = 'application/json';
      }
      return request(port, p, { method, headers: h, body: b });
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const r = await withDeadline(exited, ms(10000), `shop-${name} to stop`);
      if (SANITIZED && SANITIZER_RE.test(stderr())) throw new Error(`sanitizer report from shop-${name}:\n${stderr()}`);
      if (ownDir) rmSync(dataDir, { recursive: true, force: true });
      return r;
    },
    kill() { proc.kill('SIGKILL'); return exited; },
  };
  return svc;
}

/**
 * Asserts a problem+json answer (RFC 9457) with this status, and this type slug when given,
 * whose detail says what to fix; returns the problem.
 */
export function assertShopProblem(res, status, slug) {
  assert.equal(res.status, status, `status; body: ${res.text}`);
  assert.match(res.headers['content-type'] || '', /^application\/problem\+json/, res.text);
  const p = res.json;
  assert.equal(p.status, status);
  assert.match(p.type, /^https:\/\/trellis\.dev\/problems\/[a-z0-9-]+$/);
  if (slug) assert.equal(p.type, `https://trellis.dev/problems/${slug}`, res.text);
  assert.ok(typeof p.detail === 'string' && p.detail.length > 0, 'a detail says what to fix');
  return p;
}
