#!/usr/bin/env bash
# trellis gateway vs nginx vs HAProxy as reverse proxies to the same `trellis echo` backend:
# each proxy one worker pinned to core 0, backend (1 worker) and wrk pinned to core 1,
# 64 keep-alive connections, upstream keep-alive on. Also the full chain (JWT RS256, rate
# limit, breaker, outlier detection, retries, access log, traceparent). Medians, ratios.
# Equal work: nginx and HAProxy add the request headers trellis adds by default
# (X-Forwarded-For/-Proto/-Host, Via, X-Request-ID, X-Correlation-ID, traceparent; the IDs
# also on the response), so the backend and wrk parse the same bytes behind every proxy.
# EQUAL_HEADERS=0 runs them bare instead; BACKEND_CPU=0 puts the backend on the proxies' core.
# Ratios are paired: each round runs every proxy back to back, the ratio is taken within the
# round and the median over rounds is printed, so a slow phase of the (virtual) machine hits
# both sides of a ratio instead of one.
# Usage: bench/gateway.sh [--duration 6] [--rounds 5] [--connections 64]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=6
ROUNDS=${ROUNDS:-5}
CONNS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "bench/gateway.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

TRELLIS=${TRELLIS_BIN:-build/trellis}
NGINX=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
HAPROXY=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}
for tool in wrk taskset openssl node curl "$NGINX" "$HAPROXY" "$TRELLIS"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/gateway.sh: $tool not found (run scripts/deps.sh and make build)" >&2; exit 1; }
done
NCPU=$(nproc)
SERVER_CPU=0                        # the proxy under test
CLIENT_CPU=$(( NCPU > 1 ? 1 : 0 ))  # wrk
BACKEND_CPU=${BACKEND_CPU:-$CLIENT_CPU}

WORK=$(mktemp -d /tmp/trellis-bench-gw.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# wait_http PORT [HEADER]: until GET / answers 2xx.
wait_http() {
  local hdr=()
  [ -n "${2:-}" ] && hdr=(-H "$2")
  for _ in $(seq 1 100); do
    curl -sf "${hdr[@]}" "http://127.0.0.1:$1/" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench/gateway.sh: server on :$1 did not start" >&2; return 1
}

# ---- backend: trellis echo, GET / answers "hello\n"
BACKEND_PORT=$(free_port)
taskset -c $BACKEND_CPU "$TRELLIS" echo --listen 127.0.0.1:$BACKEND_PORT --workers 1 --log-level warn \
  >"$WORK/backend.out" 2>&1 &
BACKEND_PID=$!
PIDS+=($BACKEND_PID)
wait_http "$BACKEND_PORT"

NGINX_HEADERS='      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header Via "1.1 nginx";
      proxy_set_header X-Correlation-ID $request_id;
      proxy_set_header X-Request-ID $request_id;
      proxy_set_header traceparent "00-$request_id-00f067aa0ba902b7-01";
      add_header X-Correlation-ID $request_id always;
      add_header X-Request-ID $request_id always;'
HAPROXY_HEADERS='  option forwardfor
  http-request set-var(txn.rid) uuid
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header Via "1.1 haproxy"
  http-request set-header X-Correlation-ID %[var(txn.rid)]
  http-request set-header X-Request-ID %[var(txn.rid)]
  http-request set-header traceparent 00-%[rand,hex]%[rand,hex]-00f067aa0ba902b7-01
  http-response set-header X-Correlation-ID %[var(txn.rid)]
  http-response set-header X-Request-ID %[var(txn.rid)]'
if [ "${EQUAL_HEADERS:-1}" = 0 ]; then NGINX_HEADERS=""; HAPROXY_HEADERS=""; fi

start_nginx() {
  local port=$1 user=""
  [ "$(id -u)" -eq 0 ] && user="user root;"
  mkdir -p "$WORK/nginx/logs"
  cat > "$WORK/nginx/nginx.conf" <<CONF
$user
worker_processes 1;
daemon off;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  # The headers trellis adds by default, so the backend parses the same request behind
  # every proxy (EQUAL_HEADERS=0 turns this off): X-Forwarded-*, Via, request and
  # correlation IDs (also on the response) and a traceparent (a constant span id: less
  # work for the peers than trellis's random one).
  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$port reuseport;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
$NGINX_HEADERS
    }
  }
}
CONF
  taskset -c $SERVER_CPU "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
    >"$WORK/nginx.out" 2>&1 &
  SERVER_PID=$!
  PIDS+=($SERVER_PID)
}

start_haproxy() {
  local port=$1
  cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
$HAPROXY_HEADERS
  server s1 127.0.0.1:$BACKEND_PORT
CONF
  taskset -c $SERVER_CPU "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 &
  SERVER_PID=$!
  PIDS+=($SERVER_PID)
}

# The full chain's JWT: an RS256 key pair made now, a token valid for an hour.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
make_token() {
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/jwt.key" 2>/dev/null
  openssl pkey -in "$WORK/jwt.key" -pubout -out "$WORK/jwt.pub" 2>/dev/null
  local now header payload sig
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
  payload=$(printf '{"iss":"https://bench.trellis","aud":"bench","sub":"bench-user","iat":%d,"exp":%d}' \
    "$now" $((now + 3600)) | b64url)
  sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$WORK/jwt.key" -binary | b64url)
  echo "$header.$payload.$sig"
}

start_trellis() {
  local port=$1 chain=$2
  if [ "$chain" = 0 ]; then
    cat > "$WORK/gateway-plain.yaml" <<CONF
access_log: off
upstreams:
  backend:
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
routes:
  - name: plain
    upstream: backend
CONF
  else
    # chain=2: the same chain with every request sampled and its spans exported over
    # OTLP/HTTP (to the backend's /status/200, which accepts and discards them).
    local tracing=""
    [ "$chain" = 2 ] && tracing="tracing: {endpoint: \"http://127.0.0.1:$BACKEND_PORT/status/200\", sampler: always_on}"
    cat > "$WORK/gateway-chain-$chain.yaml" <<CONF
$tracing
access_log: $WORK/access.log
upstreams:
  backend:
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
    circuit_breaker: {}
    outlier_detection: {}
routes:
  - name: chain
    upstream: backend
    auth:
      jwt:
        issuers: [https://bench.trellis]
        audiences: [bench]
        keys: [{file: $WORK/jwt.pub, alg: RS256}]
    rate_limit: {rate: 100000000/s}
    retry: {attempts: 2, retry_on: [5xx, connect-failure]}
CONF
  fi
  local cfg="$WORK/gateway-plain.yaml"
  [ "$chain" != 0 ] && cfg="$WORK/gateway-chain-$chain.yaml"
  taskset -c $SERVER_CPU "$TRELLIS" gateway -c "$cfg" --listen 127.0.0.1:$port --admin off \
    --workers 1 --log-level warn >"$WORK/trellis-$chain.out" 2>&1 &
  SERVER_PID=$!
  PIDS+=($SERVER_PID)
}

# Runs wrk once; prints "rps p50_ms p99_ms requests".
run_wrk() {
  local port=$1; shift
  taskset -c $CLIENT_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "http://127.0.0.1:$port/" > "$WORK/wrk.out"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    / requests in / { reqs=$1 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Socket errors|Non-2xx/ { err=err $0 " " }
    END { printf "%s %.3f %.3f %d\n", rps, p50, p99, reqs; if (err != "") print err > "/dev/stderr" }' "$WORK/wrk.out"
}

# The processes of a proxy: nginx is its master and worker, the others one process.
procs() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }
rss_kb() { local t=0; for p in $(procs "$1"); do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
cpu_ticks() { local t=0; for p in $(procs "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

alive() {
  kill -0 "${PID[$1]}" 2>/dev/null && return 0
  echo "bench/gateway.sh: $1 (pid ${PID[$1]}) died; its output:" >&2
  local f="$WORK/$1.out"
  case $1 in trellis) f="$WORK/trellis-0.out" ;; trellis-chain) f="$WORK/trellis-1.out" ;;
    trellis-traced) f="$WORK/trellis-2.out" ;; esac
  tail -20 "$f" >&2 || true
  exit 1
}

TOKEN=$(make_token)
AUTH="Authorization: Bearer $TOKEN"
TRACE="traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# All proxies run side by side on the same core, idle except the one under load; rounds
# alternate the order so a noisy moment on the machine hurts them alike.
NAMES=(nginx haproxy trellis trellis-chain trellis-traced)
declare -A PORT PID RPS P50 P99 RSS CPU
for name in "${NAMES[@]}"; do
  PORT[$name]=$(free_port)
  case $name in
    nginx) start_nginx "${PORT[$name]}" ;;
    haproxy) start_haproxy "${PORT[$name]}" ;;
    trellis) start_trellis "${PORT[$name]}" 0 ;;
    trellis-chain) start_trellis "${PORT[$name]}" 1 ;;
    trellis-traced) start_trellis "${PORT[$name]}" 2 ;;
  esac
  PID[$name]=$SERVER_PID
  hdrs=()
  [ $name = trellis-chain ] || [ $name = trellis-traced ] && hdrs=(-H "$AUTH" -H "$TRACE")
  wait_http "${PORT[$name]}" "${hdrs[1]:-}" || { alive $name; exit 1; }
  body=$(curl -s "${hdrs[@]}" "http://127.0.0.1:${PORT[$name]}/")
  [ "$body" = hello ] || { echo "bench/gateway.sh: $name answered \"$body\", not hello" >&2; exit 1; }
  taskset -c $CLIENT_CPU wrk -t1 -c"$CONNS" -d2s "${hdrs[@]}" "http://127.0.0.1:${PORT[$name]}/" >/dev/null # warm-up
  alive $name
  : > "$WORK/$name.runs"
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[trellis-chain]}/")" = 401 ] ||
  { echo "bench/gateway.sh: the chain route answers without a token; JWT is not in the path" >&2; exit 1; }

TICK=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
  order=("${NAMES[@]}")
  [ $((r % 2)) = 0 ] && order=(trellis-traced trellis-chain trellis haproxy nginx)
  for name in "${order[@]}"; do
    hdrs=()
    [ $name = trellis-chain ] || [ $name = trellis-traced ] && hdrs=(-H "$AUTH" -H "$TRACE")
    t0=$(cpu_ticks "${PID[$name]}")
    line=$(run_wrk "${PORT[$name]}" "${hdrs[@]}")
    t1=$(cpu_ticks "${PID[$name]}")
    alive $name
    # CPU time of the proxy process(es) per request, in microseconds
    cpu=$(awk -v a="$t0" -v b="$t1" -v n="$(echo "$line" | cut -d' ' -f4)" -v hz="$TICK" \
      'BEGIN { printf "%.2f", (n > 0 ? (b - a) / hz * 1e6 / n : 0) }')
    echo "$line $cpu" >> "$WORK/$name.runs"
    echo "$line $cpu" | awk -v n=$name -v r=$r '{printf "  %-13s round %d: %10.0f req/s  p50 %.3f ms  p99 %.3f ms  %5.2f us CPU/req\n", n, r, $1, $2, $3, $5}'
  done
done
for name in "${NAMES[@]}"; do
  RPS[$name]=$(awk '{print $1}' "$WORK/$name.runs" | median)
  P50[$name]=$(awk '{print $2}' "$WORK/$name.runs" | median)
  P99[$name]=$(awk '{print $3}' "$WORK/$name.runs" | median)
  CPU[$name]=$(awk '{print $5}' "$WORK/$name.runs" | median)
  RSS[$name]=$(rss_kb "${PID[$name]}")
done
lines=$(wc -l < "$WORK/access.log" 2>/dev/null || echo 0)

echo
printf "%-18s %12s %10s %10s %12s %10s\n" proxy "req/s" "p50 ms" "p99 ms" "CPU us/req" "RSS KiB"
for name in "${NAMES[@]}"; do
  label=$name
  [ $name = trellis-chain ] && label="trellis full chain"
  [ $name = trellis-traced ] && label="chain, 100% traced"
  printf "%-18s %12.0f %10.3f %10.3f %12.2f %10s\n" "$label" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${CPU[$name]}" "${RSS[$name]}"
done
echo "(nginx RSS and CPU: master + worker summed; haproxy and trellis: one process. Backend: trellis echo, 1 worker, core $BACKEND_CPU; wrk on core $CLIENT_CPU; proxies on core $SERVER_CPU. Chain access log: $lines lines.)"
# ratio A B COLUMN: the median over rounds of A's value / B's value in the same round.
ratio() {
  paste -d' ' "$WORK/$1.runs" "$WORK/$2.runs" |
    awk -v c="$3" '{ n = NF / 2; b = $(n + c); if (b > 0) print $c / b }' | median
}
awk -v tn="$(ratio trellis nginx 1)" -v th="$(ratio trellis haproxy 1)" \
    -v pn="$(ratio trellis nginx 3)" -v ph="$(ratio trellis haproxy 3)" \
    -v cn="$(ratio trellis nginx 5)" -v ch="$(ratio trellis haproxy 5)" \
    -v cp="$(ratio trellis-chain trellis 1)" -v tc="$(ratio trellis-traced trellis-chain 1)" 'BEGIN {
  printf "\nPaired ratios (median over rounds of the ratio within a round):\n"
  printf "trellis/nginx RPS %.3fx, trellis/haproxy RPS %.3fx\n", tn, th
  printf "p99 trellis/nginx %.3fx, p99 trellis/haproxy %.3fx (lower is better)\n", pn, ph
  printf "CPU per request trellis/nginx %.3fx, trellis/haproxy %.3fx (lower is better)\n", cn, ch
  printf "chain/plain RPS %.3fx\n", cp
  printf "chain with 100%% sampling / chain with tracing off RPS %.3fx\n", tc
  printf "\ngoals: RPS >= 1.0x nginx %s; RPS >= 1.0x haproxy %s; p99 <= nginx %s; p99 <= haproxy %s; chain >= 0.8x plain %s; tracing cost <= 10%% %s\n",
    (tn >= 1 ? "met" : "MISSED"), (th >= 1 ? "met" : "MISSED"), (pn <= 1 ? "met" : "MISSED"),
    (ph <= 1 ? "met" : "MISSED"), (cp >= 0.8 ? "met" : "MISSED"), (tc >= 0.9 ? "met" : "MISSED") }'
