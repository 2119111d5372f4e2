#!/bin/sh
# Runs every libFuzzer target in a build directory for a while, each from its seed corpus.
# Usage: tests/fuzz/run.sh BUILD_DIR SECONDS
# Build first: CC=clang cmake -S . -B BUILD_DIR -G Ninja -DTR_FUZZ=ON && ninja -C BUILD_DIR
# Generated inputs go to a scratch directory, never into the repository. Exits 1 when any
# target crashed (or leaked, or timed out), 2 on bad usage.
set -u

if [ $# -ne 2 ] || [ ! -d "$1" ]; then
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
fi
build=$1
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/trellis-fuzz.XXXXXX")
status=0
ran=0

for bin in "$build"/fuzz_*; do
    [ -x "$bin" ] && [ -f "$bin" ] || continue
    name=$(basename "$bin")
    short=${name#fuzz_}
    corpus=$scratch/$short/corpus
    artifacts=$scratch/$short/artifacts
    mkdir -p "$corpus" "$artifacts"
    if [ -d "$here/seeds/$short" ]; then
        cp -R "$here/seeds/$short/." "$corpus/"
    fi
    log=$scratch/$short/log
    "$bin" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1
    rc=$?
    ran=$((ran + 1))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    findings=$(find "$artifacts" -type f | wc -l | tr -d ' ')
    printf '%-24s execs %-10s exec/s %-8s findings %s\n' "$name" "${execs:-?}" "${speed:-?}" \
        "$findings"
    if [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ]; then
        status=1
        echo "  $name failed (exit $rc); log: $log" >&2
        find "$artifacts" -type f -exec echo "  finding: {}" \; >&2
        grep -m 5 -E 'ERROR|SUMMARY|abort' "$log" | sed 's/^/  /' >&2
    fi
done

if [ "$ran" -eq 0 ]; then
    echo "no fuzz_* targets in $build (configure with -DTR_FUZZ=ON and build)" >&2
    exit 2
fi
if [ "$status" -eq 0 ]; then rm -rf "$scratch"; else echo "scratch kept: $scratch" >&2; fi
exit "$status"
