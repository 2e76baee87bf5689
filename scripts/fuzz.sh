#!/usr/bin/env bash
# Fuzz the native engine's C code that a peer's (or the kernel's) bytes reach (the frame
# decoder, the rc requester's window, the whole rc connection, the zerocopy bookkeeping,
# the UD datagram codec, a UD QP's receive path)
# with libFuzzer under AddressSanitizer and
# UndefinedBehaviorSanitizer:  scripts/fuzz.sh [seconds per harness, default 60]
# Needs clang (Debian: apt-get install clang).  Finds a crash -> non-zero exit, with the
# input saved under fuzz/crashes/ and the sanitizer's report on stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_HARNESS="${1:-60}"
CC="${CC:-clang}"
OUT="${TMPDIR:-/tmp}/tcpverbs-fuzz"
mkdir -p "$OUT" "$ROOT/fuzz/crashes"
NATIVE="$ROOT/src/tcpverbs/_native"
FLAGS=(-std=c11 -g -O1 -Wall -Wextra -Werror -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I "$NATIVE"
       -I "$ROOT/tests/native")

"$CC" "${FLAGS[@]}" "$ROOT/fuzz/frames_fuzz.c" "$NATIVE/frames.c" -o "$OUT/frames_fuzz"
"$CC" "${FLAGS[@]}" "$ROOT/fuzz/requester_fuzz.c" "$NATIVE/requester.c" "$NATIVE/rcproto.c" \
    -o "$OUT/requester_fuzz"
"$CC" "${FLAGS[@]}" "$ROOT/fuzz/zerocopy_fuzz.c" "$NATIVE/zerocopy.c" -o "$OUT/zerocopy_fuzz"
"$CC" "${FLAGS[@]}" "$ROOT/fuzz/ud_fuzz.c" "$NATIVE/ud.c" -o "$OUT/ud_fuzz"
ENGINE_C=(engine.c cq.c qp.c srq.c conn.c stream.c udconn.c ud.c rcconn.c zerocopy.c frames.c
          rcproto.c requester.c ring.c memtable.c)
"$CC" "${FLAGS[@]}" -pthread "$ROOT/fuzz/responder_fuzz.c" "${ENGINE_C[@]/#/$NATIVE/}" \
    -o "$OUT/responder_fuzz"
"$CC" "${FLAGS[@]}" -pthread "$ROOT/fuzz/ud_receive_fuzz.c" "${ENGINE_C[@]/#/$NATIVE/}" \
    -o "$OUT/ud_receive_fuzz"
corpus="$OUT/frames_corpus"
mkdir -p "$corpus"
# seed the corpus with the golden vectors' streams (2 leading bytes: limit, read size)
python3 - "$ROOT/tests/golden/frames.json" "$corpus" <<'PY'
import json, pathlib, sys
golden, corpus = json.loads(pathlib.Path(sys.argv[1]).read_text()), pathlib.Path(sys.argv[2])
for kind in ("vectors", "malformed", "truncated"):
    for i, vec in enumerate(golden[kind]):
        (corpus / f"{kind}-{i}").write_bytes(b"\x03\xff" + bytes.fromhex(vec["hex"]))
PY
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# fuzz HARNESS WHAT MAX_LEN CORPUS: one harness for the time given
fuzz() {
    echo "fuzzing $2 for ${SECONDS_PER_HARNESS} s"
    mkdir -p "$4"
    "$OUT/$1" -max_total_time="$SECONDS_PER_HARNESS" -max_len="$3" \
        -artifact_prefix="$ROOT/fuzz/crashes/" -print_final_stats=1 "$4"
}
fuzz frames_fuzz "the frame decoder" 4096 "$corpus"
fuzz requester_fuzz "the requester's window" 512 "$OUT/requester_corpus"
mkdir -p "$OUT/responder_corpus"
cp "$corpus"/* "$OUT/responder_corpus/" 2>/dev/null || true # frames make good seeds
fuzz responder_fuzz "the rc connection" 4096 "$OUT/responder_corpus"
fuzz zerocopy_fuzz "the zerocopy bookkeeping" 1024 "$OUT/zerocopy_corpus"
mkdir -p "$OUT/ud_corpus"
python3 - "$ROOT/tests/golden/ud.json" "$OUT/ud_corpus" <<'PY'
import json, pathlib, sys
golden, corpus = json.loads(pathlib.Path(sys.argv[1]).read_text()), pathlib.Path(sys.argv[2])
for kind in ("valid", "invalid"):
    for i, vec in enumerate(golden[kind]):
        (corpus / f"{kind}-{i}").write_bytes(bytes.fromhex(vec["hex"]))
PY
fuzz ud_fuzz "the UD datagram codec" 2048 "$OUT/ud_corpus"
mkdir -p "$OUT/ud_receive_corpus"
python3 - "$ROOT/tests/golden/ud.json" "$OUT/ud_receive_corpus" <<'PY'
import json, pathlib, sys
golden, corpus = json.loads(pathlib.Path(sys.argv[1]).read_text()), pathlib.Path(sys.argv[2])
for i, vec in enumerate(golden["valid"]):  # as records: flags (patch QP and Q_Key), length
    data = bytes.fromhex(vec["hex"])
    (corpus / f"valid-{i}").write_bytes(b"\x03" + len(data).to_bytes(2, "big") + data)
PY
fuzz ud_receive_fuzz "a UD QP's receive path" 8192 "$OUT/ud_receive_corpus"
