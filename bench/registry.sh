#!/usr/bin/env bash
# Registry at scale: 10,000 instances in 500 services with HTTP checks every 10 s against a
# few `trellis echo` processes. Reports registry CPU and RSS, health-query throughput and
# latency under wrk, and how fast 1,000 blocking watchers wake after one change.
# Usage: bench/registry.sh [--services 500] [--per-service 20] [--cpu-seconds 60]
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
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "bench/registry.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

TRELLIS=${TRELLIS_BIN:-build/trellis}
for tool in wrk node "$TRELLIS"; do
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
  start "echo$i" "$TRELLIS" echo --listen 127.0.0.1:0 --workers 1
  ECHO_PORTS="$ECHO_PORTS${ECHO_PORTS:+,}${ADDR##*:}"
done
start registry "$TRELLIS" registry --listen 127.0.0.1:0 --data-dir "$WORK/data"
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

wrk -t1 -c16 -d10s --latency "$BASE/v1/health/service/svc7?passing" > "$WORK/wrk.out"
RPS=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")
P50=$(awk '$1=="50%" {print $2}' "$WORK/wrk.out")
P99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.out")

# Latency at a moderate rate: two connections back to back reach well over 5,000 req/s,
# so their p99 bounds the latency at that rate (wrk has no fixed-rate mode).
wrk -t1 -c2 -d10s --latency "$BASE/v1/health/service/svc7?passing" > "$WORK/wrk2.out"
RPS2=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk2.out")
P99_2=$(awk '$1=="99%" {print $2}' "$WORK/wrk2.out")

WAKE=$(node bench/registry-load.mjs watchers "$BASE" watched "$WATCHERS")

echo
echo "instances:                 $((SERVICES * PER)) in $SERVICES services, HTTP checks every 10s"
echo "checks passing:            $PASSING"
echo "registry CPU over ${CPU_SECONDS}s:    ${CPU}% of one core (goal <= 10%)"
echo "registry RSS:              ${RSS} KiB"
echo "health?passing, 16 conns:   ${RPS} req/s, p50 ${P50}, p99 ${P99} (flat out)"
echo "health?passing, 2 conns:    ${RPS2} req/s, p99 ${P99_2} (goal p99 < 1ms at 5,000 req/s)"
echo "blocking watchers:         $WAKE (goal <= 100 ms)"
