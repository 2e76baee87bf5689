/* libFuzzer harness for the UD datagram codec (src/tcpverbs/_native/ud.c): any bytes a
 * peer may send as a UDP datagram.  Checked besides the sanitizers: a datagram the
 * decoder accepts encodes back to its first 24 bytes; one it refuses comes with a
 * message; the GRH of any two addresses parses back to them (IPv4 header at byte 20
 * when both are IPv4-mapped, else an IPv6 header). */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "ud.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tv_ud_header h;
    char err[TV_UD_ERROR_LEN];
    err[0] = '\0';
    if (tv_ud_decode(data, size, &h, err) == 0) {
        uint8_t again[TV_UD_HEADER];
        CHECK(tv_ud_encode(&h, again) == 0);
        CHECK(memcmp(again, data, TV_UD_HEADER) == 0);
    } else {
        CHECK(err[0] != '\0');
    }
    if (size >= 36) { /* two addresses and a length from the input */
        uint8_t src[16], dst[16], grh[TV_GRH];
        memcpy(src, data, 16);
        memcpy(dst, data + 16, 16);
        uint32_t len = (uint32_t)data[32] << 24 | (uint32_t)data[33] << 16 |
                       (uint32_t)data[34] << 8 | data[35];
        tv_ud_grh(src, dst, len, grh);
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(src, mapped, 12) == 0 && memcmp(dst, mapped, 12) == 0) {
            CHECK(grh[20] == 0x45);
            CHECK(memcmp(grh + 32, src + 12, 4) == 0 && memcmp(grh + 36, dst + 12, 4) == 0);
        } else {
            CHECK(grh[0] >> 4 == 6);
            CHECK(memcmp(grh + 8, src, 16) == 0 && memcmp(grh + 24, dst, 16) == 0);
        }
    }
    return 0;
}
