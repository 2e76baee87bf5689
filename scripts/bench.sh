#!/usr/bin/env bash
# The benchmark: tcpverbs against plain Python sockets, pyzmq and iperf3, on loopback, in one run.
# Prints the tables, writes benchmarks/results/latest.json and two PNGs.
# Pass --quick for a short smoke run, --rounds N for more (or fewer) repetitions.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python -m pip install --quiet -e "$ROOT[bench]"
# iperf3 is a peer in the tables; perf counts every process's system calls.
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v perf >/dev/null || need+=(linux-perf)
if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" \
        >/dev/null) || echo "could not install ${need[*]}; their columns stay empty"
fi
exec python benchmarks/compare.py "$@"
