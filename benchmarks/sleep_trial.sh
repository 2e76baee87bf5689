#!/usr/bin/env bash
# The sleep trial (benchmarks/sleep_trial.c): an 8-byte ping-pong in C whose two sides
# wait in a blocking recv, in ppoll then recv (what the native engine's sleepers do), or
# in epoll_wait then recv.  Interleaved rounds; prints each run and the medians.
#   benchmarks/sleep_trial.sh [rounds, default 5] [iterations, default 20000]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS="${1:-5}"
ITERS="${2:-20000}"
BIN="${TMPDIR:-/tmp}/sleep_trial"
gcc -std=c11 -O2 -g -Wall -Wextra -Werror -o "$BIN" "$HERE/sleep_trial.c"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
for _ in $(seq "$ROUNDS"); do
    for mode in recv ppoll epoll; do
        "$BIN" "$mode" "$ITERS" | tee -a "$OUT"
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'mode':6} {'one-way us (median of runs)':>28} {'p99 us':>8}")
for mode in ("recv", "ppoll", "epoll"):
    rs = [r for r in runs if r["mode"] == mode]
    print(f"{mode:6} {statistics.median(r['one_way_us'] for r in rs):>28.2f} "
          f"{statistics.median(r['p99_us'] for r in rs):>8.2f}")
PY
