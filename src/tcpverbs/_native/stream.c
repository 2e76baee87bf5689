/* The stream wire mode in C: the TCP payload *is* the application's data.  The twin of
 * tcpverbs/engine/py/stream.py and the parts of transport.py it uses -- read their
 * docstrings for the semantics, which are the same:
 *
 *  - SEND: the WR's segments go out with sendmsg (gathered across WRs, up to IOV_MAX
 *    segments a call, no copy); a signaled SEND completes when TCP has acknowledged its
 *    last byte (the bytes written minus SIOCOUTQ), looked at on a backing-off timer and
 *    on every empty poll, since acknowledgements raise no epoll event.
 *  - Receives are filled in order with recvmsg straight into their segments; one
 *    completes as soon as data has landed in it (byte_len: what landed).
 *  - The peer's EOF ends the receive side only; a reset fails the QP after the data the
 *    kernel holds is delivered (a stream with nothing outstanding is *held*, unwatched,
 *    for receives posted later); before any flush SIOCOUTQ is asked once more.
 *  - The requester timeout (tcpverbs.engine.api.requester_timeout) watches TCP_INFO.
 *  - While the application spins on poll, the engine thread parks its reads
 *    (APP_POLL_GRACE), as the Python engine does: the poller receives by itself.
 *
 * Every function runs with the QP's lock held; the caller (qp.c) holds it.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <limits.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    ACK_POLL_FIRST = 200000,    /* ns */
    ACK_POLL_MAX = 20000000,
    MAX_IOV = 1024,
    RECV_BATCH = 64,            /* receives one recvmsg may fill */
    ACK_CHECK_GAP = 20000,      /* ns between two looks at acknowledgements from polls */
};

static tv_work *sq_at(tv_qp *qp, uint32_t i) { return tv_ring_peek(qp->sq, i); }

void tv_stream_start(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->want_read = tv_ring_count(qp->rq) != 0;
    c->ack_delay = ACK_POLL_FIRST;
    if (tv_conn_watch(qp) == 0)
        tv_stream_pump(qp);
}

/* A WR whose memory did not check out at post time reached the head: it completes with
 * its error, and the QP fails. */
static void fail_on_fault(tv_qp *qp, const tv_work *w, int send) {
    char msg[TV_MSG_LEN];
    tv_work_fault_text(w, msg, sizeof msg);
    tv_failure f = tv_failure_of(TV_ERR_PLAIN, EFAULT, msg);
    if (send) /* it is the oldest: the flush gives it its own status */
        f.first_status = w->fault.status;
    else
        f.first_recv_status = w->fault.status;
    tv_qp_fail_with(qp, &f);
}

/* -- send ----------------------------------------------------------------------------- */

static void complete_acked(tv_qp *qp, int outq) {
    tv_conn *c = &qp->conn;
    uint64_t acked = c->sent - (uint64_t)(outq > 0 ? outq : 0);
    tv_work *w;
    while (c->wire_count != 0 && (w = sq_at(qp, 0))->seq <= acked) {
        tv_qp_complete_send(qp, w, TV_WC_SUCCESS);
        tv_ring_consume(qp->sq);
        c->wire_count--;
        if (c->tx_index != 0)
            c->tx_index--;
        c->ack_delay = ACK_POLL_FIRST;
    }
}

void tv_stream_settle(tv_qp *qp) {
    int outq;
    if (qp->conn.fd >= 0 && tv_conn_ioctl(qp->conn.fd, SIOCOUTQ, &outq) == 0)
        complete_acked(qp, outq);
}

static void check_acked(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    int outq;
    int err = tv_conn_ioctl(c->fd, SIOCOUTQ, &outq);
    qp->stats[TV_QP_ACK_CHECKS]++;
    c->looked = tv_now();
    if (err != 0) {
        tv_conn_fail_errno(qp, err, "reading the send queue");
        return;
    }
    complete_acked(qp, outq);
    if (c->closed)
        return;
    if (c->wire_count == 0 && tv_ring_count(qp->sq) != 0) {
        tv_stream_pump(qp); /* an errored WR waited for the ones before it */
        return;
    }
    if (c->wire_count != 0 && c->ack_at == 0) {
        c->ack_at = tv_now() + c->ack_delay;
        c->ack_delay = c->ack_delay * 2 < ACK_POLL_MAX ? c->ack_delay * 2 : ACK_POLL_MAX;
        tv_qp_set_timer(qp);
    }
}

/* Write what is queued; errors fail the QP. */
static void flush(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    struct iovec iov[MAX_IOV];
    while (!c->closed && c->tx_index < c->wire_count) {
        int n = 0;
        uint64_t skip = c->tx_off;
        for (uint32_t i = c->tx_index; i < c->wire_count && n < MAX_IOV; i++) {
            const tv_work *w = sq_at(qp, i);
            for (uint32_t s = 0; s < w->nseg && n < MAX_IOV; s++) {
                const tv_seg *seg = &w->seg[s];
                if (skip >= seg->length) {
                    skip -= seg->length;
                    continue;
                }
                iov[n].iov_base = seg->base + skip;
                iov[n].iov_len = seg->length - skip;
                skip = 0;
                n++;
            }
        }
        int64_t sent = tv_conn_send(qp, iov, n, 0);
        if (sent < 0)
            return; /* full (epoll says when there is room), or the QP failed */
        c->sent += (uint64_t)sent;
        /* advance the cursor; WRs of zero bytes are passed over */
        uint64_t left = (uint64_t)sent;
        while (c->tx_index < c->wire_count) {
            uint64_t rest = sq_at(qp, c->tx_index)->length - c->tx_off;
            if (left < rest) {
                c->tx_off += left;
                break;
            }
            left -= rest;
            c->tx_index++;
            c->tx_off = 0;
        }
    }
    if (c->closed)
        return;
    if (c->want_write) {
        c->want_write = 0;
        tv_conn_set_interest(qp);
    }
    if (c->wire_count != 0 && c->ack_at == 0) /* all written: watch acknowledgements */
        check_acked(qp);
}

void tv_stream_pump(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    if (c->closed || atomic_load(&qp->state) != TV_QPS_RTS)
        return;
    int idle = c->wire_count == 0;
    tv_work *w;
    while ((w = sq_at(qp, c->wire_count)) != NULL) {
        if (w->fault.status != 0) {
            if (c->wire_count == 0) /* else earlier WRs complete first */
                fail_on_fault(qp, w, 1);
            break;
        }
        c->queued += w->length;
        w->seq = c->queued;
        c->wire_count++;
        qp->stats[TV_QP_WRS_SENT]++;
    }
    if (idle && c->wire_count != 0)
        tv_conn_requester_busy(qp);
    if (c->tx_index < c->wire_count)
        flush(qp);
}

/* -- receive -------------------------------------------------------------------------- */

static void peer_closed(tv_qp *qp);

void tv_stream_receive(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    tv_work *w;
    if (c->ended) { /* nothing more will come: receives end at once */
        while ((w = tv_ring_peek(qp->rq, 0)) != NULL) {
            tv_qp_complete_recv(qp, w, TV_WC_WR_FLUSH_ERR, 0);
            tv_ring_consume(qp->rq);
        }
        return;
    }
    while (!c->closed && (w = tv_ring_peek(qp->rq, 0)) != NULL) {
        if (w->fault.status != 0) {
            fail_on_fault(qp, w, 0);
            return;
        }
        if (w->length == 0) { /* nothing can land in an empty one: it completes, in order */
            tv_qp_complete_recv(qp, w, TV_WC_SUCCESS, 0);
            tv_ring_consume(qp->rq);
            continue;
        }
        /* this receive and the ordinary ones after it: one recvmsg fills them in order
         * (the stream has no boundaries; each receive takes the bytes that land in it) */
        struct iovec iov[MAX_IOV];
        int n_iov = 0;
        uint32_t batch = 0;
        uint64_t room = 0;
        tv_work *x;
        /* as many as the last read filled, twice over: an empty poll gathers one */
        uint32_t most = c->recv_batch ? c->recv_batch : 1;
        while (batch < most && (x = tv_ring_peek(qp->rq, batch)) != NULL &&
               x->fault.status == 0 && x->length != 0 && n_iov + (int)x->nseg <= MAX_IOV) {
            for (uint32_t i = 0; i < x->nseg; i++)
                iov[n_iov++] = (struct iovec){x->seg[i].base, x->seg[i].length};
            room += x->length;
            batch++;
        }
        int64_t got = tv_conn_recv(qp, iov, n_iov);
        if (got == TV_RECV_EOF && c->pending_error != 0) /* all that came before landed */
            tv_conn_broken(qp, c->pending_error, "connection failed");
        else if (got == TV_RECV_EOF)
            peer_closed(qp);
        if (got < 0)
            return; /* the QP failed, or the stream ended */
        if (got == 0)
            break; /* would block */
        for (uint64_t left = (uint64_t)got; left != 0;) {
            x = tv_ring_peek(qp->rq, 0);
            uint64_t took = left < x->length ? left : x->length;
            qp->stats[TV_QP_WRS_RECEIVED]++;
            tv_qp_complete_recv(qp, x, TV_WC_SUCCESS, (uint32_t)took);
            tv_ring_consume(qp->rq);
            left -= took;
        }
        if ((uint64_t)got < room) {
            c->recv_batch = 1;
            break; /* a short read drained the socket: asking again would say EAGAIN */
        }
        c->recv_batch = most * 2 < RECV_BATCH ? most * 2 : RECV_BATCH;
    }
    if (c->closed || c->ended)
        return;
    if (c->pending_error != 0 && tv_conn_readable(qp) == 0) {
        tv_conn_broken(qp, c->pending_error, "connection failed"); /* all of it landed */
        return;
    }
    int want = tv_ring_count(qp->rq) != 0;
    if (want != c->want_read) {
        c->want_read = want;
        tv_conn_set_interest(qp);
    }
}

static void peer_closed(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->ended = 1;
    c->want_read = 0;
    tv_conn_set_interest(qp);
    tv_stream_receive(qp);
}

void tv_stream_progress(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    tv_stream_receive(qp);
    /* a spinning poller looks at acknowledgements, but not more often than every
     * ACK_CHECK_GAP: each look is a system call, and they come in bursts anyway */
    if (!c->closed && c->wire_count != 0 && c->tx_index == c->wire_count &&
        tv_now() - c->looked >= ACK_CHECK_GAP)
        check_acked(qp);
}

/* -- the engine thread's side ------------------------------------------------------------ */

/* A failed socket: deliver what the kernel holds, then fail -- or hold the stream for
 * receives posted later when that data waits and nothing of ours does. */
static void socket_failed(tv_qp *qp, int err) {
    tv_conn *c = &qp->conn;
    c->pending_error = err;
    tv_stream_receive(qp);
    if (c->closed)
        return;
    if (c->wire_count == 0 && tv_ring_count(qp->sq) == 0 && tv_conn_readable(qp) > 0) {
        tv_conn_unwatch(qp); /* its error would be reported for ever */
        return;
    }
    tv_conn_broken(qp, err, "connection failed");
}

void tv_stream_on_events(tv_qp *qp, uint32_t events) {
    tv_conn *c = &qp->conn;
    if (events & EPOLLERR) {
        int err = tv_conn_socket_error(qp);
        if (err != 0) {
            socket_failed(qp, err);
            return;
        }
    }
    if ((events & EPOLLOUT) && !c->closed)
        flush(qp);
    if ((events & (EPOLLIN | EPOLLHUP)) && !c->closed && !tv_conn_park_reads(qp, tv_now()))
        tv_stream_receive(qp);
}

void tv_stream_on_timer(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    if (c->ack_at != 0 && c->ack_at <= now) {
        c->ack_at = 0;
        if (c->wire_count != 0)
            check_acked(qp);
    }
    if (!c->closed && c->watch_at != 0 && c->watch_at <= now)
        tv_conn_watchdog(qp, now, c->wire_count != 0);
    if (!c->closed && c->park_at != 0 && c->park_at <= now && tv_conn_park_check(qp, now))
        tv_stream_receive(qp); /* whatever arrived meanwhile */
    if (!c->closed)
        tv_qp_set_timer(qp);
}
