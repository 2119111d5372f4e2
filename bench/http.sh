#!/usr/bin/env bash
# trellis echo vs nginx `return 200 "hello\n"`: one worker each pinned to the same core,
# wrk pinned to the other core, 64 keep-alive connections. Prints medians and ratios.
# Usage: bench/http.sh [--duration 10] [--rounds 3] [--connections 64]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10
ROUNDS=3
CONNS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "bench/http.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

TRELLIS=${TRELLIS_BIN:-build/trellis}
NGINX=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
for tool in wrk taskset "$NGINX" "$TRELLIS"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/http.sh: $tool not found (run scripts/deps.sh and make build)" >&2; exit 1; }
done
NCPU=$(nproc)
SERVER_CPU=0
CLIENT_CPU=$(( NCPU > 1 ? 1 : 0 ))

WORK=$(mktemp -d /tmp/trellis-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

wait_http() {
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$1/" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "bench/http.sh: server on :$1 did not start" >&2; return 1
}

start_nginx() {
  local port=$1
  mkdir -p "$WORK/nginx/logs"
  cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
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
  server {
    listen 127.0.0.1:$port reuseport;
    location / { default_type text/plain; return 200 "hello\n"; }
  }
}
CONF
  taskset -c $SERVER_CPU "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
    >"$WORK/nginx.out" 2>&1 &
  SERVER_PID=$!
  PIDS+=($SERVER_PID)
}

start_trellis() {
  local port=$1
  taskset -c $SERVER_CPU "$TRELLIS" echo --listen 127.0.0.1:$port --workers 1 --log-level warn \
    >"$WORK/trellis.out" 2>&1 &
  SERVER_PID=$!
  PIDS+=($SERVER_PID)
}

# Runs wrk once; prints "rps p50_ms p99_ms".
run_wrk() {
  local port=$1
  taskset -c $CLIENT_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" > "$WORK/wrk.out"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Socket errors|Non-2xx/ { err=err $0 " " }
    END { printf "%s %.3f %.3f\n", rps, p50, p99; if (err != "") print err > "/dev/stderr" }' "$WORK/wrk.out"
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Both servers run side by side on the same core; rounds alternate between them so a
# noisy moment on the machine hurts both alike.
declare -A PORT PID RPS P50 P99 RSS CPU
for name in nginx trellis; do
  PORT[$name]=$(free_port)
  if [ $name = nginx ]; then start_nginx "${PORT[$name]}"; else start_trellis "${PORT[$name]}"; fi
  PID[$name]=$SERVER_PID
  wait_http "${PORT[$name]}"
  taskset -c $CLIENT_CPU wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${PORT[$name]}/" >/dev/null # warm-up
  : > "$WORK/$name.runs"
done
TICK=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
  for name in nginx trellis; do
    t0=$(cpu_ticks "${PID[$name]}")
    line=$(run_wrk "${PORT[$name]}")
    t1=$(cpu_ticks "${PID[$name]}")
    # CPU time of the server process per request, in microseconds
    cpu=$(awk -v a="$t0" -v b="$t1" -v rps="$(echo "$line" | cut -d' ' -f1)" -v d="$DURATION" -v hz="$TICK" \
      'BEGIN { printf "%.2f", (b - a) / hz * 1e6 / (rps * d) }')
    echo "$line $cpu" >> "$WORK/$name.runs"
    echo "$line $cpu" | awk -v n=$name -v r=$r '{printf "  %-8s round %d: %10.0f req/s  p50 %.3f ms  p99 %.3f ms  %5.2f us CPU/req\n", n, r, $1, $2, $3, $4}'
  done
done
for name in nginx trellis; do
  RPS[$name]=$(awk '{print $1}' "$WORK/$name.runs" | median)
  P50[$name]=$(awk '{print $2}' "$WORK/$name.runs" | median)
  P99[$name]=$(awk '{print $3}' "$WORK/$name.runs" | median)
  CPU[$name]=$(awk '{print $4}' "$WORK/$name.runs" | median)
  RSS[$name]=$(rss_kb "${PID[$name]}")
done

echo
printf "%-10s %12s %10s %10s %12s %10s\n" server "req/s" "p50 ms" "p99 ms" "CPU us/req" "RSS KiB"
for name in nginx trellis; do
  printf "%-10s %12.0f %10.3f %10.3f %12.2f %10s\n" $name "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}" "${CPU[$name]}" "${RSS[$name]}"
done
awk -v a="${RPS[trellis]}" -v b="${RPS[nginx]}" -v c="${P99[trellis]}" -v d="${P99[nginx]}" \
    -v e="${CPU[trellis]}" -v f="${CPU[nginx]}" 'BEGIN {
  printf "\ntrellis/nginx: throughput %.3fx, p99 %.3fx, CPU per request %.3fx (lower is better for both)\n",
    a/b, (d > 0 ? c/d : 0), (f > 0 ? e/f : 0) }'
