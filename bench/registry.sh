#!/usr/bin/env bash
# Registry at scale: 10,000 instances in 500 services with HTTP checks every 10 s against a
# few `trellis echo` processes. Reports registry CPU and RSS, health-query throughput under
# wrk, latency at a fixed 5,000 req/s and how fast 1,000 blocking watchers wake after one
# change (both with trellis-loadgen, bench/loadgen.c), each next to its goal.
# Usage: bench/registry.sh [--services 500] [--per-service 20] [--cpu-seconds 60] [--watchers 1000]
#        (TRELLIS_BIN and LOADGEN_BIN default to build/trellis and build/trellis-loadgen)
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=500
PER=20
CPU_SECONDS=60
WATCHERS=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --services) SERVICES=$2; shift 2 ;;
    --per-service) PER=$2; shift 2 ;;
    --cpu-seconds) CPU_SECONDS=$2; shift 2 ;;
    --watchers) WATCHERS=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "bench/registry.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

TRELLIS=${TRELLIS_BIN:-build/trellis}
LOADGEN=${LOADGEN_BIN:-build/trellis-loadgen}
# Like bench/http.sh: the server under test on core 0, everything that loads it (the
# echo processes its checks call, wrk, loadgen) on core 1, so they don't compete.
SERVER_CORE="taskset -c 0"
LOAD_CORE="taskset -c 1"
if [ "$(nproc)" -lt 2 ]; then SERVER_CORE=""; LOAD_CORE=""; fi
RATE=5000
for tool in wrk node curl "$TRELLIS" "$LOADGEN"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/registry.sh: $tool not found (run scripts/deps.sh and make build)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/trellis-bench-registry.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# Starts "$@" with its log in $WORK/$name.log; sets ADDR from its "listening" line.
start() {
  local name=$1; shift
  "$@" --log-format json > "$WORK/$name.out" 2> "$WORK/$name.log" &
  PIDS+=($!)
  LAST_PID=$!
  ADDR=""
  for _ in $(seq 1 200); do
    ADDR=$(grep -o '"addr":"[^"]*"' "$WORK/$name.log" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
    [ -n "$ADDR" ] && return 0
    sleep 0.05
  done
  echo "bench/registry.sh: $name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1
}

ECHO_PORTS=""
for i in 1 2 3 4; do
  start "echo$i" $LOAD_CORE "$TRELLIS" echo --listen 127.0.0.1:0 --workers 1
  ECHO_PORTS="$ECHO_PORTS${ECHO_PORTS:+,}${ADDR##*:}"
done
start registry $SERVER_CORE "$TRELLIS" registry --listen 127.0.0.1:0 --data-dir "$WORK/data"
REG_PID=$LAST_PID
BASE="http://$ADDR"

node bench/registry-load.mjs register "$BASE" "$SERVICES" "$PER" "$ECHO_PORTS"
ticks() { awk '{print $14 + $15}' "/proc/$REG_PID/stat"; }
HZ=$(getconf CLK_TCK)
sleep 11 # one full check interval, so every check has run once
t0=$(ticks)
sleep "$CPU_SECONDS"
t1=$(ticks)
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$REG_PID/status")
CPU=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v s="$CPU_SECONDS" 'BEGIN { printf "%.2f", (b - a) / hz / s * 100 }')
PASSING=$(curl -s "$BASE/v1/health/state/passing" | grep -o '"Status":"passing"' | wc -l)

$LOAD_CORE wrk -t1 -c16 -d10s --latency "$BASE/v1/health/service/svc7?passing" > "$WORK/wrk.out"
RPS=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
P50=$(awk '$1=="50%" {print $2}' "$WORK/wrk.out")
P99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.out")

# Latency at a fixed rate, open loop: each request's latency runs from its scheduled send
# time, so a stall shows up in every request queued behind it (no coordinated omission).
RATE_OK=1
$LOAD_CORE "$LOADGEN" rate --url "$BASE/v1/health/service/svc7?passing" --rate "$RATE" --connections 16 \
  --duration 10s --warmup 2s > "$WORK/rate.out" || RATE_OK=0
kv() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
R_RATE=$(kv rate "$WORK/rate.out"); R_ERR=$(kv errors "$WORK/rate.out")
R_P50=$(kv p50_ms "$WORK/rate.out"); R_P99=$(kv p99_ms "$WORK/rate.out")
R_P999=$(kv p999_ms "$WORK/rate.out"); R_MAX=$(kv max_ms "$WORK/rate.out")
R_LAG=$(kv send_lag_p99_ms "$WORK/rate.out")

# Blocking watchers: park WATCHERS queries on the watched service, register a second
# instance of it, and time until every watcher has its answer.
node bench/registry-load.mjs watched "$BASE" watched
WATCH_OK=1
$LOAD_CORE "$LOADGEN" watchers --url "$BASE/v1/health/service/watched" --count "$WATCHERS" \
  --trigger-url "$BASE/v1/agent/service/register" --trigger-method PUT \
  --trigger-body '{"ID":"watched-1","Name":"watched","Address":"127.0.0.1","Port":2}' \
  > "$WORK/watch.out" || WATCH_OK=0
W_WOKEN=$(kv woken "$WORK/watch.out"); W_ALL=$(kv wake_all_ms "$WORK/watch.out")
W_SEND=$(kv wake_all_from_send_ms "$WORK/watch.out"); W_P50=$(kv wake_p50_from_send_ms "$WORK/watch.out")
W_P99=$(kv wake_p99_from_send_ms "$WORK/watch.out"); W_TRIG=$(kv trigger_ms "$WORK/watch.out")

# verdict OK-CONDITION: "met" or "MISSED" for the summary.
verdict() { if [ "$1" = 1 ]; then echo met; else echo MISSED; fi; }
CPU_MET=$(awk -v c="$CPU" 'BEGIN { print (c <= 10) }')
RATE_MET=$(awk -v ok="$RATE_OK" -v r="${R_RATE:-0}" -v p="${R_P99:-1e9}" -v e="${R_ERR:-1}" -v t="$RATE" \
  'BEGIN { print (ok && r >= t * 0.99 && e == 0 && p < 1) }')
WAKE_MET=$(awk -v ok="$WATCH_OK" -v w="${W_SEND:-1e9}" 'BEGIN { print (ok && w <= 100) }')

# The figures, each with its goal and whether it was met.
line() { printf '%-27s %s\n' "$1" "$2"; }
echo
line "instances:" "$((SERVICES * PER)) in $SERVICES services, HTTP checks every 10s"
line "checks passing:" "$PASSING"
line "registry CPU over ${CPU_SECONDS}s:" "${CPU}% of one core   [goal <= 10%: $(verdict "$CPU_MET")]"
line "registry RSS:" "${RSS} KiB"
line "health?passing flat out:" "${RPS} req/s, p50 ${P50}, p99 ${P99} (wrk, 16 conns)"
line "health?passing at ${RATE}/s:" "achieved ${R_RATE:-?} req/s, ${R_ERR:-?} errors, p50 ${R_P50:-?} ms, p99 ${R_P99:-?} ms, p99.9 ${R_P999:-?} ms, max ${R_MAX:-?} ms   [goal p99 < 1 ms at ${RATE} req/s: $(verdict "$RATE_MET")]"
line "" "(open loop, 16 conns, 10s; latency from each request's scheduled send time; loadgen's own send lag p99 ${R_LAG:-?} ms)"
line "${WATCHERS} blocking watchers:" "${W_WOKEN:-0} woke, all within ${W_SEND:-?} ms of the change being sent, p50 ${W_P50:-?} ms, p99 ${W_P99:-?} ms   [goal all <= 100 ms: $(verdict "$WAKE_MET")]"
line "" "(the change, one registration, took ${W_TRIG:-?} ms to answer; last watcher ${W_ALL:-?} ms after that answer)"
[ "$RATE_OK" = 1 ] && [ "$WATCH_OK" = 1 ]
