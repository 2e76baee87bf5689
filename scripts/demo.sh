#!/usr/bin/env bash
# The main job: the loopback demo (opens tcpv_lo, connects QPs over TCP in each wire mode,
# moves data both ways, verifies it, prints what happened).  Extra arguments go to
# `tcpverbs demo` (--size BYTES, --count N).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec tcpverbs demo "$@"
