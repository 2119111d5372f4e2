#!/usr/bin/env bash
# Saga throughput: `trellis up` with two `trellis echo` participants and a 3-step saga
# (POST /echo to each, a compensation for the first two), driven by bench/saga-load.mjs
# with N concurrent clients that each start a saga and wait for its outcome. Prints durable
# sagas/s and p99 against the goal (1,000/s on this 2-core machine), and the commits (group
# commits) and fsync calls per saga, counted by strace on the saga store's file.
# Usage: bench/saga.sh [--seconds 10] [--concurrency 64] [--sync normal|full]
#        (TRELLIS_BIN defaults to build/trellis)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=10
CONC=64
SYNC=normal
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --sync) SYNC=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "bench/saga.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
BIN=$(realpath "${TRELLIS_BIN:-build/trellis}")
GOAL=1000
WORK=$(mktemp -d /tmp/trellis-bench-saga.XXXXXX)
UP=""
cleanup() { [ -n "$UP" ] && kill -TERM "$UP" 2>/dev/null && wait "$UP" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
API=$(port)
cat > "$WORK/topology.yaml" <<YAML
control_plane: {listen: 127.0.0.1:$API, data_dir: $WORK/data, otlp: off, zipkin: off}
services:
  alpha: {command: trellis, args: [echo, --listen, "127.0.0.1:\${PORT}", --workers, "1"],
          probes: {readiness: {http: /health/ready, period: 200ms}}}
  beta: {command: trellis, args: [echo, --listen, "127.0.0.1:\${PORT}", --workers, "1"],
         probes: {readiness: {http: /health/ready, period: 200ms}}}
gateway: {listen: 127.0.0.1:0, admin: {listen: "off"}}
sagas:
  bench:
    steps:
      - {name: reserve, action: {service: alpha, path: /echo, body: {order: "\${input.order}"}},
         compensation: {service: alpha, path: /echo}}
      - {name: charge, action: {service: beta, path: /echo, body: {amount: "\${input.amount}"}},
         compensation: {service: beta, path: /echo}}
      - {name: confirm, action: {service: alpha, path: /echo}}
YAML
SYNC_ENV=""
[ "$SYNC" = full ] && SYNC_ENV="TRELLIS_SAGA_SYNC=full"
env $SYNC_ENV "$BIN" up "$WORK/topology.yaml" --workers 1 --log-format json --log-level warn \
  2> "$WORK/up.log" > /dev/null &
UP=$!
for _ in $(seq 1 200); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$API/health/ready" && \
    [ "$(curl -s --max-time 1 "http://127.0.0.1:$API/health/ready")" = ready ] && break
  sleep 0.05
done
# A warm-up saga, so discovery has its watches before the clock starts.
curl -s --max-time 10 -X POST "http://127.0.0.1:$API/api/sagas/bench?wait=5s" -d '{"order":0,"amount":1}' >/dev/null
STRACE_OUT="$WORK/strace.txt"
# fsync calls: strace slows every system call it sees, so it watches a second, shorter run.
RESULT=$(node bench/saga-load.mjs "http://127.0.0.1:$API" bench --seconds "$SECONDS_RUN" --concurrency "$CONC")
COMMITS0=$(curl -s "http://127.0.0.1:$API/metrics" | awk '/^trellis_saga_commits_total/ {print $2}')
strace -f -c -e trace=fsync,fdatasync -p "$UP" -o "$STRACE_OUT" 2>/dev/null &
ST=$!
sleep 0.3
SRESULT=$(node bench/saga-load.mjs "http://127.0.0.1:$API" bench --seconds 3 --concurrency "$CONC")
kill -INT "$ST" 2>/dev/null || true
wait "$ST" 2>/dev/null || true
echo "load: $RESULT"
COMMITS1=$(curl -s "http://127.0.0.1:$API/metrics" | awk '/^trellis_saga_commits_total/ {print $2}')
node -e '
const r = JSON.parse(process.argv[1]), goal = Number(process.argv[2]);
const fs = require("fs");
let fsyncs = 0;
try {
  for (const l of fs.readFileSync(process.argv[3], "utf8").split("\n")) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)/.exec(l);
    if (m) fsyncs += Number(m[1]);
  }
} catch {}
const commits = Number(process.argv[4] || 0);
const r2 = JSON.parse(process.argv[6]);
const n = r.sagas || 1, n2 = r2.sagas || 1;
console.log(`sagas: ${r.sagas_per_second}/s (goal >= ${goal}: ratio ${(r.sagas_per_second / goal).toFixed(2)}), p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, states ${JSON.stringify(r.states)}`);
console.log(`durability: ${(commits / n).toFixed(2)} group commits per saga (every transition is written before its effect; group commits on a thread-pool thread); ${(fsyncs / n2).toFixed(3)} fsync calls per saga (sync=${process.argv[5]}, from a 3 s run under strace)`);
' "$RESULT" "$GOAL" "$STRACE_OUT" "${COMMITS0:-0}" "$SYNC" "$SRESULT"
