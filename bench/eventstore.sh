#!/usr/bin/env bash
# Event store throughput: `trellis eventstore` pinned to core 0, load from
# bench/eventstore-load.mjs on core 1. Phases: appends of single events, one request at a
# time per connection and then 16 pipelined per connection (the way an HTTP/1.1 client with
# pipelining, or many clients behind one proxy connection, sends them: they share group
# commits), appends of batches of 100 (all with --sync normal, then again with --sync full),
# and reads of $all in pages of 1000. Prints events/s, the ratio to each goal, the store's CPU per event, and the
# fsyncs of the store (counted with `perf stat` syscall tracepoints when perf works). Last,
# the floor: the same single-event requests answered by `trellis echo` without a store.
# Usage: bench/eventstore.sh [--seconds 10] [--connections 64]
#        (TRELLIS_BIN defaults to build/trellis)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_RUN=10
CONNS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "bench/eventstore.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

TRELLIS=${TRELLIS_BIN:-build/trellis}
APPEND_GOAL=50000
READ_GOAL=500000
SERVER_CORE="taskset -c 0"
LOAD_CORE="taskset -c 1"
if [ "$(nproc)" -lt 2 ]; then SERVER_CORE=""; LOAD_CORE=""; fi
for tool in node "$TRELLIS"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/eventstore.sh: $tool not found (make build)" >&2; exit 1; }
done
PERF=""
if command -v perf >/dev/null 2>&1 &&
   perf stat -e syscalls:sys_enter_fsync -- true >/dev/null 2>&1; then PERF=perf; fi
WORK=$(mktemp -d /tmp/trellis-bench-eventstore.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Starts `trellis <args>` on the server core in place of the server before; sets PID and
# ADDR (from its "listening" log line, 10 s at most).
start_server() {
  [ -n "$PID" ] && { kill "$PID"; wait "$PID" 2>/dev/null || true; }
  $SERVER_CORE "$TRELLIS" "$@" --listen 127.0.0.1:0 --log-format json 2> "$WORK/store.log" &
  PID=$!
  ADDR=""
  for _ in $(seq 1 200); do
    ADDR=$(grep -o '"addr":"[^"]*"' "$WORK/store.log" 2>/dev/null | tail -1 | cut -d'"' -f4 || true)
    [ -n "$ADDR" ] && break
    sleep 0.05
  done
  [ -n "$ADDR" ] || { echo "bench/eventstore.sh: trellis $1 did not start:" >&2; cat "$WORK/store.log" >&2; exit 1; }
}

start_store() { start_server eventstore --data-dir "$1" --sync "$2"; } # $1: data dir, $2: sync

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICK=$(getconf CLK_TCK)

# $1: label, $2: goal, the rest: load arguments. Prints one line of figures.
phase() {
  local label=$1 goal=$2; shift 2
  local before after fsyncs="n/a" result
  before=$(cpu_ticks)
  if [ -n "$PERF" ]; then
    perf stat -x, -o "$WORK/perf.txt" -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync \
      -p "$PID" -- sleep "$((SECONDS_RUN + 1))" 2>/dev/null &
    local perf_pid=$!
  fi
  result=$($LOAD_CORE node bench/eventstore-load.mjs "http://$ADDR" "$@" --seconds "$SECONDS_RUN")
  after=$(cpu_ticks)
  if [ -n "$PERF" ]; then
    wait "$perf_pid" || true
    fsyncs=$(awk -F, '/sys_enter_f/ {s += $1} END {print s + 0}' "$WORK/perf.txt")
  fi
  node -e '
const [label, goal, r0, a, b, tick, fsyncs] = process.argv.slice(1);
const r = JSON.parse(r0);
const cpu = (Number(a) - Number(b)) / Number(tick);
const perEventUs = r.events ? cpu * 1e6 / r.events : 0;
const fs = fsyncs === "n/a" ? "fsyncs n/a" :
  `${fsyncs} fsyncs (${r.events && Number(fsyncs) ? Math.round(r.events / Number(fsyncs)) : "-"} events/fsync)`;
console.log(`${label.padEnd(34)} ${String(r.events_per_second).padStart(8)} events/s` +
  `  ratio ${(r.events_per_second / Number(goal)).toFixed(2)} (goal ${goal})` +
  `  ${r.requests_per_second} req/s  CPU ${perEventUs.toFixed(2)} us/event  ${fs}` +
  (r.errors ? `  ERRORS ${r.errors}` : ""));
' "$label" "$goal" "$result" "$after" "$before" "$TICK" "$fsyncs"
}

echo "trellis eventstore, ${SECONDS_RUN}s per phase, store on core 0, load on core 1"
start_store "$WORK/normal" normal
phase "append 1 event/req, sync=normal" "$APPEND_GOAL" append --batch 1 --connections "$CONNS"
phase "  the same, 16 pipelined/conn" "$APPEND_GOAL" append --batch 1 --connections "$CONNS" --depth 16
phase "append 100 events/req, sync=normal" "$APPEND_GOAL" append --batch 100 --connections 16
phase "read \$all, pages of 1000" "$READ_GOAL" read --page 1000 --connections 4
start_store "$WORK/full" full
phase "append 1 event/req, sync=full" "$APPEND_GOAL" append --batch 1 --connections "$CONNS"
phase "  the same, 16 pipelined/conn" "$APPEND_GOAL" append --batch 1 --connections "$CONNS" --depth 16
phase "append 100 events/req, sync=full" "$APPEND_GOAL" append --batch 100 --connections 16

# The floor under single-event appends: the same requests answered 201 by `trellis echo`
# (one worker, on the store's core) without storing anything.
start_server echo --workers 1
phase "HTTP floor: trellis echo 201" "$APPEND_GOAL" append --batch 1 --connections "$CONNS" --floor 1
phase "  the same, 16 pipelined/conn" "$APPEND_GOAL" append --batch 1 --connections "$CONNS" --floor 1 --depth 16
