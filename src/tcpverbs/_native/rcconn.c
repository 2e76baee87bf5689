/* The rc wire mode on a connection: Reliable Connection semantics between two tcpverbs
 * QPs, in C.  The twin of tcpverbs/engine/py/rc.py, whose docstrings hold the theory of
 * operation; the protocol's decisions are the sans-IO pieces already ported and held to
 * the Python reference (frames.c, rcproto.c, requester.c).
 *
 * Requester: posted WRs become frames -- the header encoded into the WR's own slot, the
 * payload the WR's segments -- queued on the transmit queue (`tx`) so that a burst
 * leaves in one sendmsg.  The requester's window (requester.c) mirrors the send ring's
 * `conn.wire_count` slots after the first `held` one to one, oldest first (win_at).
 *
 * Zerocopy (zerocopy.h): a payload segment of at least the threshold leaves in a
 * sendmsg of its own with MSG_ZEROCOPY, so that the kernel reads only registered memory
 * later (the WR's pin keeps it); a WR it carried completes only once the kernel released
 * that call.  A WR the peer is through with before that is `held` at the ring's head,
 * and the WRs behind it complete after it, in order.
 *
 * Responder: bytes are read in bulk into a staging buffer and parsed there; payload is
 * copied to its destination (a receive's segments, or a WRITE's target memory), or read
 * straight into it when much remains.  Target memory is pinned (memtable.h) while a
 * WRITE lands in it or a READ answer waits to be written, and deregistration ends that
 * access at once (tv_rcconn_refuse_gone).  Atomics are real atomic instructions on the
 * 8-aligned target.
 *
 * Answers to the peer's requests (ACKs, READ and atomic responses, RNR NAKs) have their
 * headers in `cells`, a FIFO of fixed cells released as the transmit queue passes them;
 * more than `tx_backlog` answers unwritten stop the reading (a peer that does not read).
 *
 * Ownership: the tv_rcconn, its staging buffer, window, transmit queue and cells belong
 * to the QP's connection, allocated at attach (sized by the QP's own capacities and
 * constants, never by a peer), freed by tv_rcconn_close.  Locking: the QP's lock, held by
 * every caller.
 */
#define _GNU_SOURCE
#include "engine.h"
#include "frames.h"
#include "rcproto.h"
#include "requester.h"
#include "zerocopy.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

enum {
    STAGING_SIZE = 256 * 1024,
    DIRECT_MIN = 16 * 1024,   /* payload left at least this big is read straight in */
    CELL_SIZE = TV_MAX_HEADER + 4,
    WORK_PER_CALL = 512,      /* frames one call handles; a read counts READ_COST */
    READ_COST = 32,
    MAX_IOV = 1024,
    TX_MAX = 1 << 22,         /* transmit queue entries: beyond, the QP fails (ENOMEM) */
    NO_MSN = 0xffffffffu,
    FLAG_SOLICITED = 1,
    WC_WITH_IMM = 2,
    WC_RECV_RDMA_WITH_IMM = 129,
    WC_REM_INV_REQ_ERR = 9,
    WC_REM_ACCESS_ERR = 10,
    WC_REM_OP_ERR = 11,
    WC_RNR_RETRY_EXC_ERR = 13,
    WC_REM_ABORT_ERR = 16,
    EVENT_QP_REQ_ERR = 2,
    EVENT_QP_ACCESS_ERR = 3,
    PROTOCOL_VERSION = 2,
    MODE_STREAM = 0,
    MODE_RC = 1,
};
static const uint64_t DEFAULT_HELLO_TIMEOUT = 10000000000ull; /* ns */
static const char MAGIC[8] = {'T', 'C', 'P', 'V', 'E', 'R', 'B', 'S'};

/* One entry of the transmit queue. */
typedef struct tv_txseg {
    const uint8_t *base;
    uint64_t len;
    tv_region *pin;   /* a READ answer's memory, pinned until written */
    tv_work *owner;   /* a request's piece: its WR may not complete before it is written */
    uint8_t cell;     /* the last piece of an answer whose header is a cell */
    uint8_t answer;   /* counts as an answer (the read pause) */
    uint8_t zc;       /* a request's payload: may go zerocopy (tv_zc_wanted decides) */
} tv_txseg;

/* Why the responder refuses a request (tcpverbs.wire.rc.RESPONDER_FAULTS). */
typedef enum { BAD_RKEY, MR_ACCESS, QP_ACCESS, OUT_OF_RANGE, MR_GONE, MISALIGNED,
               RECV_TOO_SMALL, RECV_BROKEN } fault_t;
static const struct { uint32_t peer_status; int err; uint32_t event; } FAULTS[] = {
    [BAD_RKEY] = {WC_REM_ACCESS_ERR, EACCES, EVENT_QP_ACCESS_ERR},
    [MR_ACCESS] = {WC_REM_ACCESS_ERR, EACCES, EVENT_QP_ACCESS_ERR},
    [QP_ACCESS] = {WC_REM_ACCESS_ERR, EACCES, EVENT_QP_ACCESS_ERR},
    [OUT_OF_RANGE] = {WC_REM_ACCESS_ERR, EACCES, EVENT_QP_ACCESS_ERR},
    [MR_GONE] = {WC_REM_ACCESS_ERR, EACCES, EVENT_QP_ACCESS_ERR},
    [MISALIGNED] = {WC_REM_INV_REQ_ERR, EACCES, EVENT_QP_REQ_ERR},
    [RECV_TOO_SMALL] = {WC_REM_INV_REQ_ERR, EMSGSIZE, TV_EVENT_QP_FATAL},
    [RECV_BROKEN] = {WC_REM_OP_ERR, EFAULT, TV_EVENT_QP_FATAL},
};

/* What the payload being placed is, and what finishing it does. */
typedef enum { PLACE_NONE, PLACE_DISCARD, PLACE_RECV, PLACE_WRITE, PLACE_READ_RESP } place_t;

typedef struct tv_rcconn {
    tv_rcproto proto;
    tv_requester req;
    tv_request *win;      /* max_send_wr entries */
    tv_request *done;     /* scratch: what one frame completes (max_send_wr entries) */
    tv_decoder dec;
    tv_header h;          /* the header being handled */
    /* the hello */
    uint8_t hello_out[TV_HELLO_SIZE];
    uint8_t hello_in[TV_HELLO_SIZE];
    uint32_t hello_len;
    int established;
    uint32_t peer_max_dest_rd_atomic;
    uint64_t hello_at, hello_timeout;
    /* staging */
    uint8_t *stage;
    uint32_t rx_start, rx_end;
    /* the payload being placed */
    place_t place;
    struct iovec target[TV_MAX_SGE];
    uint32_t ntarget, target_at;
    tv_region *target_pin;
    uint8_t placed_op, placed_flags;
    uint32_t placed_imm, placed_len;
    /* transmit */
    tv_txseg *tx;
    uint32_t tx_cap, tx_head, tx_len;
    uint64_t tx_off;
    uint8_t (*cells)[CELL_SIZE];
    uint32_t cell_head, cell_len, cell_cap; /* cell_cap: 2 * tx_backlog + 16 */
    uint32_t tx_backlog;
    uint32_t answers;     /* answers queued, not yet written */
    int read_paused;
    /* zerocopy: the calls, and how many WRs at the ring's head wait for releases */
    tv_zc zc;
    uint32_t held;
    /* timers (ns, 0: none) and what they do */
    uint64_t rnr_at, resume_at;
    uint32_t resync_msn;
    int budget;
    /* what the TERMINATE says, when a refusal set it */
    int has_goodbye;
    uint32_t bye_msn, bye_status;
    char bye_why[TV_MSG_LEN];
    uint8_t bye_buf[TV_MAX_HEADER + TV_MAX_REASON];
} tv_rcconn;

static tv_work *sq_at(tv_qp *qp, uint32_t i) { return tv_ring_peek(qp->sq, i); }

/* The i-th WR of the requester's window (the held ones come before it). */
static tv_work *win_at(tv_qp *qp, uint32_t i) { return sq_at(qp, qp->conn.rc->held + i); }

static void set_timer(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    uint64_t d = 0;
    const uint64_t t[3] = {rc->hello_at, rc->rnr_at, rc->resume_at};
    for (int i = 0; i < 3; i++)
        if (t[i] != 0 && (d == 0 || t[i] < d))
            d = t[i];
    qp->conn.rc_at = d;
    tv_qp_set_timer(qp);
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* -- failures --------------------------------------------------------------------------- */

static void protocol_error(tv_qp *qp, const char *why) {
    tv_rcconn *rc = qp->conn.rc;
    rc->has_goodbye = 1;
    rc->bye_msn = NO_MSN;
    rc->bye_status = WC_REM_OP_ERR;
    snprintf(rc->bye_why, sizeof rc->bye_why, "protocol error: %s", why);
    tv_failure f = tv_failure_of(TV_ERR_PROTOCOL, EPROTO, why);
    f.setup = !rc->established;
    tv_qp_fail_with(qp, &f);
}

/* The peer's request is refused for `fault`: tell it which and why, then go to ERR
 * (`recv_status`, if not 0: the status of the receive it was to land in). */
static void terminate_recv(tv_qp *qp, uint8_t opcode, fault_t fault, const char *why,
                           uint32_t recv_status) {
    tv_rcconn *rc = qp->conn.rc;
    rc->has_goodbye = 1;
    rc->bye_msn = tv_rc_next_msn(&rc->proto);
    rc->bye_status = FAULTS[fault].peer_status;
    snprintf(rc->bye_why, sizeof rc->bye_why, "%s", why);
    char msg[TV_MSG_LEN];
    const char *name = tv_opcode_name(opcode);
    snprintf(msg, sizeof msg, "%s from the peer failed: %s", name ? name : "request", why);
    tv_failure f = tv_failure_of(TV_ERR_PLAIN, FAULTS[fault].err, msg);
    f.event = FAULTS[fault].event;
    f.first_recv_status = recv_status;
    tv_qp_fail_with(qp, &f);
}

static void terminate(tv_qp *qp, uint8_t opcode, fault_t fault, const char *why) {
    terminate_recv(qp, opcode, fault, why, 0);
}

const char *tv_rcconn_where(const tv_qp *qp) {
    const tv_rcconn *rc = qp->conn.rc;
    if (!rc->established)
        return "during the hello (is the peer a tcpverbs rc endpoint?)";
    return tv_at_boundary(&rc->dec) ? "" : "in the middle of a frame";
}

static void peer_closed(tv_qp *qp) {
    const char *where = *tv_rcconn_where(qp) ? tv_rcconn_where(qp) : "(end of stream)";
    char msg[TV_MSG_LEN];
    int err = qp->conn.pending_error; /* the end of what came before a reset */
    if (err != 0)
        snprintf(msg, sizeof msg, "connection failed %s: %s", where, strerror(err));
    else
        snprintf(msg, sizeof msg, "peer closed the connection %s", where);
    tv_failure f = tv_failure_of(TV_ERR_BROKEN, err ? err : ECONNRESET, msg);
    f.goodbye = 0;
    f.setup = !qp->conn.rc->established;
    tv_qp_fail_with(qp, &f);
}

/* -- the transmit queue -------------------------------------------------------------------- */

static int tx_push(tv_qp *qp, tv_txseg seg) {
    tv_rcconn *rc = qp->conn.rc;
    if (rc->tx_len == rc->tx_cap) {
        uint32_t cap = rc->tx_cap * 2;
        tv_txseg *fresh = cap <= TX_MAX ? malloc(cap * sizeof *fresh) : NULL;
        if (fresh == NULL) {
            tv_qp_fail(qp, TV_ERR_PLAIN, ENOMEM, "the transmit queue could not grow");
            return -1;
        }
        for (uint32_t i = 0; i < rc->tx_len; i++)
            fresh[i] = rc->tx[(rc->tx_head + i) % rc->tx_cap];
        free(rc->tx);
        rc->tx = fresh;
        rc->tx_cap = cap;
        rc->tx_head = 0;
    }
    rc->tx[(rc->tx_head + rc->tx_len++) % rc->tx_cap] = seg;
    return 0;
}

/* Let go of what a written (or dropped) entry held. */
static void tx_release(tv_qp *qp, tv_txseg *seg) {
    tv_rcconn *rc = qp->conn.rc;
    if (seg->owner != NULL)
        seg->owner->tx_refs--;
    if (seg->pin != NULL) {
        tv_mem_unpin(&qp->engine->mem, seg->pin);
        seg->pin = NULL;
    }
    if (seg->cell) {
        rc->cell_head = (rc->cell_head + 1) % rc->cell_cap;
        rc->cell_len--;
    }
    if (seg->answer)
        rc->answers--;
}

/* Queue an answer: its header (copied into a cell) and an optional pinned payload. */
static int answer(tv_qp *qp, const tv_header *h, const uint8_t *payload, uint64_t len,
                  tv_region *pin) {
    tv_rcconn *rc = qp->conn.rc;
    if (rc->cell_len == rc->cell_cap) { /* cannot happen while reading pauses in time */
        if (pin != NULL)
            tv_mem_unpin(&qp->engine->mem, pin);
        tv_qp_fail(qp, TV_ERR_PLAIN, ENOBUFS, "too many answers unwritten");
        return -1;
    }
    uint8_t *cell = rc->cells[(rc->cell_head + rc->cell_len) % rc->cell_cap];
    size_t n = tv_encode_header(h, cell, CELL_SIZE);
    rc->cell_len++;
    int with_payload = len != 0;
    if (tx_push(qp, (tv_txseg){.base = cell, .len = n, .cell = 1, .answer = (uint8_t)!with_payload}) < 0)
        return -1;
    if (with_payload && tx_push(qp, (tv_txseg){.base = payload, .len = len, .pin = pin, .answer = 1}) < 0) {
        tv_mem_unpin(&qp->engine->mem, pin);
        return -1;
    }
    rc->answers++;
    qp->stats[TV_QP_FRAMES_SENT]++;
    return 0;
}

static void queue_ack(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    uint32_t msn;
    atomic_store(&qp->ack_deferred, 0);
    if (tv_rc_take_ack(&rc->proto, &msn)) {
        tv_header h = {.opcode = TV_ACK, .msn = msn};
        answer(qp, &h, NULL, 0, NULL);
    }
}

static void tx_drained(tv_qp *qp);

/* Write what is queued; errors fail the QP. */
static void flush(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = c->rc;
    struct iovec iov[MAX_IOV];
    while (!c->closed && rc->tx_len != 0) {
        int n = 0, flags = 0;
        tv_work *zc_owner = NULL;
        for (uint32_t i = 0; i < rc->tx_len && n < MAX_IOV; i++) {
            const tv_txseg *s = &rc->tx[(rc->tx_head + i) % rc->tx_cap];
            uint64_t skip = i == 0 ? rc->tx_off : 0;
            if (s->len == skip)
                continue;
            int zc = s->zc && tv_zc_wanted(&rc->zc, s->len - skip);
            if (zc && n > 0)
                break; /* what comes before it goes first, copied */
            iov[n++] = (struct iovec){(void *)(uintptr_t)(s->base + skip), s->len - skip};
            if (zc) { /* alone: the kernel reads only registered memory later */
                flags = MSG_ZEROCOPY;
                zc_owner = s->owner;
                break;
            }
        }
        int64_t sent = tv_conn_send(qp, iov, n, flags);
        if (sent == TV_SEND_NOBUFS) { /* out of pinned-page budget: copy from now on */
            rc->zc.disabled = 1;
            qp->stats[TV_QP_ZC_DISABLED]++;
            continue;
        }
        if (sent == TV_SEND_FULL)
            tx_drained(qp); /* answers may have gone: reading may resume */
        if (sent < 0)
            return;
        if (flags != 0) {
            uint64_t mark = tv_zc_sent(&rc->zc);
            qp->stats[TV_QP_ZC_SENDS]++;
            if (zc_owner != NULL)
                zc_owner->zc_mark = mark;
        }
        uint64_t left = (uint64_t)sent;
        while (rc->tx_len != 0) {
            tv_txseg *s = &rc->tx[rc->tx_head];
            uint64_t rest = s->len - rc->tx_off;
            if (left < rest) {
                rc->tx_off += left;
                break;
            }
            left -= rest;
            tx_release(qp, s);
            rc->tx_head = (rc->tx_head + 1) % rc->tx_cap;
            rc->tx_len--;
            rc->tx_off = 0;
        }
    }
    if (c->closed)
        return;
    if (c->want_write) {
        c->want_write = 0;
        tv_conn_set_interest(qp);
    }
    tx_drained(qp);
}

static void tx_drop(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    while (rc->tx_len != 0) {
        tx_release(qp, &rc->tx[rc->tx_head]);
        rc->tx_head = (rc->tx_head + 1) % rc->tx_cap;
        rc->tx_len--;
    }
    rc->tx_off = 0;
}

static void tx_drained(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    if (rc->read_paused && rc->answers < rc->tx_backlog / 2) {
        rc->read_paused = 0;
        qp->conn.want_read = 1;
        tv_conn_set_interest(qp);
    }
}

/* -- set-up ----------------------------------------------------------------------------- */

static void encode_hello(tv_qp *qp, uint8_t *out) {
    memcpy(out, MAGIC, 8);
    out[8] = 0;
    out[9] = PROTOCOL_VERSION;
    out[10] = MODE_RC;
    out[11] = 0;
    put_be32(out + 12, qp->qp_num);
    put_be32(out + 16, qp->params.dest_qp_num);
    put_be32(out + 20, qp->max_send_wr);
    put_be32(out + 24, qp->max_recv_wr);
    put_be32(out + 28, TV_MAX_MSG_SZ);
    out[32] = (uint8_t)qp->params.max_rd_atomic;
    out[33] = (uint8_t)qp->params.max_dest_rd_atomic;
    out[34] = out[35] = 0;
    put_be32(out + 36, qp->params.rq_psn);
}

static void queue_auth(tv_qp *qp) {
    tv_header h = {.opcode = TV_AUTH, .psn = qp->params.sq_psn};
    answer(qp, &h, NULL, 0, NULL); /* not an answer, but a cell; counted as a frame */
}

static void on_hello(tv_qp *qp, const uint8_t *hello) {
    tv_rcconn *rc = qp->conn.rc;
    uint32_t version = (uint32_t)hello[8] << 8 | hello[9];
    char why[TV_MSG_LEN];
    if (version != PROTOCOL_VERSION) {
        snprintf(why, sizeof why,
                 "peer speaks tcpverbs wire protocol version %u, this side speaks version %u",
                 version, PROTOCOL_VERSION);
        tv_failure f = tv_failure_of(TV_ERR_PROTOCOL, EPROTONOSUPPORT, why);
        f.setup = 1;
        tv_qp_fail_with(qp, &f);
        return;
    }
    if (hello[10] != MODE_RC) {
        if (hello[10] == MODE_STREAM)
            snprintf(why, sizeof why, "peer QP uses wire mode 'stream', this QP uses 'rc'");
        else
            snprintf(why, sizeof why, "peer hello names unknown wire mode %u", hello[10]);
        tv_failure f = tv_failure_of(TV_ERR_PROTOCOL,
                                     hello[10] == MODE_STREAM ? EPROTONOSUPPORT : EPROTO, why);
        f.setup = 1;
        tv_qp_fail_with(qp, &f);
        return;
    }
    rc->peer_max_dest_rd_atomic = hello[33];
    rc->established = 1;
    rc->hello_at = 0;
    set_timer(qp);
    tv_rcconn_pump(qp);
}

/* Take hello bytes from data; the bytes used (the QP failed when the magic is wrong). */
static size_t hello_bytes(tv_qp *qp, const uint8_t *data, size_t len) {
    tv_rcconn *rc = qp->conn.rc;
    size_t take = TV_HELLO_SIZE - rc->hello_len;
    if (take > len)
        take = len;
    memcpy(rc->hello_in + rc->hello_len, data, take);
    uint32_t start = rc->hello_len;
    rc->hello_len += (uint32_t)take;
    uint32_t seen = rc->hello_len < 8 ? rc->hello_len : 8;
    if (start < 8 && memcmp(rc->hello_in, MAGIC, seen) != 0) {
        char shown[40];
        size_t k = 0;
        for (uint32_t i = 0; i < seen && k + 5 < sizeof shown; i++) {
            uint8_t b = rc->hello_in[i];
            if (b >= 0x20 && b < 0x7f && b != '\'' && b != '\\')
                shown[k++] = (char)b;
            else
                k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", b);
        }
        shown[k] = 0;
        char why[TV_MSG_LEN];
        snprintf(why, sizeof why,
                 "peer is not a tcpverbs rc endpoint (it sent b'%s' where the hello magic "
                 "b'TCPVERBS' was expected)",
                 shown);
        tv_failure f = tv_failure_of(TV_ERR_PROTOCOL, EPROTO, why);
        f.setup = 1;
        tv_qp_fail_with(qp, &f);
        return take;
    }
    if (rc->hello_len == TV_HELLO_SIZE)
        on_hello(qp, rc->hello_in);
    return take;
}

int tv_rcconn_start(tv_qp *qp, const uint8_t *peer_hello, uint64_t hello_timeout_ns,
                    uint32_t tx_backlog, uint64_t zerocopy_min) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = calloc(1, sizeof *rc);
    uint32_t depth = qp->max_send_wr ? qp->max_send_wr : 1;
    if (tx_backlog < 2)
        tx_backlog = 2;
    if (tx_backlog > 1u << 20)
        tx_backlog = 1u << 20;
    if (rc != NULL) {
        rc->tx_backlog = tx_backlog;
        rc->cell_cap = 2 * tx_backlog + 16;
        rc->win = calloc(depth, sizeof *rc->win);
        rc->done = calloc(depth, sizeof *rc->done);
        rc->stage = malloc(STAGING_SIZE);
        rc->tx_cap = 64;
        rc->tx = malloc(rc->tx_cap * sizeof *rc->tx);
        rc->cells = malloc(sizeof *rc->cells * rc->cell_cap);
    }
    if (rc == NULL || rc->win == NULL || rc->done == NULL || rc->stage == NULL ||
        rc->tx == NULL || rc->cells == NULL) {
        c->rc = rc;
        tv_rcconn_free(qp);
        tv_conn_fail_errno(qp, ENOMEM, "setting up the rc connection");
        tv_conn_close(qp);
        return -1;
    }
    c->rc = rc;
    tv_rc_init(&rc->proto);
    tv_req_init(&rc->req, &rc->proto, rc->win, depth);
    tv_decoder_init(&rc->dec, TV_MAX_MSG_SZ);
    c->want_read = 1;
    int one = 1; /* we batch ourselves */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    tv_zc_enable(&rc->zc, c->fd, zerocopy_min);
    if (tv_conn_watch(qp) != 0)
        return 0; /* the QP failed (and closed the connection) */
    encode_hello(qp, rc->hello_out);
    tx_push(qp, (tv_txseg){.base = rc->hello_out, .len = TV_HELLO_SIZE});
    if (atomic_load(&qp->state) == TV_QPS_RTS)
        queue_auth(qp);
    rc->hello_timeout = hello_timeout_ns ? hello_timeout_ns : DEFAULT_HELLO_TIMEOUT;
    rc->hello_at = tv_now() + rc->hello_timeout;
    set_timer(qp);
    flush(qp);
    if (peer_hello != NULL && !c->closed) { /* read by the connection service already */
        memcpy(rc->hello_in, peer_hello, TV_HELLO_SIZE);
        rc->hello_len = TV_HELLO_SIZE;
        on_hello(qp, rc->hello_in);
    }
    return 0;
}

void tv_rcconn_entered_rts(tv_qp *qp) {
    if (qp->conn.rc != NULL && !qp->conn.closed)
        queue_auth(qp); /* written with what the pump writes next */
}

int tv_rcconn_established(const tv_qp *qp) {
    return qp->conn.rc != NULL && qp->conn.rc->established;
}

/* -- requester ---------------------------------------------------------------------------- */

static uint8_t request_opcode(uint32_t wr_opcode) {
    switch (wr_opcode) {
    case TV_WR_SEND:
        return TV_SEND;
    case TV_WR_SEND_WITH_IMM:
        return TV_SEND_IMM;
    case TV_WR_RDMA_WRITE:
        return TV_WRITE;
    case TV_WR_RDMA_WRITE_WITH_IMM:
        return TV_WRITE_IMM;
    case TV_WR_RDMA_READ:
        return TV_READ_REQ;
    case TV_WR_ATOMIC_CMP_AND_SWP:
        return TV_ATOMIC_CMP_SWP;
    default:
        return TV_ATOMIC_FETCH_ADD;
    }
}

static void encode_request(tv_work *w) {
    tv_header h = {.opcode = request_opcode(w->opcode),
                   .flags = w->solicited ? FLAG_SOLICITED : 0};
    switch (h.opcode) {
    case TV_READ_REQ:
        h.rkey = w->rkey;
        h.addr = w->remote_addr;
        h.length = (uint32_t)w->length;
        break;
    case TV_ATOMIC_CMP_SWP:
    case TV_ATOMIC_FETCH_ADD:
        h.rkey = w->rkey;
        h.addr = w->remote_addr;
        h.compare_add = w->compare_add;
        h.swap = w->swap;
        break;
    default:
        h.payload_len = (uint32_t)w->length;
        h.imm = w->imm;
        h.rkey = w->rkey;
        h.addr = w->remote_addr;
    }
    w->hdr_len = (uint32_t)tv_encode_header(&h, w->hdr, sizeof w->hdr);
}

/* The WR at the ring's head completes (its slot goes back to the ring). */
static void finish_head(tv_qp *qp, uint32_t status) {
    tv_qp_complete_send(qp, sq_at(qp, 0), status);
    tv_ring_consume(qp->sq);
}

/* The oldest WR on the wire is done; 0, or -1 (the QP failed) if its frame is not
 * all written yet -- only a misbehaving peer acknowledges what it cannot have read, and
 * the WR's memory must stay pinned while the kernel may still read it.  It completes now,
 * or, while a zerocopy call that carried it (or an older held WR) is not released, is
 * held until then. */
static int complete_head(tv_qp *qp, uint32_t status) {
    tv_rcconn *rc = qp->conn.rc;
    tv_work *w = win_at(qp, 0);
    if (w->tx_refs != 0) {
        protocol_error(qp, "peer answered a request before it was sent");
        return -1;
    }
    qp->conn.wire_count--;
    if (rc->held != 0 || w->zc_mark > rc->zc.done) {
        w->done_status = status;
        rc->held++;
        return 0;
    }
    finish_head(qp, status);
    return 0;
}

/* Held WRs complete, in order: those the kernel is through with, or (`all`) every one. */
static void complete_held(tv_qp *qp, int all) {
    tv_rcconn *rc = qp->conn.rc;
    while (rc->held != 0 && (all || sq_at(qp, 0)->zc_mark <= rc->zc.done)) {
        rc->held--;
        finish_head(qp, sq_at(qp, 0)->done_status);
    }
}

/* Take the kernel's zerocopy notifications, and complete what they release. */
static void reap_zerocopy(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    uint64_t released = rc->zc.released, copied = rc->zc.copied;
    int got = tv_zc_reap(&rc->zc, qp->conn.fd);
    if (got < 0) {
        tv_conn_broken(qp, -got, "reading zerocopy notifications");
        return;
    }
    qp->stats[TV_QP_ZC_RELEASED] += rc->zc.released - released;
    qp->stats[TV_QP_ZC_COPIED] += rc->zc.copied - copied;
    complete_held(qp, 0);
}

void tv_rcconn_send_deferred_ack(tv_qp *qp) {
    if (qp->conn.rc == NULL || !atomic_load(&qp->ack_deferred))
        return;
    queue_ack(qp);
    if (qp->conn.rc->tx_len != 0)
        flush(qp);
}

void tv_rcconn_complete_held(tv_qp *qp) {
    if (qp->conn.rc != NULL)
        complete_held(qp, 1);
}

static int complete_done(tv_qp *qp, uint32_t ndone) {
    for (uint32_t i = 0; i < ndone; i++)
        if (complete_head(qp, TV_WC_SUCCESS) < 0)
            return -1;
    return 0;
}

void tv_rcconn_pump(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = c->rc;
    if (rc == NULL || c->closed)
        return;
    if (!rc->established || rc->rnr_at != 0 || atomic_load(&qp->state) != TV_QPS_RTS) {
        flush(qp);
        return;
    }
    uint32_t limit = qp->params.max_rd_atomic;
    uint32_t peer = rc->peer_max_dest_rd_atomic ? rc->peer_max_dest_rd_atomic : 1;
    if (peer < limit)
        limit = peer;
    if (limit == 0)
        limit = 1;
    int idle = c->wire_count == 0;
    tv_work *w = win_at(qp, c->wire_count);
    if (w != NULL)
        queue_ack(qp); /* a deferred ACK rides along */
    for (; w != NULL; w = win_at(qp, c->wire_count)) {
        if (w->fault.status != 0) {
            if (c->wire_count != 0)
                break; /* earlier WRs complete first, as on hardware */
            char msg[TV_MSG_LEN];
            tv_work_fault_text(w, msg, sizeof msg);
            uint32_t status = w->fault.status;
            tv_failure f = tv_failure_of(TV_ERR_PLAIN,
                                         status == TV_WC_LOC_LEN_ERR ? EMSGSIZE : EFAULT, msg);
            f.first_status = status; /* it is the oldest: the flush gives it its status */
            tv_qp_fail_with(qp, &f);
            return;
        }
        tv_request r = {.cookie = 0, .length = w->length, .opcode = w->opcode,
                        .rnr_tries = w->rnr_tries, .fence = w->fence,
                        .needs_response = w->needs_response};
        if (!tv_req_may_issue(&rc->req, &r, limit) || tv_req_issue(&rc->req, &r) != 0)
            break;
        encode_request(w);
        if (tx_push(qp, (tv_txseg){.base = w->hdr, .len = w->hdr_len, .owner = w}) < 0)
            return;
        w->tx_refs++;
        if (!w->needs_response) /* READ and atomic segments receive the answer */
            for (uint32_t i = 0; i < w->nseg; i++) {
                tv_txseg seg = {.base = w->seg[i].base, .len = w->seg[i].length, .owner = w,
                                .zc = 1};
                if (tx_push(qp, seg) < 0)
                    return;
                w->tx_refs++;
            }
        c->wire_count++;
        qp->stats[TV_QP_WRS_SENT]++;
        qp->stats[TV_QP_FRAMES_SENT]++;
    }
    if (idle && c->wire_count != 0)
        tv_conn_requester_busy(qp);
    flush(qp);
}

static void on_ack(tv_qp *qp, uint32_t msn) {
    tv_rcconn *rc = qp->conn.rc;
    uint32_t n;
    if (tv_req_on_ack(&rc->req, msn, rc->done, &n) < 0) {
        protocol_error(qp, rc->req.error);
        return;
    }
    if (complete_done(qp, n) < 0)
        return;
    if (tv_ring_count(qp->sq) > rc->held + qp->conn.wire_count)
        tv_rcconn_pump(qp);
}

static void expect_payload(tv_qp *qp, place_t place, const tv_header *h);

static void on_read_response(tv_qp *qp, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    uint32_t n;
    if (tv_req_on_read_response(&rc->req, h->msn, h->payload_len, rc->done, &n) < 0) {
        protocol_error(qp, rc->req.error);
        return;
    }
    if (complete_done(qp, n) < 0)
        return;
    tv_work *w = win_at(qp, 0); /* the READ: its segments receive the answer */
    rc->ntarget = 0;
    for (uint32_t i = 0; i < w->nseg; i++)
        rc->target[rc->ntarget++] = (struct iovec){w->seg[i].base, w->seg[i].length};
    expect_payload(qp, PLACE_READ_RESP, h);
}

static void response_done(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    tv_request r;
    if (tv_req_response_done(&rc->req, &r) < 0) {
        protocol_error(qp, "an answer completed no READ or atomic");
        return;
    }
    if (complete_head(qp, TV_WC_SUCCESS) == 0)
        tv_rcconn_pump(qp);
}

static void on_atomic_response(tv_qp *qp, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    uint32_t n;
    if (tv_req_on_atomic_response(&rc->req, h->msn, rc->done, &n) < 0) {
        protocol_error(qp, rc->req.error);
        return;
    }
    if (complete_done(qp, n) < 0)
        return;
    tv_work *w = win_at(qp, 0); /* one SGE of 8 bytes, checked at post time */
    uint64_t old = h->compare_add;
    if (w->nseg == 1 && w->seg[0].length == 8)
        memcpy(w->seg[0].base, &old, 8); /* host order, as the target's memory holds it */
    response_done(qp);
}

static void on_rnr_nak(tv_qp *qp, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    tv_conn *c = &qp->conn;
    uint32_t n;
    tv_rnr_outcome out;
    if (tv_req_on_rnr_nak(&rc->req, h->msn, h->timer, qp->params.rnr_retry, rc->done, &n,
                          &out) < 0) {
        protocol_error(qp, rc->req.error);
        return;
    }
    if (complete_done(qp, n) < 0)
        return;
    qp->stats[TV_QP_RNR_NAKS_RECEIVED]++;
    if (out.exhausted) { /* the refused request used up its tries: now the oldest */
        char msg[TV_MSG_LEN];
        snprintf(msg, sizeof msg,
                 "peer had no receive posted for request %" PRIu32 " after %u retries "
                 "(rnr_retry)",
                 h->msn, qp->params.rnr_retry);
        tv_failure f = tv_failure_of(TV_ERR_PLAIN, ETIMEDOUT, msg);
        f.first_status = WC_RNR_RETRY_EXC_ERR;
        tv_qp_fail_with(qp, &f);
        return;
    }
    /* go back N: everything from the refused request on is sent again, in order (their
     * frames already queued go out and are dropped by the peer until the RESYNC) */
    for (uint32_t i = 0; i < out.resend; i++)
        win_at(qp, i)->rnr_tries = rc->done[n + i].rnr_tries;
    c->wire_count = 0;
    rc->resync_msn = out.resync_msn;
    uint64_t delay = (uint64_t)(out.delay_ms * 1e6);
    rc->rnr_at = tv_now() + (delay ? delay : 1);
    set_timer(qp);
}

static void on_terminate(tv_qp *qp, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    if (h->msn != NO_MSN) {
        for (uint32_t i = 0; i < rc->req.len; i++) {
            if (tv_req_at(&rc->req, i)->seq != h->msn)
                continue;
            win_at(qp, i)->override = tv_terminate_status(h->status);
            break;
        }
    }
    char msg[TV_MSG_LEN];
    snprintf(msg, sizeof msg, "peer QP went to error: %.*s", (int)h->reason_len, h->reason);
    tv_failure f = tv_failure_of(TV_ERR_BROKEN, ECONNABORTED, msg);
    f.goodbye = 0;
    tv_qp_fail_with(qp, &f);
}

/* -- responder ---------------------------------------------------------------------------- */

/* The target memory of a one-sided request, pinned (NULL for zero bytes); on a refusal,
 * the QP has failed and -1 is returned. */
static int remote(tv_qp *qp, const tv_header *h, uint64_t length, uint32_t need,
                  tv_region **pin) {
    *pin = NULL;
    if (length == 0)
        return 0; /* zero-length transfers touch no memory */
    static const char *const names[] = {[TV_REMOTE_WRITE] = "IBV_ACCESS_REMOTE_WRITE",
                                        [TV_REMOTE_READ] = "IBV_ACCESS_REMOTE_READ",
                                        [TV_REMOTE_ATOMIC] = "IBV_ACCESS_REMOTE_ATOMIC"};
    char why[TV_MSG_LEN];
    int st = tv_mem_check(&qp->engine->mem, h->rkey, qp->pd, h->addr, length, need, pin);
    if (st == TV_MEM_NO_KEY || st == TV_MEM_WRONG_PD) {
        snprintf(why, sizeof why, "rkey 0x%08x is not a valid MR of the target QP", h->rkey);
        terminate(qp, h->opcode, BAD_RKEY, why);
        return -1;
    }
    if (st == TV_MEM_NO_ACCESS) {
        snprintf(why, sizeof why, "target MR 0x%08x was registered without %s", h->rkey,
                 names[need]);
        terminate(qp, h->opcode, MR_ACCESS, why);
        return -1;
    }
    if (!(qp->params.access_flags & need)) {
        if (*pin != NULL)
            tv_mem_unpin(&qp->engine->mem, *pin);
        *pin = NULL;
        snprintf(why, sizeof why, "target QP's qp_access_flags do not allow %s", names[need]);
        terminate(qp, h->opcode, QP_ACCESS, why);
        return -1;
    }
    if (st != TV_MEM_OK) {
        snprintf(why, sizeof why, "[0x%" PRIx64 ", +%" PRIu64 ") is outside target MR",
                 h->addr, length);
        terminate(qp, h->opcode, OUT_OF_RANGE, why);
        return -1;
    }
    return 0;
}

/* The receive a SEND / WRITE_IMM consumes; NULL after refusing it (RNR or an error). */
static tv_work *take_receive(tv_qp *qp, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    tv_work *w = tv_qp_next_recv(qp);
    if (w == NULL) {
        uint32_t ack;
        if (tv_rc_refuse(&rc->proto, &ack)) {
            tv_header a = {.opcode = TV_ACK, .msn = ack};
            answer(qp, &a, NULL, 0, NULL);
        }
        tv_header nak = {.opcode = TV_RNR_NAK, .msn = tv_rc_next_msn(&rc->proto),
                         .timer = (uint8_t)qp->params.min_rnr_timer};
        answer(qp, &nak, NULL, 0, NULL);
        qp->stats[TV_QP_RNR_NAKS_SENT]++;
        expect_payload(qp, PLACE_DISCARD, h); /* the requester sends it again */
        return NULL;
    }
    if (w->fault.status != 0) { /* stays queued until placed; its own error first */
        char msg[160], why[TV_MSG_LEN];
        tv_work_fault_text(w, msg, sizeof msg);
        snprintf(why, sizeof why, "receive WR at the peer failed: %s", msg);
        terminate_recv(qp, h->opcode, RECV_BROKEN, why, w->fault.status);
        return NULL;
    }
    return w;
}

static void execute(tv_qp *qp, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    tv_region *pin;
    switch (h->opcode) {
    case TV_SEND:
    case TV_SEND_IMM: {
        tv_work *w = take_receive(qp, h);
        if (w == NULL)
            return;
        if (h->payload_len > w->length) {
            char why[TV_MSG_LEN];
            snprintf(why, sizeof why,
                     "message of %u bytes does not fit the posted receive of %" PRIu64
                     " bytes",
                     h->payload_len, w->length);
            terminate_recv(qp, h->opcode, RECV_TOO_SMALL, why, TV_WC_LOC_LEN_ERR);
            return;
        }
        rc->ntarget = 0;
        for (uint32_t i = 0; i < w->nseg; i++)
            rc->target[rc->ntarget++] = (struct iovec){w->seg[i].base, w->seg[i].length};
        expect_payload(qp, PLACE_RECV, h);
        return;
    }
    case TV_WRITE:
    case TV_WRITE_IMM: {
        if (remote(qp, h, h->payload_len, TV_REMOTE_WRITE, &pin) < 0)
            return;
        tv_work *w = NULL;
        if (h->opcode == TV_WRITE_IMM && (w = take_receive(qp, h)) == NULL) {
            if (pin != NULL)
                tv_mem_unpin(&qp->engine->mem, pin);
            return;
        }
        rc->ntarget = 0;
        if (h->payload_len)
            rc->target[rc->ntarget++] =
                (struct iovec){(void *)(uintptr_t)h->addr, h->payload_len};
        rc->target_pin = pin;
        expect_payload(qp, h->opcode == TV_WRITE ? PLACE_WRITE : PLACE_RECV, h);
        return;
    }
    case TV_READ_REQ: {
        if (remote(qp, h, h->length, TV_REMOTE_READ, &pin) < 0)
            return;
        uint32_t msn = tv_rc_request_done(&rc->proto);
        tv_header resp = {.opcode = TV_READ_RESP, .msn = msn, .payload_len = h->length};
        /* the kernel reads the target memory straight from the MR: no copy here */
        answer(qp, &resp, (const uint8_t *)(uintptr_t)h->addr, h->length, pin);
        qp->stats[TV_QP_REMOTE_OPS]++;
        return;
    }
    default: { /* the atomics */
        if (h->addr % 8) {
            char why[TV_MSG_LEN];
            snprintf(why, sizeof why, "atomic target 0x%" PRIx64 " is not 8-byte aligned",
                     h->addr);
            terminate(qp, h->opcode, MISALIGNED, why);
            return;
        }
        if (remote(qp, h, 8, TV_REMOTE_ATOMIC, &pin) < 0)
            return;
        uint64_t *target = (uint64_t *)(uintptr_t)h->addr;
        uint64_t old;
        if (h->opcode == TV_ATOMIC_FETCH_ADD) {
            old = __atomic_fetch_add(target, h->compare_add, __ATOMIC_SEQ_CST);
        } else {
            old = h->compare_add;
            __atomic_compare_exchange_n(target, &old, h->swap, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST); /* old: the value found */
        }
        tv_mem_unpin(&qp->engine->mem, pin);
        uint32_t msn = tv_rc_request_done(&rc->proto);
        tv_header resp = {.opcode = TV_ATOMIC_RESP, .msn = msn, .compare_add = old};
        answer(qp, &resp, NULL, 0, NULL);
        qp->stats[TV_QP_REMOTE_OPS]++;
    }
    }
}

/* -- payload placement ------------------------------------------------------------------------ */

static void finish_payload(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    place_t place = rc->place;
    rc->place = PLACE_NONE;
    rc->ntarget = rc->target_at = 0;
    if (rc->target_pin != NULL) {
        tv_mem_unpin(&qp->engine->mem, rc->target_pin);
        rc->target_pin = NULL;
    }
    switch (place) {
    case PLACE_READ_RESP:
        response_done(qp);
        return;
    case PLACE_WRITE:
        tv_rc_request_done(&rc->proto);
        qp->stats[TV_QP_REMOTE_OPS]++;
        return;
    case PLACE_RECV: {
        tv_rc_request_done(&rc->proto);
        tv_work *w = tv_ring_peek(qp->rq, 0);
        int with_imm = rc->placed_op != TV_SEND;
        qp->stats[TV_QP_WRS_RECEIVED]++;
        tv_qp_complete_recv_full(qp, w, TV_WC_SUCCESS, rc->placed_len,
                                 rc->placed_op == TV_WRITE_IMM ? WC_RECV_RDMA_WITH_IMM
                                                               : TV_WC_RECV,
                                 with_imm ? rc->placed_imm : 0, with_imm ? WC_WITH_IMM : 0,
                                 (rc->placed_flags & FLAG_SOLICITED) != 0, 0);
        tv_ring_consume(qp->rq);
        return;
    }
    default:
        return;
    }
}

static void expect_payload(tv_qp *qp, place_t place, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    rc->place = place;
    rc->target_at = 0;
    if (place == PLACE_DISCARD)
        rc->ntarget = 0;
    rc->placed_op = h->opcode;
    rc->placed_flags = h->flags;
    rc->placed_imm = h->imm;
    rc->placed_len = h->payload_len;
    if (rc->dec.payload_remaining == 0)
        finish_payload(qp);
}

/* n payload bytes are in the target now: move past them. */
static void advance(tv_qp *qp, uint64_t n) {
    tv_rcconn *rc = qp->conn.rc;
    tv_payload_consumed(&rc->dec, n);
    while (n != 0 && rc->target_at < rc->ntarget) {
        struct iovec *t = &rc->target[rc->target_at];
        if (n >= t->iov_len) {
            n -= t->iov_len;
            rc->target_at++;
        } else {
            t->iov_base = (uint8_t *)t->iov_base + n;
            t->iov_len -= n;
            n = 0;
        }
    }
    if (rc->dec.payload_remaining == 0)
        finish_payload(qp);
}

/* Payload bytes that arrived in staging go to their destination. */
static void place(tv_qp *qp, const uint8_t *chunk, uint64_t n) {
    tv_rcconn *rc = qp->conn.rc;
    if (rc->place == PLACE_DISCARD) {
        tv_payload_consumed(&rc->dec, n);
        if (rc->dec.payload_remaining == 0)
            finish_payload(qp);
        return;
    }
    uint64_t off = 0;
    for (uint32_t i = rc->target_at; i < rc->ntarget && off < n; i++) {
        uint64_t k = rc->target[i].iov_len < n - off ? rc->target[i].iov_len : n - off;
        memcpy(rc->target[i].iov_base, chunk + off, k);
        off += k;
    }
    advance(qp, n);
}

/* -- receive side ------------------------------------------------------------------------------ */

static void on_header(tv_qp *qp, const tv_header *h) {
    tv_rcconn *rc = qp->conn.rc;
    qp->stats[TV_QP_FRAMES_RECEIVED]++;
    switch (h->opcode) {
    case TV_SEND:
    case TV_SEND_IMM:
    case TV_WRITE:
    case TV_WRITE_IMM:
    case TV_READ_REQ:
    case TV_ATOMIC_CMP_SWP:
    case TV_ATOMIC_FETCH_ADD:
        if (rc->proto.discarding)
            expect_payload(qp, PLACE_DISCARD, h); /* dropped until the RESYNC */
        else
            execute(qp, h);
        return;
    case TV_ACK:
        on_ack(qp, h->msn);
        return;
    case TV_READ_RESP:
        on_read_response(qp, h);
        return;
    case TV_ATOMIC_RESP:
        on_atomic_response(qp, h);
        return;
    case TV_RNR_NAK:
        on_rnr_nak(qp, h);
        return;
    case TV_RESYNC: {
        char err[TV_RC_ERROR_LEN];
        if (tv_rc_on_resync(&rc->proto, h->msn, err, sizeof err) < 0)
            protocol_error(qp, err);
        return;
    }
    case TV_AUTH:
        return; /* for the peer's connection service; checked there, if at all */
    default:    /* TERMINATE */
        on_terminate(qp, h);
    }
}

/* Handle the frames in data[0:len]; the bytes used. */
static size_t consume(tv_qp *qp, const uint8_t *data, size_t len) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = c->rc;
    size_t pos = 0;
    while (pos < len && rc->budget > 0 && !c->closed) {
        rc->budget--;
        if (!rc->established) {
            pos += hello_bytes(qp, data + pos, len - pos);
            continue;
        }
        uint64_t remaining = rc->dec.payload_remaining;
        if (remaining) {
            uint64_t n = remaining < len - pos ? remaining : len - pos;
            place(qp, data + pos, n);
            pos += n;
            continue;
        }
        size_t used = 0;
        int r = tv_decode(&rc->dec, data + pos, len - pos, &rc->h, &used);
        pos += used;
        if (r == TV_ERROR) {
            protocol_error(qp, rc->dec.error);
            return pos;
        }
        if (r == TV_HEADER)
            on_header(qp, &rc->h);
    }
    return pos;
}

/* Read and handle what is there, within the call's budget; 1 if anything arrived. */
static int receive_loop(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = c->rc;
    int got = 0;
    while (!c->closed && rc->budget > 0) {
        int drained = 0;
        if (rc->rx_start == rc->rx_end) {
            rc->rx_start = rc->rx_end = 0;
            if (rc->answers > rc->tx_backlog) { /* a peer that does not read them */
                rc->read_paused = 1;
                c->want_read = 0;
                tv_conn_set_interest(qp);
                return got;
            }
            int64_t n;
            uint64_t want;
            if (rc->place != PLACE_NONE && rc->place != PLACE_DISCARD &&
                rc->dec.payload_remaining >= DIRECT_MIN) {
                /* straight into the destination: no staging copy */
                struct iovec iov[TV_MAX_SGE];
                int k = 0;
                uint64_t need = rc->dec.payload_remaining;
                want = need;
                for (uint32_t i = rc->target_at; i < rc->ntarget && need; i++) {
                    uint64_t part = rc->target[i].iov_len < need ? rc->target[i].iov_len : need;
                    iov[k++] = (struct iovec){rc->target[i].iov_base, part};
                    need -= part;
                }
                want -= need;
                n = tv_conn_recv(qp, iov, k);
                if (n > 0)
                    advance(qp, (uint64_t)n);
            } else {
                want = STAGING_SIZE - rc->rx_end;
                struct iovec iov = {rc->stage + rc->rx_end, want};
                n = tv_conn_recv(qp, &iov, 1);
                if (n > 0)
                    rc->rx_end += (uint32_t)n;
            }
            if (n == TV_RECV_EOF)
                peer_closed(qp);
            if (n <= 0)
                return got;
            got = 1;
            rc->budget -= READ_COST;
            drained = (uint64_t)n < want;
        }
        size_t used = consume(qp, rc->stage + rc->rx_start, rc->rx_end - rc->rx_start);
        if (c->closed)
            return got;
        rc->rx_start += (uint32_t)used;
        if (rc->rx_end == STAGING_SIZE && rc->rx_start) { /* keep a partial header */
            uint32_t rest = rc->rx_end - rc->rx_start;
            memmove(rc->stage, rc->stage + rc->rx_start, rest);
            rc->rx_start = 0;
            rc->rx_end = rest;
        }
        if (drained && rc->rx_start == rc->rx_end)
            return got; /* a short read emptied the socket: asking again says EAGAIN */
    }
    return got;
}

static void process(tv_qp *qp, int app) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = c->rc;
    int owed_before = tv_rc_ack_owed(&rc->proto);
    rc->budget = WORK_PER_CALL;
    int got = receive_loop(qp);
    if (c->closed)
        return;
    /* a spinning application's ACK may wait for its next move: its reply often follows
     * at once, and the ACK then rides in the same sendmsg (see rc.py, _process); its
     * next empty poll of any CQ sends it otherwise (tv_engine_send_deferred_acks) */
    if (c->pending_error != 0)
        return; /* delivering what came before a reset: nothing can be written */
    if (!(app && got && c->reads_parked && !owed_before)) {
        queue_ack(qp);
    } else if (tv_rc_ack_owed(&rc->proto)) { /* until the application's next move */
        atomic_store(&qp->ack_deferred, 1);
        atomic_store(&qp->engine->acks_deferred, 1);
    }
    if (rc->tx_len)
        flush(qp);
    if (rc->budget <= 0 && !c->closed && rc->resume_at == 0) {
        rc->resume_at = tv_now(); /* more may wait in staging: the engine thread goes on */
        set_timer(qp);
    }
}

void tv_rcconn_receive(tv_qp *qp) {
    if (qp->conn.rc != NULL && !qp->conn.closed && !qp->conn.rc->read_paused)
        process(qp, 0);
}

void tv_rcconn_progress(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    if (rc == NULL || qp->conn.closed)
        return;
    if (tv_zc_outstanding(&rc->zc)) /* here rather than by waking the engine thread */
        reap_zerocopy(qp);
    if (!qp->conn.closed && !rc->read_paused)
        process(qp, 1);
}

void tv_rcconn_on_events(tv_qp *qp, uint32_t events) {
    tv_conn *c = &qp->conn;
    if (events & EPOLLERR) {
        int err = tv_conn_socket_error(qp);
        if (err != 0) {
            /* what the kernel received before is still readable: take it first */
            c->pending_error = err;
            process(qp, 0);
            tv_conn_broken(qp, err, "connection failed");
            return;
        }
        if (c->rc->zc.threshold != 0) /* no error: zerocopy notifications are queued */
            reap_zerocopy(qp);
        if (c->closed)
            return;
    }
    if ((events & EPOLLOUT) && !c->closed)
        flush(qp);
    if ((events & (EPOLLIN | EPOLLHUP)) && !c->closed && !c->rc->read_paused &&
        !tv_conn_park_reads(qp, tv_now()))
        process(qp, 0);
}

void tv_rcconn_on_timer(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = c->rc;
    if (rc->hello_at != 0 && rc->hello_at <= now) {
        rc->hello_at = 0;
        if (!rc->established) {
            char msg[TV_MSG_LEN];
            snprintf(msg, sizeof msg,
                     "no tcpverbs hello from the peer within %g s (is it a tcpverbs rc "
                     "endpoint?)",
                     (double)rc->hello_timeout / 1e9);
            tv_failure f = tv_failure_of(TV_ERR_PLAIN, ETIMEDOUT, msg);
            f.setup = 1;
            tv_qp_fail_with(qp, &f);
            return;
        }
    }
    if (rc->rnr_at != 0 && rc->rnr_at <= now) {
        rc->rnr_at = 0;
        tv_header h = {.opcode = TV_RESYNC, .msn = rc->resync_msn};
        answer(qp, &h, NULL, 0, NULL);
        tv_rcconn_pump(qp);
        if (c->closed)
            return;
    }
    if (rc->resume_at != 0 && rc->resume_at <= now) {
        rc->resume_at = 0;
        process(qp, 0);
        if (c->closed)
            return;
    }
    if (c->ack_at != 0 && c->ack_at <= now)
        c->ack_at = 0;
    if (c->watch_at != 0 && c->watch_at <= now)
        tv_conn_watchdog(qp, now, c->wire_count != 0 && rc->rnr_at == 0);
    if (!c->closed && c->park_at != 0 && c->park_at <= now && tv_conn_park_check(qp, now))
        process(qp, 0);
    if (!c->closed)
        set_timer(qp);
}

/* -- the end ---------------------------------------------------------------------------------- */

int tv_rcconn_uses(const tv_qp *qp, const tv_region *region) {
    const tv_rcconn *rc = qp->conn.rc;
    if (rc->target_pin == region)
        return 1;
    for (uint32_t i = 0; i < rc->tx_len; i++)
        if (rc->tx[(rc->tx_head + i) % rc->tx_cap].pin == region)
            return 1;
    return 0;
}

int tv_rcconn_placing_recv(const tv_qp *qp) { return qp->conn.rc->place == PLACE_RECV; }

void tv_rcconn_refuse_gone(tv_qp *qp, const char *why) {
    terminate(qp, qp->conn.rc->placed_op, MR_GONE, why);
}

void tv_rcconn_close(tv_qp *qp, int goodbye, const char *why) {
    tv_conn *c = &qp->conn;
    tv_rcconn *rc = c->rc;
    if (rc == NULL || c->closed) {
        tv_conn_close(qp);
        return;
    }
    int graceful = goodbye && rc->established && !c->closed;
    if (graceful) {
        /* what we did carry out still counts; then why we stop */
        uint32_t ack;
        if (tv_rc_take_ack(&rc->proto, &ack)) {
            tv_header a = {.opcode = TV_ACK, .msn = ack};
            answer(qp, &a, NULL, 0, NULL);
        }
        tv_header t = {.opcode = TV_TERMINATE,
                       .msn = rc->has_goodbye ? rc->bye_msn : NO_MSN,
                       .status = (uint8_t)(rc->has_goodbye ? rc->bye_status : WC_REM_ABORT_ERR)};
        const char *reason = rc->has_goodbye ? rc->bye_why : why;
        size_t rl = strlen(reason);
        t.reason_len = (uint32_t)(rl < TV_MAX_REASON ? rl : TV_MAX_REASON);
        memcpy(t.reason, reason, t.reason_len);
        size_t n = tv_encode_header(&t, rc->bye_buf, sizeof rc->bye_buf);
        if (n != 0 && tx_push(qp, (tv_txseg){.base = rc->bye_buf, .len = n}) == 0)
            flush(qp); /* best effort: what does not fit now is lost with the connection */
    } else if (rc->established && !c->closed) {
        queue_ack(qp); /* what the peer is owed for work done here, if it fits now */
        flush(qp);
    }
    tx_drop(qp);
    if (rc->target_pin != NULL)
        tv_mem_unpin(&qp->engine->mem, rc->target_pin);
    rc->target_pin = NULL;
    rc->place = PLACE_NONE;
    rc->hello_at = rc->rnr_at = rc->resume_at = 0;
    if (graceful && c->fd >= 0) {
        /* half-close and drain until the peer's FIN: closing with unread data would
         * reset the connection and could destroy the TERMINATE before it is read */
        tv_conn_unwatch(qp);
        int fd = c->fd;
        c->fd = -1;
        tv_conn_close(qp);
        tv_engine_drain(qp->engine, fd);
        return;
    }
    tv_conn_close(qp);
}

void tv_rcconn_free(tv_qp *qp) {
    tv_rcconn *rc = qp->conn.rc;
    if (rc == NULL)
        return;
    free(rc->win);
    free(rc->done);
    free(rc->stage);
    free(rc->tx);
    free(rc->cells);
    free(rc);
    qp->conn.rc = NULL;
}

uint32_t tv_rcconn_tx_queued(const tv_qp *qp) {
    return qp->conn.rc != NULL ? qp->conn.rc->tx_len : 0;
}
