/* The rc wire's frame decoder: see frames.h (ownership, locking and safety rules). */
#include "frames.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum field { F_NONE, F_IMM, F_RKEY, F_ADDR, F_LENGTH, F_MSN, F_CA, F_SWAP, F_STATUS, F_TIMER,
             F_PAD3, F_PSN };

struct layout {
    const char *name;
    uint8_t ext;         /* bytes of extension after the base header */
    uint8_t has_payload; /* may carry payload (a TERMINATE's is its reason) */
    uint8_t fields[4];   /* in wire order, F_NONE-terminated */
};

/* The table of docs/wire-protocol.md, indexed by opcode; a NULL name: no such opcode. */
static const struct layout LAYOUTS[256] = {
    [TV_SEND] = {"SEND", 0, 1, {F_NONE}},
    [TV_SEND_IMM] = {"SEND_IMM", 4, 1, {F_IMM}},
    [TV_WRITE] = {"WRITE", 12, 1, {F_RKEY, F_ADDR}},
    [TV_WRITE_IMM] = {"WRITE_IMM", 16, 1, {F_RKEY, F_ADDR, F_IMM}},
    [TV_READ_REQ] = {"READ_REQ", 16, 0, {F_RKEY, F_ADDR, F_LENGTH}},
    [TV_READ_RESP] = {"READ_RESP", 4, 1, {F_MSN}},
    [TV_ATOMIC_CMP_SWP] = {"ATOMIC_CMP_SWP", 28, 0, {F_RKEY, F_ADDR, F_CA, F_SWAP}},
    [TV_ATOMIC_FETCH_ADD] = {"ATOMIC_FETCH_ADD", 28, 0, {F_RKEY, F_ADDR, F_CA, F_SWAP}},
    [TV_ATOMIC_RESP] = {"ATOMIC_RESP", 12, 0, {F_MSN, F_CA}},
    [TV_ACK] = {"ACK", 4, 0, {F_MSN}},
    [TV_TERMINATE] = {"TERMINATE", 8, 1, {F_MSN, F_STATUS, F_PAD3}},
    [TV_RNR_NAK] = {"RNR_NAK", 8, 0, {F_MSN, F_TIMER, F_PAD3}},
    [TV_RESYNC] = {"RESYNC", 4, 0, {F_MSN}},
    [TV_AUTH] = {"AUTH", 4, 0, {F_PSN}},
};

enum { KNOWN_FLAGS = 0x01, REASON_PENDING = 2 };

_Static_assert(TV_BASE + 28 == TV_MAX_HEADER, "the atomics' header is the largest");

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

const char *tv_opcode_name(unsigned opcode) {
    return opcode < 256 ? LAYOUTS[opcode].name : NULL;
}

void tv_decoder_init(tv_decoder *d, uint64_t max_payload) {
    memset(d, 0, sizeof *d);
    d->max_payload = max_payload;
}

int tv_at_boundary(const tv_decoder *d) {
    return d->buf_len == 0 && d->payload_remaining == 0 && !d->in_reason;
}

int tv_payload_consumed(tv_decoder *d, uint64_t n) {
    if (n > d->payload_remaining)
        return -1;
    d->payload_remaining -= n;
    return 0;
}

static int fail(tv_decoder *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(tv_decoder *d, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->error, sizeof d->error, fmt, ap);
    va_end(ap);
    d->broken = 1;
    return TV_ERROR;
}

/* Read the extension's fields (after the base) into *h. */
static void read_fields(const struct layout *lay, const uint8_t *p, tv_header *h) {
    for (int i = 0; i < 4 && lay->fields[i] != F_NONE; i++) {
        switch (lay->fields[i]) {
        case F_IMM: h->imm = be32(p); p += 4; break;
        case F_RKEY: h->rkey = be32(p); p += 4; break;
        case F_LENGTH: h->length = be32(p); p += 4; break;
        case F_MSN: h->msn = be32(p); p += 4; break;
        case F_PSN: h->psn = be32(p); p += 4; break;
        case F_ADDR: h->addr = be64(p); p += 8; break;
        case F_CA: h->compare_add = be64(p); p += 8; break;
        case F_SWAP: h->swap = be64(p); p += 8; break;
        case F_STATUS: h->status = p[0]; p += 1; break;
        case F_TIMER: h->timer = p[0]; p += 1; break;
        case F_PAD3: p += 3; break; /* padding: not checked, as the reference does not */
        default: break;
        }
    }
}

/* The header in d->buf is complete: check it and fill *out (the same checks, in the
 * same order, as FrameDecoder._finish). */
static int finish(tv_decoder *d, const struct layout *lay, tv_header *out) {
    const uint8_t *b = d->buf;
    uint8_t flags = b[1];
    uint32_t reserved = (uint32_t)b[2] << 8 | b[3];
    uint32_t length = be32(b + 4);
    d->buf_len = 0;
    if ((flags & ~KNOWN_FLAGS) || reserved)
        return fail(d, "frame header has unknown flags 0x%02x/%u", (unsigned)flags,
                    (unsigned)reserved);
    if (length < lay->ext)
        return fail(d, "frame length %u shorter than its header", (unsigned)length);
    uint32_t payload = length - lay->ext;
    if (payload && !lay->has_payload)
        return fail(d, "%s frame carries %u unexpected bytes", lay->name, (unsigned)payload);
    memset(out, 0, offsetof(tv_header, reason));
    out->opcode = b[0];
    out->flags = flags;
    out->payload_len = payload;
    read_fields(lay, b + TV_BASE, out);
    if (out->opcode == TV_TERMINATE) {
        if (payload > TV_MAX_REASON)
            return fail(d, "TERMINATE reason of %u bytes is too long", (unsigned)payload);
        out->payload_len = 0;
        memcpy(&d->pending, out, offsetof(tv_header, reason));
        d->pending.reason_len = 0;
        d->in_reason = 1;
        d->reason_left = payload;
        return REASON_PENDING;
    }
    if (payload > d->max_payload)
        return fail(d, "%s frame of %u bytes exceeds the limit of %llu", lay->name,
                    (unsigned)payload, (unsigned long long)d->max_payload);
    d->payload_remaining = payload;
    return TV_HEADER;
}

static int collect_reason(tv_decoder *d, const uint8_t *data, size_t len, tv_header *out,
                          size_t *used) {
    size_t take = min_size(d->reason_left, len);
    /* reason_len + reason_left <= TV_MAX_REASON (checked in finish): no overflow */
    if (take) /* (data may be NULL when len is 0) */
        memcpy(d->pending.reason + d->pending.reason_len, data, take);
    d->pending.reason_len += (uint32_t)take;
    d->reason_left -= (uint32_t)take;
    *used = take;
    if (d->reason_left)
        return TV_NEED_MORE;
    memcpy(out, &d->pending, offsetof(tv_header, reason) + d->pending.reason_len);
    d->in_reason = 0;
    return TV_HEADER;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

size_t tv_encode_header(const tv_header *h, uint8_t *out, size_t cap) {
    const struct layout *lay = &LAYOUTS[h->opcode];
    if (lay->name == NULL)
        return 0;
    uint32_t reason = 0, payload = h->payload_len;
    if (h->opcode == TV_TERMINATE) {
        reason = h->reason_len < TV_MAX_REASON ? h->reason_len : TV_MAX_REASON;
        payload = reason; /* a TERMINATE's reason travels as its payload */
    } else if (payload && !lay->has_payload) {
        return 0;
    }
    size_t size = (size_t)TV_BASE + lay->ext + reason;
    if (cap < size || payload > UINT32_MAX - lay->ext)
        return 0;
    out[0] = h->opcode;
    out[1] = h->flags;
    out[2] = out[3] = 0;
    put32(out + 4, lay->ext + payload);
    uint8_t *p = out + TV_BASE;
    for (int i = 0; i < 4 && lay->fields[i] != F_NONE; i++) {
        switch (lay->fields[i]) {
        case F_IMM: put32(p, h->imm); p += 4; break;
        case F_RKEY: put32(p, h->rkey); p += 4; break;
        case F_LENGTH: put32(p, h->length); p += 4; break;
        case F_MSN: put32(p, h->msn); p += 4; break;
        case F_PSN: put32(p, h->psn); p += 4; break;
        case F_ADDR: put64(p, h->addr); p += 8; break;
        case F_CA: put64(p, h->compare_add); p += 8; break;
        case F_SWAP: put64(p, h->swap); p += 8; break;
        case F_STATUS: *p++ = h->status; break;
        case F_TIMER: *p++ = h->timer; break;
        case F_PAD3: p[0] = p[1] = p[2] = 0; p += 3; break;
        default: break;
        }
    }
    if (reason)
        memcpy(p, h->reason, reason);
    return size;
}

int tv_decode(tv_decoder *d, const uint8_t *data, size_t len, tv_header *out, size_t *used) {
    *used = 0;
    if (d->broken) {
        snprintf(d->error, sizeof d->error, "decoder used after a protocol error");
        return TV_ERROR;
    }
    if (d->payload_remaining)
        return TV_MISUSE;
    if (d->in_reason)
        return collect_reason(d, data, len, out, used);
    size_t pos = 0;
    if (d->buf_len < TV_BASE) {
        size_t take = min_size(TV_BASE - d->buf_len, len);
        if (take)
            memcpy(d->buf + d->buf_len, data, take);
        d->buf_len += (uint32_t)take;
        pos = take;
        if (d->buf_len < TV_BASE) {
            *used = pos;
            return TV_NEED_MORE;
        }
    }
    const struct layout *lay = &LAYOUTS[d->buf[0]];
    if (lay->name == NULL)
        return fail(d, "unknown frame opcode 0x%02x", (unsigned)d->buf[0]);
    size_t full = (size_t)TV_BASE + lay->ext; /* <= TV_MAX_HEADER: the table's bound */
    size_t take = min_size(full - d->buf_len, len - pos);
    if (take)
        memcpy(d->buf + d->buf_len, data + pos, take);
    d->buf_len += (uint32_t)take;
    pos += take;
    if (d->buf_len < full) {
        *used = pos;
        return TV_NEED_MORE;
    }
    int result = finish(d, lay, out);
    if (result == REASON_PENDING) {
        size_t n = 0;
        result = collect_reason(d, data + pos, len - pos, out, &n);
        pos += n;
    }
    *used = pos;
    return result;
}
