/* The rc wire's frame decoder in C: the native twin of tcpverbs/wire/frames.py.
 *
 * Sans-IO, like the Python reference: bytes in, headers (or one error) out, no system
 * calls, no allocation.  The layout is docs/wire-protocol.md; the behaviour, byte for
 * byte, is tests/golden/frames.json and the differential test against the Python
 * decoder (tests/test_native_frames.py).
 *
 * Ownership: a tv_decoder is plain memory owned by its caller; nothing in it points
 * outside it.  Locking: none; one decoder belongs to one connection, and the caller
 * serialises its use.
 *
 * Safety: every length that comes from the peer is checked against a constant bound
 * before it is used, and no buffer is sized by one: a header is at most TV_MAX_HEADER
 * bytes and a TERMINATE reason at most TV_MAX_REASON, both held in fixed arrays.
 */
#ifndef TCPVERBS_NATIVE_FRAMES_H
#define TCPVERBS_NATIVE_FRAMES_H

#include <stddef.h>
#include <stdint.h>

enum {
    TV_BASE = 8,          /* opcode u8, flags u8, reserved u16, length u32 */
    TV_MAX_HEADER = 36,   /* the base and the largest extension (the atomics') */
    TV_MAX_REASON = 1024, /* a TERMINATE's reason */
    TV_ERROR_LEN = 160,   /* room for any error message */
    TV_FLAG_SOLICITED = 0x01,
};

enum tv_opcode {
    TV_SEND = 1,
    TV_SEND_IMM = 2,
    TV_WRITE = 3,
    TV_WRITE_IMM = 4,
    TV_READ_REQ = 5,
    TV_READ_RESP = 6,
    TV_ATOMIC_CMP_SWP = 7,
    TV_ATOMIC_FETCH_ADD = 8,
    TV_ATOMIC_RESP = 9,
    TV_ACK = 16,
    TV_TERMINATE = 17,
    TV_RNR_NAK = 18,
    TV_RESYNC = 19,
    TV_AUTH = 20,
};

/* One decoded header; fields its opcode does not carry are 0. */
typedef struct tv_header {
    uint8_t opcode;
    uint8_t flags;
    uint8_t status; /* TERMINATE */
    uint8_t timer;  /* RNR_NAK */
    uint32_t payload_len;
    uint32_t imm;
    uint32_t rkey;
    uint32_t length; /* READ_REQ */
    uint32_t msn;
    uint32_t psn; /* AUTH */
    uint64_t addr;
    uint64_t compare_add;
    uint64_t swap;
    uint32_t reason_len; /* TERMINATE: bytes of reason */
    uint8_t reason[TV_MAX_REASON];
} tv_header;

typedef struct tv_decoder {
    uint64_t max_payload;       /* the negotiated maximum message size */
    uint64_t payload_remaining; /* payload bytes of the last header still to come */
    uint8_t buf[TV_MAX_HEADER]; /* a header arriving in pieces */
    uint32_t buf_len;
    int in_reason;         /* collecting a TERMINATE's reason into `pending` */
    uint32_t reason_left;  /* ... bytes of it still to come */
    int broken;            /* a protocol error happened: unusable */
    tv_header pending;     /* the TERMINATE whose reason is being collected */
    char error[TV_ERROR_LEN]; /* why, after TV_ERROR */
} tv_decoder;

enum tv_result {
    TV_NEED_MORE = 0, /* every byte given was consumed; no header yet */
    TV_HEADER = 1,    /* *out holds a header; the payload (payload_len bytes) follows */
    TV_ERROR = -1,    /* the stream is malformed: d->error says why; d is unusable */
    TV_MISUSE = -2,   /* called in the payload state (call tv_payload_consumed first) */
};

void tv_decoder_init(tv_decoder *d, uint64_t max_payload);

/* Consume bytes of data[0:len] up to the end of one header (and a TERMINATE's reason):
 * *used is how many.  See enum tv_result. */
int tv_decode(tv_decoder *d, const uint8_t *data, size_t len, tv_header *out, size_t *used);

/* n payload bytes were placed; 0 on success, -1 if n is more than remain. */
int tv_payload_consumed(tv_decoder *d, uint64_t n);

/* Between frames: the only place a connection may end cleanly. */
int tv_at_boundary(const tv_decoder *d);

/* Write the header *h (and a TERMINATE's reason, cut to TV_MAX_REASON) to out[0:cap];
 * the payload (h->payload_len bytes) is the caller's to send after it.  Returns the
 * bytes written, or 0 if the opcode is unknown, a control frame claims payload, or cap
 * is too small (TV_MAX_HEADER + TV_MAX_REASON always suffices). */
size_t tv_encode_header(const tv_header *h, uint8_t *out, size_t cap);

/* The name of an opcode, or NULL if the protocol has no such opcode. */
const char *tv_opcode_name(unsigned opcode);

#endif
