#!/usr/bin/env bash
# The tests with the C extension built under AddressSanitizer + UndefinedBehaviorSanitizer:
#   scripts/asan.sh [pytest arguments]      (default: the whole suite)
# Python itself is not instrumented, so the sanitizer runtimes are preloaded and leak
# checking is off (the interpreter keeps memory until exit).  The normal build is put
# back afterwards, whatever happens.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
rebuild() { python -m pip install --quiet -e "$ROOT" >/dev/null; }
trap rebuild EXIT
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
    LDFLAGS="-fsanitize=address,undefined" python -m pip install --quiet -e "$ROOT"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export TCPVERBS_REQUIRE_NATIVE=1
python -m pytest -p no:cacheprovider "$@"
