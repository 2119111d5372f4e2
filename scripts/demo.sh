#!/usr/bin/env bash
# `make demo`: runs trellis echo (the shop example arrives with later work) and shows how
# to try it. With --once it checks a few endpoints, stops the service and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${TRELLIS_BIN:-build/trellis}
LISTEN=${DEMO_LISTEN:-127.0.0.1:8090}
ONCE=0
[ "${1:-}" = "--once" ] && ONCE=1

if [ $ONCE = 0 ]; then
  cat <<MSG

  trellis echo is starting on http://$LISTEN   (Ctrl-C stops it)

  Try, in another terminal:
    curl -i http://$LISTEN/                     # hello
    curl -s http://$LISTEN/echo -d 'hi'         # your request back as JSON
    curl -i http://$LISTEN/status/503           # any status
    curl -s http://$LISTEN/delay/500            # a slow answer
    curl -s http://$LISTEN/stream/3             # a chunked response
    curl -s http://$LISTEN/metrics              # Prometheus metrics
    curl -i http://$LISTEN/echo -H 'Transfer-Encoding: chunked' -H 'Content-Length: 3' -d abc
                                                # request smuggling attempt -> 400 problem+json

MSG
  exec "$BIN" echo --listen "$LISTEN"
fi

"$BIN" echo --listen 127.0.0.1:0 --log-format json --workers 2 2> /tmp/trellis-demo.$$.log &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f /tmp/trellis-demo.$$.log' EXIT
ADDR=""
for _ in $(seq 1 100); do
  ADDR=$(grep -o '"addr":"[^"]*"' /tmp/trellis-demo.$$.log | head -1 | cut -d'"' -f4 || true)
  [ -n "$ADDR" ] && break
  sleep 0.05
done
[ -n "$ADDR" ] || { echo "demo: trellis echo did not start" >&2; cat /tmp/trellis-demo.$$.log >&2; exit 1; }
fail=0
check() { # description, expected, actual
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: expected '$2', got '$3'"; fail=1; fi
}
check "GET / says hello" "hello" "$(curl -s --max-time 5 "http://$ADDR/")"
check "/status/503 answers 503" "503" "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://$ADDR/status/503")"
check "/echo returns the body" '"hi"' "$(curl -s --max-time 5 "http://$ADDR/echo" -d hi | grep -o '"body":"hi"' | cut -d: -f2)"
check "smuggling attempt is refused" "400" "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://$ADDR/echo" -H 'Transfer-Encoding: chunked' -H 'Content-Length: 3' -d abc)"
kill -TERM $PID
wait $PID && check "SIGTERM stops it cleanly" 0 0 || check "SIGTERM stops it cleanly" 0 $?
exit $fail
