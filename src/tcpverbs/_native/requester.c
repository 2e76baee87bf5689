/* The rc requester's window: see requester.h and tcpverbs/wire/rc.py (the reference). */
#include "requester.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

enum { /* ibv_wr_opcode */
    WR_RDMA_WRITE = 0,
    WR_RDMA_WRITE_WITH_IMM = 1,
    WR_SEND = 2,
    WR_SEND_WITH_IMM = 3,
    WR_RDMA_READ = 4,
    WR_ATOMIC_CMP_AND_SWP = 5,
    WR_ATOMIC_FETCH_AND_ADD = 6,
};

enum { /* ibv_wc_status */
    WC_SUCCESS = 0,
    WC_WR_FLUSH_ERR = 5,
    WC_REM_OP_ERR = 11,
    WC_LAST_STATUS = 23, /* IBV_WC_TM_RNDV_INCOMPLETE */
};

/* ibv_modify_qp(3) min_rnr_timer codes -> milliseconds (IB spec table 45) */
static const double RNR_TIMER_MS[32] = {
    655.36, 0.01,  0.02,  0.03,  0.04,  0.06,   0.08,   0.12,   0.16,   0.24,   0.32,
    0.48,   0.64,  0.96,  1.28,  1.92,  2.56,   3.84,   5.12,   7.68,   10.24,  15.36,
    20.48,  30.72, 40.96, 61.44, 81.92, 122.88, 163.84, 245.76, 327.68, 491.52,
};

static const char *const WR_NAMES[] = {
    "IBV_WR_RDMA_WRITE",    "IBV_WR_RDMA_WRITE_WITH_IMM", "IBV_WR_SEND",
    "IBV_WR_SEND_WITH_IMM", "IBV_WR_RDMA_READ",           "IBV_WR_ATOMIC_CMP_AND_SWP",
    "IBV_WR_ATOMIC_FETCH_AND_ADD",
};

/* The opcode's name as the reference prints it (unknown ones as their number). */
static const char *opname(uint32_t opcode, char *buf, size_t len) {
    if (opcode < sizeof WR_NAMES / sizeof WR_NAMES[0])
        return WR_NAMES[opcode];
    snprintf(buf, len, "%" PRIu32, opcode);
    return buf;
}

static int is_atomic(uint32_t op) {
    return op == WR_ATOMIC_CMP_AND_SWP || op == WR_ATOMIC_FETCH_AND_ADD;
}

static int needs_receive(uint32_t op) {
    return op == WR_SEND || op == WR_SEND_WITH_IMM || op == WR_RDMA_WRITE_WITH_IMM;
}

void tv_req_init(tv_requester *r, tv_rcproto *proto, tv_request *win, uint32_t capacity) {
    memset(r, 0, sizeof *r);
    r->proto = proto;
    r->win = win;
    r->capacity = capacity;
}

tv_request *tv_req_at(const tv_requester *r, uint32_t i) {
    if (i >= r->len)
        return NULL;
    return &r->win[(r->head + i) % r->capacity];
}

int tv_req_may_issue(const tv_requester *r, const tv_request *w, uint32_t rd_limit) {
    if (w->fence && r->rd_outstanding)
        return 0;
    return !(w->needs_response && r->rd_outstanding >= rd_limit);
}

int tv_req_issue(tv_requester *r, tv_request *w) {
    if (r->len == r->capacity)
        return -1;
    w->seq = tv_rc_next_request(r->proto);
    r->win[(r->head + r->len) % r->capacity] = *w;
    r->len++;
    if (w->needs_response)
        r->rd_outstanding++;
    return 0;
}

static void pop_into(tv_requester *r, uint64_t count, tv_request *done, uint32_t *ndone) {
    for (uint64_t i = 0; i < count; i++) {
        done[(*ndone)++] = r->win[r->head];
        r->head = (r->head + 1) % r->capacity;
        r->len--;
    }
}

/* How many requests up to msn an acknowledgement completes (none may be a READ or an
 * atomic, which must be answered): checks only. */
static int through(tv_requester *r, uint32_t msn, uint64_t *count) {
    if (tv_rc_acks(r->proto, msn, count, r->error, sizeof r->error) < 0)
        return -1;
    if (*count > r->len) { /* one left unacknowledged (RNR exhausted, TERMINATE) */
        snprintf(r->error, sizeof r->error,
                 "peer acknowledged request %" PRIu32 ", but only %" PRIu32
                 " requests are in flight",
                 msn, r->len);
        return -1;
    }
    char buf[16];
    for (uint64_t i = 0; i < *count; i++) {
        const tv_request *w = tv_req_at(r, (uint32_t)i);
        if (w->needs_response) {
            snprintf(r->error, sizeof r->error,
                     "peer acknowledged request %" PRIu32 " (%s) without answering it", w->seq,
                     opname(w->opcode, buf, sizeof buf));
            return -1;
        }
    }
    return 0;
}

int tv_req_on_ack(tv_requester *r, uint32_t msn, tv_request *done, uint32_t *ndone) {
    uint64_t count;
    *ndone = 0;
    if (through(r, msn, &count) < 0)
        return -1;
    uint64_t delta;
    tv_rc_on_ack(r->proto, msn, &delta, r->error, sizeof r->error); /* checked above */
    pop_into(r, count, done, ndone);
    return 0;
}

static int not_next(tv_requester *r, uint32_t msn) {
    snprintf(r->error, sizeof r->error,
             "peer answered request %" PRIu32 ", which is not the next one", msn);
    return -1;
}

static const tv_request *peek_answered(tv_requester *r, uint32_t msn) {
    for (uint32_t i = 0; i < r->len; i++) {
        const tv_request *w = tv_req_at(r, i);
        if (w->seq == msn)
            return w;
    }
    not_next(r, msn);
    return NULL;
}

/* A frame answering request msn: the earlier ones complete; msn's stays at the head. */
static int answering(tv_requester *r, uint32_t msn, tv_request *done, uint32_t *ndone) {
    uint32_t before = msn - 1; /* modulo 2^32 */
    uint64_t count;
    if (tv_rc_acks(r->proto, before, &count, r->error, sizeof r->error) < 0)
        return -1;
    if (count >= r->len || tv_req_at(r, (uint32_t)count)->seq != msn)
        return not_next(r, msn);
    return tv_req_on_ack(r, before, done, ndone);
}

int tv_req_on_read_response(tv_requester *r, uint32_t msn, uint64_t payload_len,
                            tv_request *done, uint32_t *ndone) {
    *ndone = 0;
    const tv_request *w = peek_answered(r, msn);
    if (w == NULL)
        return -1;
    if (w->opcode != WR_RDMA_READ || payload_len != w->length) {
        char buf[16];
        snprintf(r->error, sizeof r->error,
                 "peer sent %" PRIu64 " READ bytes for request %" PRIu32
                 ", which is %s of %" PRIu64 " bytes",
                 payload_len, msn, opname(w->opcode, buf, sizeof buf), w->length);
        return -1;
    }
    return answering(r, msn, done, ndone);
}

int tv_req_on_atomic_response(tv_requester *r, uint32_t msn, tv_request *done,
                              uint32_t *ndone) {
    *ndone = 0;
    const tv_request *w = peek_answered(r, msn);
    if (w == NULL)
        return -1;
    if (!is_atomic(w->opcode)) {
        snprintf(r->error, sizeof r->error, "peer answered request %" PRIu32 " as an atomic",
                 msn);
        return -1;
    }
    return answering(r, msn, done, ndone);
}

int tv_req_response_done(tv_requester *r, tv_request *out) {
    if (r->len == 0 || !r->win[r->head].needs_response || r->rd_outstanding == 0)
        return -1; /* only an answered READ or atomic completes this way */
    *out = r->win[r->head];
    r->head = (r->head + 1) % r->capacity;
    r->len--;
    uint64_t delta;
    tv_rc_on_ack(r->proto, out->seq, &delta, r->error, sizeof r->error);
    r->rd_outstanding--;
    return 0;
}

int tv_req_on_rnr_nak(tv_requester *r, uint32_t msn, uint8_t timer, uint32_t rnr_retry,
                      tv_request *done, uint32_t *ndone, tv_rnr_outcome *out) {
    *ndone = 0;
    memset(out, 0, sizeof *out);
    const tv_request *w = peek_answered(r, msn);
    if (w == NULL)
        return -1;
    if (!needs_receive(w->opcode)) {
        snprintf(r->error, sizeof r->error,
                 "RNR NAK for request %" PRIu32 ", which needs no receive", msn);
        return -1;
    }
    if (answering(r, msn, done, ndone) < 0)
        return -1;
    tv_request *refused = &r->win[r->head];
    refused->rnr_tries++;
    if (rnr_retry != 7 && refused->rnr_tries > rnr_retry) { /* 7: retry for ever */
        out->exhausted = 1;
        out->refused = *refused;
        r->head = (r->head + 1) % r->capacity;
        r->len--;
        return 0;
    }
    out->resend = r->len;
    uint32_t n = *ndone;
    pop_into(r, r->len, done, &n); /* after the completed ones, in order */
    r->rd_outstanding = 0;
    out->resync_msn = tv_rc_rewind(r->proto);
    out->delay_ms = RNR_TIMER_MS[timer & 31];
    return 0;
}

int tv_req_on_terminate(tv_requester *r, uint32_t msn, tv_request *out) {
    for (uint32_t i = 0; i < r->len; i++) {
        if (tv_req_at(r, i)->seq != msn)
            continue;
        *out = *tv_req_at(r, i);
        for (uint32_t j = i; j + 1 < r->len; j++) /* close the gap, keeping the order */
            *tv_req_at(r, j) = *tv_req_at(r, j + 1);
        r->len--;
        return 1;
    }
    return 0;
}

uint32_t tv_terminate_status(uint32_t status) {
    if (status > WC_LAST_STATUS || status == WC_SUCCESS || status == WC_WR_FLUSH_ERR)
        return WC_REM_OP_ERR;
    return status;
}
