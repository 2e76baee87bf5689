#!/usr/bin/env bash
# The io_uring trial of issue #10 (benchmarks/io_uring_trial.c): today's system calls
# against io_uring (multishot receive into provided buffers, sends as SQEs), doing what
# the native engine's hot path does, over loopback.  Interleaved rounds; prints each run
# and the medians.  Installs liburing-dev with apt when it is missing (root).
#   benchmarks/io_uring_trial.sh [rounds, default 3]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROUNDS="${1:-3}"
if [ ! -e /usr/include/liburing.h ]; then
    apt-get install -y -qq liburing-dev >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq liburing-dev >/dev/null; }
fi
BIN="${TMPDIR:-/tmp}/io_uring_trial"
gcc -std=c11 -O2 -g -Wall -Wextra -Werror -o "$BIN" "$HERE/io_uring_trial.c" -luring -lpthread
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
for _ in $(seq "$ROUNDS"); do
    for mode in calls uring uring-defer; do
        "$BIN" "$mode" rate 2000000 64 64 | tee -a "$OUT"
        "$BIN" "$mode" rate 20000 65536 4 | tee -a "$OUT"
        "$BIN" "$mode" pingpong 50000 8 | tee -a "$OUT"
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
keys = sorted({(r["test"], r["size"]) for r in runs})
print(f"{'test':10} {'size':>6} {'mode':11} {'msg/s (median)':>15} {'us/msg':>8} "
      f"{'sender calls/msg':>17} {'receiver calls/msg':>19}")
for test, size in keys:
    for mode in ("calls", "uring", "uring-defer"):
        rs = [r for r in runs if (r["test"], r["size"], r["mode"]) == (test, size, mode)]
        rate = statistics.median(r["messages"] / r["seconds"] for r in rs)
        snd = statistics.median(r["sender_calls"] / r["messages"] for r in rs)
        rcv = statistics.median(r["receiver_calls"] / r["messages"] for r in rs)
        print(f"{test:10} {size:>6} {mode:11} {rate:>15,.0f} {1e6 / rate:>8.2f} "
              f"{snd:>17.3f} {rcv:>19.3f}")
PY
