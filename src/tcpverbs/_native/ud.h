/* The UD datagram in C: the native twin of tcpverbs/wire/ud.py.
 *
 * Sans-IO: a datagram's bytes in, its header (or one error) out; a header out as 24
 * bytes; the 40-byte GRH a UD receive reports.  No system calls, no allocation.  The
 * layout is docs/wire-protocol.md ("UD datagrams"); the behaviour is
 * tests/golden/ud.json and the differential test against the Python codec
 * (tests/test_native_ud.py).
 *
 * Ownership: callers own every buffer; nothing here keeps a pointer.  Locking: none.
 *
 * Safety: a datagram is read only inside the length its caller gives, and nothing is
 * sized by a value in it: a header is TV_UD_HEADER bytes, a GRH TV_GRH, both fixed.
 */
#ifndef TCPVERBS_NATIVE_UD_H
#define TCPVERBS_NATIVE_UD_H

#include <stddef.h>
#include <stdint.h>

enum {
    TV_UD_HEADER = 24, /* magic, version, opcode, flags, reserved, 4 x u32 */
    TV_GRH = 40,       /* what a UD receive gets in front of the payload */
    TV_UD_VERSION = 1,
    TV_UD_ERROR_LEN = 96, /* room for any error message */
};

typedef struct tv_ud_header {
    uint8_t opcode; /* TV_SEND or TV_SEND_IMM (frames.h) */
    uint8_t flags;  /* bit 0: solicited */
    uint32_t dest_qpn;
    uint32_t src_qpn;
    uint32_t qkey;
    uint32_t imm;
} tv_ud_header;

/* Decode the header of a datagram of `len` bytes: 0, or -1 with the reason in `err`
 * (TV_UD_ERROR_LEN bytes), worded as the Python codec words it. */
int tv_ud_decode(const uint8_t *data, size_t len, tv_ud_header *out, char *err);

/* The 24 header bytes of `h` into `out`; -1 (nothing written) when `h` breaks a rule
 * the decoder checks. */
int tv_ud_encode(const tv_ud_header *h, uint8_t out[TV_UD_HEADER]);

/* The GRH of a datagram of `datagram_len` bytes (header included) from `src` to `dst`,
 * each an IPv6 address or an IPv4-mapped one (::ffff:a.b.c.d): for two IPv4 addresses
 * 20 zero bytes then an IPv4 header, else an IPv6 header. */
void tv_ud_grh(const uint8_t src[16], const uint8_t dst[16], uint32_t datagram_len,
               uint8_t out[TV_GRH]);

#endif
