#!/usr/bin/env bash
# The benchmark: tcpverbs against plain Python sockets (and iperf3 when installed), on
# loopback, in one run.  Prints the table, writes benchmarks/results/latest.json and a PNG.
# Pass --quick for a short smoke run.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pip install --quiet -e "$ROOT[bench]"
if ! command -v iperf3 >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 \
        >/dev/null) || echo "iperf3 not installed; its column stays empty"
fi
exec python benchmarks/compare.py "$@"
