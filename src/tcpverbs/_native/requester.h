/* The rc requester's in-flight window: the C twin of tcpverbs.wire.rc.Requester (its
 * docstrings say what each step means; the golden scenarios of
 * tests/golden/requester.json hold both to the same behaviour).
 *
 * Requests issued and not yet acknowledged or answered sit in a circular window of
 * tv_request records, oldest first.  Every call that may fail checks first and changes
 * nothing when it fails (why in r->error), so a misbehaving peer cannot make a request
 * vanish: it stays in the window for the engine to flush.  Requests that complete are
 * copied out, oldest first, into the caller's `done` array (room for `capacity`).
 *
 * Ownership: the caller provides the window array (`capacity` entries: the QP's
 * max_send_wr, never a peer's number) and owns the tv_rcproto; nothing is allocated.
 * Locking: none; used under the connection's lock.  Sans-IO.
 */
#ifndef TCPVERBS_NATIVE_REQUESTER_H
#define TCPVERBS_NATIVE_REQUESTER_H

#include <stdint.h>

#include "rcproto.h"

typedef struct tv_request {
    uint64_t cookie;    /* the engine's handle on the WR */
    uint64_t length;    /* bytes */
    uint32_t seq;       /* its MSN, set by tv_req_issue */
    uint32_t opcode;    /* ibv_wr_opcode */
    uint32_t rnr_tries; /* RNR NAKs it drew so far */
    uint8_t fence;      /* waits for every earlier READ and atomic */
    uint8_t needs_response; /* READ or atomic: completes on its answer, not an ACK */
} tv_request;

typedef struct tv_requester {
    tv_rcproto *proto;
    tv_request *win;
    uint32_t capacity;
    uint32_t head; /* index of the oldest */
    uint32_t len;
    uint32_t rd_outstanding; /* READs and atomics issued and not answered */
    char error[TV_RC_ERROR_LEN];
} tv_requester;

/* What an RNR NAK leads to. */
typedef struct tv_rnr_outcome {
    int exhausted;        /* 1: `refused` used up its tries (RNR_RETRY_EXC_ERR), out */
    tv_request refused;   /* (exhausted) */
    uint32_t resend;      /* (not exhausted) requests copied to `done` after the ones
                             completed, to be sent again in order */
    uint32_t resync_msn;  /* (not exhausted) the MSN the RESYNC names */
    double delay_ms;      /* (not exhausted) the wait before it */
} tv_rnr_outcome;

void tv_req_init(tv_requester *r, tv_rcproto *proto, tv_request *win, uint32_t capacity);

int tv_req_may_issue(const tv_requester *r, const tv_request *w, uint32_t rd_limit);
/* Issue *w (its seq is set, here and in the window); -1 if the window is full. */
int tv_req_issue(tv_requester *r, tv_request *w);
/* The i-th request in flight (0: the oldest), or NULL. */
tv_request *tv_req_at(const tv_requester *r, uint32_t i);

/* ACK(msn): *ndone completed requests into done; -1 on a protocol error. */
int tv_req_on_ack(tv_requester *r, uint32_t msn, tv_request *done, uint32_t *ndone);
/* READ_RESP(msn) / ATOMIC_RESP(msn): the earlier requests it completes into done; the
 * answered request stays at the head until tv_req_response_done. */
int tv_req_on_read_response(tv_requester *r, uint32_t msn, uint64_t payload_len,
                            tv_request *done, uint32_t *ndone);
int tv_req_on_atomic_response(tv_requester *r, uint32_t msn, tv_request *done,
                              uint32_t *ndone);
/* The answer of the head request is in place: it completes (copied to *out); -1 if the
 * head is not a READ or atomic awaiting its answer. */
int tv_req_response_done(tv_requester *r, tv_request *out);
/* RNR_NAK(msn, timer): requests before msn complete into done[0..*ndone), then *out. */
int tv_req_on_rnr_nak(tv_requester *r, uint32_t msn, uint8_t timer, uint32_t rnr_retry,
                      tv_request *done, uint32_t *ndone, tv_rnr_outcome *out);
/* TERMINATE(msn): 1 and the request it names, taken out, in *out; 0 if none. */
int tv_req_on_terminate(tv_requester *r, uint32_t msn, tv_request *out);

/* ibv_wc_status of the request a TERMINATE names (always an error). */
uint32_t tv_terminate_status(uint32_t status);

#endif
