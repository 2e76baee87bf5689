/* The UD datagram codec (ud.h): ownership, locking and safety are described there. */
#include "ud.h"

#include <stdio.h>
#include <string.h>

#include "frames.h"

static const uint8_t MAGIC[4] = {'T', 'V', 'U', 'D'};
static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
enum { QPN_LIMIT = 1u << 24, UDP_HEADER = 8, HOP_LIMIT = 64, IPPROTO_UDP_ = 17 };

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int tv_ud_decode(const uint8_t *data, size_t len, tv_ud_header *out, char *err) {
    if (len < TV_UD_HEADER) {
        snprintf(err, TV_UD_ERROR_LEN,
                 "a UD datagram of %zu bytes is shorter than its %d-byte header", len,
                 TV_UD_HEADER);
        return -1;
    }
    if (memcmp(data, MAGIC, sizeof MAGIC) != 0) {
        snprintf(err, TV_UD_ERROR_LEN, "not a tcpverbs UD datagram (magic %02x%02x%02x%02x)",
                 data[0], data[1], data[2], data[3]);
        return -1;
    }
    uint8_t version = data[4], opcode = data[5], flags = data[6], reserved = data[7];
    uint32_t dest = get32(data + 8), src = get32(data + 12);
    uint32_t qkey = get32(data + 16), imm = get32(data + 20);
    /* the checks in the Python codec's order, so that both name the same fault first */
    if (version != TV_UD_VERSION)
        snprintf(err, TV_UD_ERROR_LEN, "UD datagram version %u, this side speaks %d",
                 (unsigned)version, TV_UD_VERSION);
    else if (opcode != TV_SEND && opcode != TV_SEND_IMM)
        snprintf(err, TV_UD_ERROR_LEN, "unknown UD opcode 0x%02x", (unsigned)opcode);
    else if (flags & ~TV_FLAG_SOLICITED)
        snprintf(err, TV_UD_ERROR_LEN, "unknown UD flags 0x%02x", (unsigned)flags);
    else if (reserved != 0)
        snprintf(err, TV_UD_ERROR_LEN, "reserved UD header byte is 0x%02x, not 0",
                 (unsigned)reserved);
    else if (dest >= QPN_LIMIT || src >= QPN_LIMIT)
        snprintf(err, TV_UD_ERROR_LEN, "a UD QP number wider than 24 bits");
    else if (opcode == TV_SEND && imm != 0)
        snprintf(err, TV_UD_ERROR_LEN, "immediate data in a UD SEND");
    else {
        *out = (tv_ud_header){.opcode = opcode, .flags = flags, .dest_qpn = dest,
                              .src_qpn = src, .qkey = qkey, .imm = imm};
        return 0;
    }
    return -1;
}

int tv_ud_encode(const tv_ud_header *h, uint8_t out[TV_UD_HEADER]) {
    if ((h->opcode != TV_SEND && h->opcode != TV_SEND_IMM) || (h->opcode == TV_SEND && h->imm) ||
        (h->flags & ~TV_FLAG_SOLICITED) || h->dest_qpn >= QPN_LIMIT || h->src_qpn >= QPN_LIMIT)
        return -1;
    memcpy(out, MAGIC, sizeof MAGIC);
    out[4] = TV_UD_VERSION;
    out[5] = h->opcode;
    out[6] = h->flags;
    out[7] = 0;
    put32(out + 8, h->dest_qpn);
    put32(out + 12, h->src_qpn);
    put32(out + 16, h->qkey);
    put32(out + 20, h->imm);
    return 0;
}

static int is_v4(const uint8_t addr[16]) {
    return memcmp(addr, V4_MAPPED, sizeof V4_MAPPED) == 0;
}

static uint32_t clamp16(uint32_t v) { return v > 0xffffu ? 0xffffu : v; }

void tv_ud_grh(const uint8_t src[16], const uint8_t dst[16], uint32_t datagram_len,
               uint8_t out[TV_GRH]) {
    memset(out, 0, TV_GRH);
    if (is_v4(src) && is_v4(dst)) {
        uint8_t *ip = out + 20; /* RoCE v2's place for an IPv4 header */
        uint64_t total = 20u + UDP_HEADER + (uint64_t)datagram_len;
        ip[0] = 0x45;
        put16(ip + 2, clamp16(total > 0xffffu ? 0xffffu : (uint32_t)total));
        put16(ip + 6, 0x4000); /* don't fragment */
        ip[8] = HOP_LIMIT;
        ip[9] = IPPROTO_UDP_;
        memcpy(ip + 12, src + 12, 4);
        memcpy(ip + 16, dst + 12, 4);
        uint32_t sum = 0;
        for (int i = 0; i < 20; i += 2)
            sum += (uint32_t)ip[i] << 8 | ip[i + 1];
        while (sum >> 16)
            sum = (sum & 0xffffu) + (sum >> 16);
        put16(ip + 10, ~sum & 0xffffu);
        return;
    }
    put32(out, 6u << 28);
    uint64_t payload = UDP_HEADER + (uint64_t)datagram_len;
    put16(out + 4, clamp16(payload > 0xffffu ? 0xffffu : (uint32_t)payload));
    out[6] = IPPROTO_UDP_;
    out[7] = HOP_LIMIT;
    memcpy(out + 8, src, 16);
    memcpy(out + 24, dst, 16);
}
