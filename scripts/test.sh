#!/usr/bin/env bash
# The whole test suite: lint, types, and pytest (unit, loopback, multi-process, netns).
# Installs what the tests need; tests whose kernel feature or tool is missing skip with a reason.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

# Tools for the multi-host and interop tests (iproute2 for netns/veth/netem, nftables for
# black holes, socat, nc), for fuzzing the C code (clang brings libFuzzer and the
# sanitizers) and for the io_uring trial's program (liburing).
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v socat >/dev/null || need+=(socat)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v clang >/dev/null || need+=(clang)
[ -e /usr/include/liburing.h ] || need+=(liburing-dev)
if [ "${#need[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} for the network tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" \
        >/dev/null) || echo "could not install ${need[*]}; those tests will skip"
fi
# netem lives in a kernel module that may need loading.
if [ "$(id -u)" = 0 ] && command -v modprobe >/dev/null; then
    modprobe -q sch_netem 2>/dev/null || true
fi

# the native extension is built by the install above: its tests must not skip here
export TCPVERBS_REQUIRE_NATIVE=1

echo "== ruff" && ruff check src tests examples benchmarks scripts
echo "== ruff format --check" && ruff format --check src tests examples benchmarks scripts
echo "== mypy" && mypy
echo "== rdma-core's pyverbs suite through the pyverbs face (issue #11: a report; every"
echo "   module must load and finish in time)"
python scripts/rdma_core_suite.py --strict --timeout 300 || [ $? -eq 3 ]
echo "== pytest (branch coverage; the floor is enforced)"
exec python -m pytest --cov=tcpverbs --cov=pyverbs --cov-branch --cov-report=term:skip-covered \
    --cov-fail-under=90 "$@"
