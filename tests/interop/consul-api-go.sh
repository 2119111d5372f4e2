#!/usr/bin/env bash
# Interop: Debian's golang-github-armon-consul-api-dev ships a Go Consul client together with
# its own test suite (41 tests: kv, agent, catalog, health, session, event, status, acl). The
# suite talks to a Consul agent at 127.0.0.1:8500 (hardcoded in the client's DefaultConfig).
# This script runs that suite UNCHANGED, in GOPATH mode straight from /usr/share/gocode (no
# module proxy, nothing copied or patched), against `trellis registry --listen 127.0.0.1:8500`.
#
# The ACL tests skip themselves unless CONSUL_ROOT (a Consul management token) is set; trellis
# has no ACL system, so this script unsets CONSUL_ROOT and they skip, as the suite intends.
#
# Environment (as for the e2e tests):
#   TRELLIS_BIN        the trellis binary (default: build/trellis in this repo)
#   TRELLIS_SANITIZED  set for an ASan/UBSan build: deadlines x3, stderr checked for reports
#   INTEROP_KEEP=1     keep the temp dir (registry logs, go test output) for inspection
#
# Prints every test's result, then a closing line "N passed, M failed, K skipped". Exits
# non-zero if any test failed or did not run, if the registry could not start or did not exit
# 0 on SIGTERM, or (sanitized build) if it reported an error.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

PKG=github.com/armon/consul-api
GOPATH_DEB=/usr/share/gocode
ADDR=127.0.0.1
PORT=8500
SLOW=1
if [ -n "${TRELLIS_SANITIZED:-}" ]; then
  SLOW=3
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
fi
START_DEADLINE=$((10 * SLOW))   # seconds for the "listening" line
GO_DEADLINE=$((240 * SLOW))     # seconds for the whole go test run
STOP_DEADLINE=$((15 * SLOW))    # seconds for exit after SIGTERM

BIN="${TRELLIS_BIN:-$root/build/trellis}"
case "$BIN" in /*) ;; *) BIN="$root/$BIN" ;; esac

say() { echo "consul-api-go: $*"; }
die() { echo "consul-api-go: FAIL: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "trellis binary not found or not executable: $BIN (build it: ninja -C build trellis)"
command -v go >/dev/null 2>&1 || die "'go' not found (Debian golang-go): run scripts/deps.sh"
[ -f "$GOPATH_DEB/src/$PKG/api_test.go" ] ||
  die "$GOPATH_DEB/src/$PKG not found (Debian golang-github-armon-consul-api-dev): run scripts/deps.sh"
command -v timeout >/dev/null 2>&1 || die "'timeout' (coreutils) not found"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/trellis-interop-go.XXXXXX")" || die "mktemp failed"
data="$tmp/data"
mkdir -p "$data" "$tmp/gocache"
regpid=""

cleanup() {
  if [ -n "$regpid" ] && kill -0 "$regpid" 2>/dev/null; then
    kill -KILL "$regpid" 2>/dev/null
    wait "$regpid" 2>/dev/null
  fi
  if [ -n "${INTEROP_KEEP:-}" ]; then
    echo "consul-api-go: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_registry_log() {
  echo "---- trellis registry stderr (last 40 lines) ----" >&2
  tail -n 40 "$tmp/registry.err" >&2 2>/dev/null
  echo "----" >&2
}

# The suite hardcodes 127.0.0.1:8500, so only one run at a time can work on this machine.
# Serialize runs of this script (e.g. release and ASan under `make -j`), then insist the port
# is free: anything else there would be tested instead of trellis.
lock="${TMPDIR:-/tmp}/trellis-interop-$PORT.lock"
exec 9>"$lock" || die "cannot open lock file $lock"
if ! flock -w $((300 * SLOW)) 9; then
  die "another run of this script held $lock for too long"
fi
if (exec 3<>"/dev/tcp/$ADDR/$PORT") 2>/dev/null; then
  holder="$( (ss -ltnp "sport = :$PORT" 2>/dev/null || true) | tail -n +2)"
  die "port $ADDR:$PORT is busy (the consul-api suite hardcodes it); stop whatever listens there first${holder:+:
$holder}"
fi

# Build the test binary before the registry starts, so compile errors are told apart from
# test failures. GOPATH mode, no network: GOPROXY=off, GOFLAGS cleared (no -mod=...).
export GO111MODULE=off GOPATH="$GOPATH_DEB" GOCACHE="$tmp/gocache" GOPROXY=off GOFLAGS= \
  GOTOOLCHAIN=local CGO_ENABLED=0
unset CONSUL_ROOT CONSUL_HTTP_ADDR CONSUL_HTTP_TOKEN
say "go: $(go version)"
if ! (cd "$tmp" && timeout $((180 * SLOW)) go test -c -o "$tmp/consul-api.test" "$PKG") \
    >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  die "could not build the $PKG tests"
fi
mapfile -t expected < <("$tmp/consul-api.test" -test.list '.*' | grep '^Test')
[ "${#expected[@]}" -gt 0 ] || die "the $PKG test binary lists no tests"

say "starting $BIN registry --listen $ADDR:$PORT"
"$BIN" registry --listen "$ADDR:$PORT" --data-dir "$data" --log-format json \
  </dev/null >"$tmp/registry.out" 2>"$tmp/registry.err" &
regpid=$!

deadline=$((SECONDS + START_DEADLINE))
until grep -q '"msg":"listening"' "$tmp/registry.err" 2>/dev/null; do
  if ! kill -0 "$regpid" 2>/dev/null; then
    wait "$regpid"; rc=$?; regpid=""
    show_registry_log
    if grep -qiE 'in use|EADDRINUSE' "$tmp/registry.err"; then
      die "trellis registry could not bind $ADDR:$PORT: port busy (exit $rc)"
    fi
    die "trellis registry exited with status $rc before logging \"listening\""
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    show_registry_log
    die "trellis registry did not log \"listening\" within ${START_DEADLINE}s"
  fi
  sleep 0.1
done
say "registry up (pid $regpid): $(grep -m1 '"msg":"listening"' "$tmp/registry.err")"

# Run the suite unchanged. `go test` reuses the binary built above from GOCACHE.
say "running: go test -v -count=1 $PKG (GOPATH=$GOPATH, GO111MODULE=off, deadline ${GO_DEADLINE}s)"
(cd "$tmp" && timeout --kill-after=10 "$GO_DEADLINE" \
  go test -v -count=1 -timeout "$((GO_DEADLINE - 10))s" "$PKG") 2>&1 | tee "$tmp/go.log"
gorc=${PIPESTATUS[0]}
[ "$gorc" -eq 124 ] && say "go test was stopped after ${GO_DEADLINE}s"

# Stop the registry: SIGTERM must end it with status 0 within the deadline.
problems=()
if kill -0 "$regpid" 2>/dev/null; then
  kill -TERM "$regpid"
  deadline=$((SECONDS + STOP_DEADLINE))
  while kill -0 "$regpid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if kill -0 "$regpid" 2>/dev/null; then
    kill -KILL "$regpid"; wait "$regpid" 2>/dev/null; regpid=""
    problems+=("trellis registry did not exit within ${STOP_DEADLINE}s of SIGTERM")
  else
    wait "$regpid"; regrc=$?; regpid=""
    [ "$regrc" -eq 0 ] || problems+=("trellis registry exited with status $regrc after SIGTERM (want 0)")
  fi
else
  wait "$regpid"; regrc=$?; regpid=""
  problems+=("trellis registry died during the suite (status $regrc)")
fi
if [ -n "${TRELLIS_SANITIZED:-}" ] &&
   grep -qE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:' "$tmp/registry.err"; then
  problems+=("sanitizer report in trellis registry stderr")
fi

# Per-test results from `go test -v` ("--- PASS/FAIL/SKIP: TestName (0.00s)").
declare -A result=()
while read -r _ st name _; do
  st="${st%:}"
  result["$name"]="$st"
done < <(grep -E '^\s*--- (PASS|FAIL|SKIP): ' "$tmp/go.log")

pass=0 fail=0 skip=0
failed=() skipped=()
echo
say "per-test results:"
for t in "${expected[@]}"; do
  st="${result[$t]:-NOT-RUN}"
  case "$st" in
    PASS) pass=$((pass + 1)) ;;
    SKIP) skip=$((skip + 1)); skipped+=("$t") ;;
    *) fail=$((fail + 1)); failed+=("$t") ;;
  esac
  printf '  %-8s %s\n' "$st" "$t"
done
if [ "${#skipped[@]}" -gt 0 ]; then
  say "skipped: ${skipped[*]}"
  for t in "${skipped[@]}"; do
    case "$t" in TestACL_*) ;; *) say "note: $t skipped (not an ACL test)";; esac
  done
  say "(the TestACL_* tests skip by themselves without CONSUL_ROOT; trellis has no ACLs)"
fi
[ "${#failed[@]}" -gt 0 ] && problems+=("failed or not run: ${failed[*]}")
if [ "$gorc" -ne 0 ] && [ "$fail" -eq 0 ]; then
  problems+=("go test exited with status $gorc although no test failed")
fi

if [ "${#problems[@]}" -gt 0 ]; then
  for p in "${problems[@]}"; do echo "consul-api-go: FAIL: $p" >&2; done
  show_registry_log
fi
echo "$pass passed, $fail failed, $skip skipped"
[ "${#problems[@]}" -eq 0 ]
