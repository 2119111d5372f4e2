#!/usr/bin/env bash
# Installs everything the build, tests, demo and benchmarks need. Idempotent.
# Usage: scripts/deps.sh [--no-npm]
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  build-essential cmake ninja-build pkg-config git curl ca-certificates procps
  clang clang-format libclang-rt-14-dev
  libuv1-dev libhttp-parser-dev libjansson-dev libcjson-dev libyaml-dev libsqlite3-dev
  libssl-dev libcmocka-dev
  nodejs
  wrk nginx-light haproxy prometheus
  golang-go golang-github-armon-consul-api-dev python3-consul
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# npm ships inside some nodejs builds (e.g. nodesource); only ask Debian for it when absent.
if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# nginx-light's and haproxy's packages start system services; the benchmarks run their own.
for svc in nginx haproxy prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet $svc 2>/dev/null; then
    $SUDO systemctl stop $svc || true
  fi
done

if [ "${1:-}" != "--no-npm" ] && [ -f tests/e2e/package.json ]; then
  stamp=tests/e2e/node_modules/.deps-stamp
  if [ ! -f "$stamp" ] || [ tests/e2e/package-lock.json -nt "$stamp" ]; then
    (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
    mkdir -p tests/e2e/node_modules && touch "$stamp"
  fi
fi
