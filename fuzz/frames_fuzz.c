/* libFuzzer harness for the rc frame decoder (src/tcpverbs/_native/frames.c).
 *
 * Built with AddressSanitizer and UndefinedBehaviorSanitizer by scripts/fuzz.sh.  The
 * input's first two bytes choose the payload limit and the read size; the rest is the
 * peer's byte stream, delivered in reads of that size as an engine delivers it, payload
 * consumed as placed.  Besides the sanitizers' checks, the decoder's own contract is
 * asserted: it never claims more bytes than it was given, it always consumes something
 * unless it fails, a header's payload is what it says, once it fails it stays failed,
 * and every header it yields encodes (tv_encode_header) to bytes that decode to it again.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "frames.h"

/* encode *h, decode the bytes with a fresh decoder: the same header must come back */
static void check_round_trip(const tv_header *h, uint64_t max_payload) {
    static uint8_t wire[TV_MAX_HEADER + TV_MAX_REASON];
    static tv_decoder again;
    static tv_header back;
    size_t n = tv_encode_header(h, wire, sizeof wire);
    CHECK(n >= TV_BASE);
    tv_decoder_init(&again, max_payload);
    size_t used = 0;
    CHECK(tv_decode(&again, wire, n, &back, &used) == TV_HEADER && used == n);
    CHECK(memcmp(&back, h, offsetof(tv_header, reason)) == 0);
    CHECK(memcmp(back.reason, h->reason, h->reason_len) == 0);
}

static const uint64_t LIMITS[] = {0, 1, 64, 4096, 1u << 20, 2147483648u, UINT32_MAX};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    static tv_decoder d; /* large: static, not on the fuzzer's stack */
    static tv_header h;
    tv_decoder_init(&d, LIMITS[data[0] % (sizeof LIMITS / sizeof LIMITS[0])]);
    size_t read_size = (size_t)data[1] + 1;
    data += 2;
    size -= 2;
    while (size) {
        size_t n = size < read_size ? size : read_size;
        const uint8_t *chunk = data;
        size_t left = n;
        while (left) {
            if (d.payload_remaining) {
                uint64_t k = d.payload_remaining < left ? d.payload_remaining : left;
                CHECK(tv_payload_consumed(&d, k) == 0);
                chunk += k;
                left -= (size_t)k;
                continue;
            }
            size_t used = 0;
            int r = tv_decode(&d, chunk, left, &h, &used);
            CHECK(used <= left);
            if (r == TV_ERROR) {
                CHECK(d.error[0] != '\0');
                size_t again = 0;
                CHECK(tv_decode(&d, chunk, left, &h, &again) == TV_ERROR && again == 0);
                return 0;
            }
            CHECK(r == TV_NEED_MORE || r == TV_HEADER);
            CHECK(used > 0);
            if (r == TV_HEADER) {
                CHECK(tv_opcode_name(h.opcode) != NULL);
                CHECK(h.reason_len <= TV_MAX_REASON);
                CHECK(d.payload_remaining == h.payload_len);
                CHECK(h.payload_len <= d.max_payload || h.payload_len == 0);
                check_round_trip(&h, d.max_payload);
            } else {
                CHECK(used == left); /* a partial header is kept, all of it */
            }
            chunk += used;
            left -= used;
        }
        data += n;
        size -= n;
    }
    CHECK(tv_payload_consumed(&d, d.payload_remaining + 1) == -1);
    (void)tv_at_boundary(&d);
    return 0;
}
