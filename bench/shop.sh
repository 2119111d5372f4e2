#!/usr/bin/env bash
# The shop through the gateway: `trellis up examples/shop/topology.yaml` (every service two
# replicas, the gateway checking each request's RS256 JWT), then wrk with 64 keep-alive
# connections on GET /api/v1/products/{id} for --seconds, and the RSS of the shop's
# processes idle. The per-user rate limit of the topology is lifted for the run (a copy of
# the topology in a temp dir; everything else as shipped), since wrk is one user.
# Usage: bench/shop.sh [--seconds 10] [--connections 64] [--workers 1]
#        (TRELLIS_BIN defaults to build/trellis; needs the topology's ports free)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN=10
CONNS=64
WORKERS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "bench/shop.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
BIN=$(realpath "${TRELLIS_BIN:-build/trellis}")
for tool in wrk node "$BIN"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/shop.sh: $tool not found (make deps build)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/trellis-bench-shop.XXXXXX)
UP=""
cleanup() { [ -n "$UP" ] && kill -TERM "$UP" 2>/dev/null && wait "$UP" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# The topology as shipped, with absolute commands, its data in WORK, no rate limits.
node -e '
const fs = require("fs"), path = require("path");
const [src, dst, work, root] = process.argv.slice(1);
let t = fs.readFileSync(src, "utf8");
t = t.replace(/command: \.\.\/\.\.\/build\//g, `command: ${root}/build/`)
     .replace(/data_dir: \.\/\.trellis/, `data_dir: ${work}/data`)
     .replace(/SHOP_DATA_DIR: \.\/\.trellis\/shop/g, `SHOP_DATA_DIR: ${work}/shop`)
     .replace(/^\s*rate_limit:.*\n/gm, "");
fs.writeFileSync(dst, t);
' examples/shop/topology.yaml "$WORK/topology.yaml" "$WORK" "$(pwd)"
[ "$BIN" = "$(pwd)/build/trellis" ] || sed -i "s|$(pwd)/build/|$(dirname "$BIN")/|g" "$WORK/topology.yaml"

"$BIN" up "$WORK/topology.yaml" --workers "$WORKERS" --log-format json 2> "$WORK/up.log" > /dev/null &
UP=$!
for _ in $(seq 1 600); do
  grep -q '"msg":"up: all services ready"' "$WORK/up.log" && break
  kill -0 "$UP" 2>/dev/null || { echo "bench/shop.sh: trellis up exited:" >&2; tail -20 "$WORK/up.log" >&2; exit 1; }
  sleep 0.1
done
GW=http://127.0.0.1:8080
TOKEN=""
for _ in $(seq 1 50); do
  TOKEN=$(curl -s --max-time 2 "$GW/api/v1/auth/token" -d '{"username":"bench","password":"demo"}' |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{console.log(JSON.parse(s).access_token||"")}catch{}})')
  [ -n "$TOKEN" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$GW/api/v1/products/1")" = 200 ] && break
  sleep 0.2
done
[ -n "$TOKEN" ] || { echo "bench/shop.sh: no token from the auth service" >&2; exit 1; }

# Idle RSS of one replica of each service, before the load.
rss_of() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
SERVICES=$(curl -s "http://127.0.0.1:8500/api/services")
echo "idle RSS (one replica each):"
for svc in auth catalog customer inventory order; do
  pid=$(node -e 'const s=JSON.parse(process.argv[1]).find(x=>x.name===process.argv[2]);console.log(s.instances[0].pid)' "$SERVICES" "$svc")
  printf '  %-10s %6s KiB\n' "$svc" "$(rss_of "$pid")"
done
printf '  %-10s %6s KiB  (control plane + gateway, %s worker)\n' "trellis up" "$(rss_of "$UP")" "$WORKERS"

echo "wrk: $CONNS connections, ${SECONDS_RUN}s, GET /api/v1/products/{1..12} with a JWT, through the gateway"
cat > "$WORK/ids.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/v1/products/" .. ((n % 12) + 1))
end
LUA
wrk -t2 -c"$CONNS" -d"${SECONDS_RUN}s" --latency -H "Authorization: Bearer $TOKEN" -s "$WORK/ids.lua" "$GW" |
  grep -E "Requests/sec|Latency|50%|99%|Non-2xx|Socket errors" || true
