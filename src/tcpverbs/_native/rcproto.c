/* rc protocol state: see rcproto.h (and tcpverbs/wire/rc.py, the reference). */
#include "rcproto.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

void tv_rc_init(tv_rcproto *p) { memset(p, 0, sizeof *p); }

uint32_t tv_rc_next_request(tv_rcproto *p) { return (uint32_t)++p->sent; }

int tv_rc_acks(const tv_rcproto *p, uint32_t msn, uint64_t *delta, char *err, size_t errlen) {
    uint64_t outstanding = p->sent - p->acked;
    uint64_t d = (uint32_t)(msn - (uint32_t)p->acked); /* modulo 2^32, as the MSNs */
    if (d > outstanding) {
        snprintf(err, errlen,
                 "peer acknowledged request %" PRIu32 ", but only %" PRIu64
                 " were sent (%" PRIu64 " already acknowledged)",
                 msn, p->sent, p->acked);
        return -1;
    }
    *delta = d;
    return 0;
}

int tv_rc_on_ack(tv_rcproto *p, uint32_t msn, uint64_t *delta, char *err, size_t errlen) {
    if (tv_rc_acks(p, msn, delta, err, errlen) < 0)
        return -1;
    p->acked += *delta;
    return 0;
}

uint32_t tv_rc_rewind(tv_rcproto *p) {
    p->sent = p->acked;
    return (uint32_t)(p->acked + 1);
}

uint32_t tv_rc_next_msn(const tv_rcproto *p) { return (uint32_t)(p->received + 1); }

int tv_rc_take_ack(tv_rcproto *p, uint32_t *ack_msn) {
    if (p->ack_sent == p->received)
        return 0;
    p->ack_sent = p->received;
    *ack_msn = (uint32_t)p->received;
    return 1;
}

int tv_rc_refuse(tv_rcproto *p, uint32_t *ack_msn) {
    p->discarding = 1;
    return tv_rc_take_ack(p, ack_msn);
}

int tv_rc_on_resync(tv_rcproto *p, uint32_t msn, char *err, size_t errlen) {
    if (msn != tv_rc_next_msn(p)) {
        snprintf(err, errlen,
                 "peer resumed at request %" PRIu32 ", but request %" PRIu32 " is next", msn,
                 tv_rc_next_msn(p));
        return -1;
    }
    p->discarding = 0;
    return 0;
}

uint32_t tv_rc_request_done(tv_rcproto *p) { return (uint32_t)++p->received; }

int tv_rc_ack_owed(const tv_rcproto *p) { return p->ack_sent != p->received; }
