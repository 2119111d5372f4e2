#!/usr/bin/env bash
# `make demo`: runs the shop (examples/shop) with `trellis up` and tells its story in the
# terminal (examples/shop/demo.mjs), then keeps the shop running until Ctrl-C.
# `make demo DEMO_ARGS=--once` tells the story and exits: 0 only if every step behaved as
# told (make test runs it). Data lives in examples/shop/.trellis (--once starts afresh).
# The story's last chapter SIGKILLs `trellis up` mid-saga (demo.mjs --up-pid) and sends this
# script SIGUSR1 (--restart-pid): the script starts `trellis up` again, as an operator would.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${TRELLIS_BIN:-build/trellis}
ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1
TOPOLOGY=examples/shop/topology.yaml
STATE=examples/shop/.trellis
READY_TIMEOUT=60

for port in 8080 8500 4318 9411 9901; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is in use; the shop's topology needs 8080, 8500, 4318, 9411 and 9901." >&2
    echo "      Stop what listens there (another 'make demo'?) and try again." >&2
    exit 1
  fi
done
[ $ONCE = 1 ] && rm -rf "$STATE"
mkdir -p "$STATE"
LOG="$STATE/up.log"
: > "$LOG"

READY_MSG='"msg":"up: all services ready"'
PIDFILE="$STATE/up.pid" # the running `trellis up`; demo.mjs replaces it when it restarts up

# Starts `trellis up` (its log appended to $LOG) in its own session, so Ctrl-C reaches only
# this script, which then stops `trellis up` once (a second signal would skip the services'
# grace period). Waits until every service is ready; 1 when not within READY_TIMEOUT.
start_up() {
  setsid "$BIN" up "$TOPOLOGY" --log-format json >> "$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 $((READY_TIMEOUT * 10))); do
    grep -q "$READY_MSG" "$LOG" 2>/dev/null && return 0
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 0.1
  done
  echo "demo: the shop did not become ready within ${READY_TIMEOUT} s. The last log lines:" >&2
  tail -n 30 "$LOG" >&2
  return 1
}
up_pid() { cat "$PIDFILE" 2>/dev/null; }
stop_up() {
  local pid
  pid=$(up_pid)
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "demo: trellis up did not stop within 15 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}
trap stop_up EXIT
trap 'echo; echo "demo: stopping the shop…"; exit 0' INT TERM

echo "demo: starting the shop: $BIN up $TOPOLOGY   (log: $LOG)"
start_up || exit 1

node examples/shop/demo.mjs --trellis "$BIN" --up-pid-file "$PIDFILE" --topology "$TOPOLOGY" \
  --up-log "$LOG"
rc=$?
if [ $ONCE = 1 ]; then
  stop_up
  trap - EXIT
  exit $rc
fi
echo
echo "The shop keeps running (gateway http://127.0.0.1:8080, control plane http://127.0.0.1:8500)."
echo "Try examples/shop/README.md's walk-through in another terminal. Ctrl-C stops everything."
while kill -0 "$(up_pid)" 2>/dev/null; do sleep 1; done
