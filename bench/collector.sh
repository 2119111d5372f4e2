#!/usr/bin/env bash
# Collector ingest rate: `trellis collector` pinned to core 0 takes OTLP/HTTP JSON batches
# of 500 spans (10-span traces over 3 services) from bench/collector-load.mjs on core 1, with
# SQLite on. Prints spans/s and the collector's CPU time per span, next to the goal.
# Usage: bench/collector.sh [--seconds 10] [--spans 500] [--connections 4]
#        (TRELLIS_BIN defaults to build/trellis)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_RUN=10
SPANS=500
CONNS=4
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --spans) SPANS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "bench/collector.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

TRELLIS=${TRELLIS_BIN:-build/trellis}
GOAL=100000
SERVER_CORE="taskset -c 0"
LOAD_CORE="taskset -c 1"
if [ "$(nproc)" -lt 2 ]; then SERVER_CORE=""; LOAD_CORE=""; fi
for tool in node "$TRELLIS"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/collector.sh: $tool not found (make build)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/trellis-bench-collector.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

$SERVER_CORE "$TRELLIS" collector --listen 127.0.0.1:0 --otlp 127.0.0.1:0 --zipkin 127.0.0.1:0 \
  --data-dir "$WORK/data" --log-format json 2> "$WORK/collector.log" &
PID=$!
OTLP=""
for _ in $(seq 1 200); do
  OTLP=$(grep -o '"otlp":"[^"]*"' "$WORK/collector.log" 2>/dev/null | tail -1 | cut -d'"' -f4 || true)
  [ -n "$OTLP" ] && break
  sleep 0.05
done
[ -n "$OTLP" ] || { echo "bench/collector.sh: collector did not start:" >&2; cat "$WORK/collector.log" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICK=$(getconf CLK_TCK)
before=$(cpu_ticks)
RESULT=$($LOAD_CORE node bench/collector-load.mjs "http://$OTLP/v1/traces" --spans "$SPANS" \
  --seconds "$SECONDS_RUN" --connections "$CONNS")
after=$(cpu_ticks)
echo "load: $RESULT"
node -e '
const r = JSON.parse(process.argv[1]);
const cpu = (Number(process.argv[2]) - Number(process.argv[3])) / Number(process.argv[4]);
const goal = Number(process.argv[5]);
const perSpanUs = r.spans ? cpu * 1e6 / r.spans : 0;
const oneCore = perSpanUs ? Math.round(1e6 / perSpanUs) : 0;
console.log(`collector ingest: ${r.spans_per_second} spans/s over the wire, ${cpu.toFixed(2)} s CPU`);
console.log(`  CPU per span ${perSpanUs.toFixed(2)} us -> ${oneCore} spans/s per core (goal >= ${goal}, ratio ${(oneCore / goal).toFixed(2)})`);
' "$RESULT" "$after" "$before" "$TICK" "$GOAL"
