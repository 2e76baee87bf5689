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
    APP_POLL_GRACE = 2000000,   /* ns without a poll before the engine thread reads */
    PARK_CHECK_MAX = 32000000,
    WATCH_TICKS = 4,
    WINDOW_PROBES_UNANSWERED = 3,
    MAX_IOV = 1024,
    RECV_BATCH = 64,            /* receives one recvmsg may fill */
    ACK_CHECK_GAP = 20000,      /* ns between two looks at acknowledgements from polls */
};

static tv_work *sq_at(tv_qp *qp, uint32_t i) { return tv_ring_peek(qp->sq, i); }

static void fail_errno(tv_qp *qp, int err, const char *doing) {
    int kind = TV_ERR_PLAIN;
    switch (err) { /* tcpverbs.errors.from_oserror */
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENOTCONN:
        kind = TV_ERR_BROKEN;
    }
    char msg[TV_MSG_LEN];
    snprintf(msg, sizeof msg, "%s: %s", doing, strerror(err));
    tv_qp_fail(qp, kind, err, msg,
               err == ETIMEDOUT ? TV_WC_RETRY_EXC_ERR : TV_WC_WR_FLUSH_ERR, NULL);
}

static void broken(tv_qp *qp, int err, const char *doing) {
    if (!qp->conn.closed)
        fail_errno(qp, err, doing);
}

static int ioctl_int(int fd, unsigned long request, int *value) {
    return ioctl(fd, request, value) == 0 ? 0 : errno;
}

static uint32_t events_of(const tv_conn *c) {
    return (c->want_read && !c->reads_parked ? EPOLLIN : 0u) |
           (c->want_write ? EPOLLOUT : 0u) | EPOLLERR | EPOLLHUP;
}

void tv_stream_set_interest(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    uint32_t events = events_of(c);
    if (events != c->events && !c->closed && c->watched &&
        tv_engine_rewatch(qp->engine, qp, events) == 0)
        c->events = events; /* only once epoll has it */
}

void tv_stream_start(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->want_read = tv_ring_count(qp->rq) != 0;
    c->ack_delay = ACK_POLL_FIRST;
    c->events = events_of(c);
    c->watched = 1;
    int err = tv_engine_watch(qp->engine, qp, c->events);
    if (err != 0) {
        c->watched = 0;
        fail_errno(qp, err, "watching the connection");
        return;
    }
    tv_stream_pump(qp);
}

void tv_stream_close(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    if (c->watched)
        tv_engine_unwatch(qp->engine, qp);
    c->watched = 0;
    c->closed = 1;
    c->ack_at = c->watch_at = c->park_at = 0;
    tv_qp_set_timer(qp);
    close(c->fd);
    c->fd = -1;
}

/* -- the requester timeout ------------------------------------------------------------ */

/* ns, 0 for ever: tcpverbs.engine.api.requester_timeout */
static uint64_t requester_timeout(const tv_params *p) {
    if (p->timeout == 0)
        return 0;
    double seconds = 4.096e-6 * (double)(1ull << (p->timeout & 31)) * (p->retry_cnt + 1.0);
    return (uint64_t)((seconds > 1.0 ? seconds : 1.0) * 1e9);
}

static void requester_busy(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->busy_since = tv_now();
    if (c->watch_at == 0) {
        uint64_t limit = requester_timeout(&qp->params);
        if (limit != 0) {
            c->watch_at = c->busy_since + limit / WATCH_TICKS;
            tv_qp_set_timer(qp);
        }
    }
}

/* ns since the peer's host last sent us anything (0 if unknown, or if its window is
 * closed and its probes are answered): see transport.py, _peer_silence. */
static uint64_t peer_silence(tv_qp *qp) {
    struct tcp_info info;
    socklen_t len = sizeof info;
    memset(&info, 0, sizeof info);
    if (getsockopt(qp->conn.fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
        return 0;
    uint32_t ms = info.tcpi_last_data_recv < info.tcpi_last_ack_recv
                      ? info.tcpi_last_data_recv
                      : info.tcpi_last_ack_recv;
    int unsent = 0;
    if (ms != 0 && info.tcpi_unacked == 0 && info.tcpi_probes < WINDOW_PROBES_UNANSWERED &&
        ioctl_int(qp->conn.fd, SIOCOUTQ, &unsent) == 0 && unsent > 0)
        return 0; /* a closed window: a run of unanswered probes says more than time */
    return (uint64_t)ms * 1000000u;
}

static void on_watchdog(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    c->watch_at = 0;
    uint64_t limit = requester_timeout(&qp->params);
    if (c->wire_count == 0 || limit == 0)
        return; /* the next outstanding work arms it again */
    uint64_t silent = peer_silence(qp);
    if (now - c->busy_since < silent)
        silent = now - c->busy_since;
    if (silent < limit) {
        uint64_t delay = limit / WATCH_TICKS < limit - silent ? limit / WATCH_TICKS
                                                               : limit - silent;
        c->watch_at = now + (delay > 10000000u ? delay : 10000000u);
        return;
    }
    char msg[TV_MSG_LEN];
    snprintf(msg, sizeof msg,
             "nothing arrived from the peer for %.2f s while work was outstanding "
             "(timeout %u, retry_cnt %u: %.2f s)",
             (double)silent / 1e9, qp->params.timeout, qp->params.retry_cnt,
             (double)limit / 1e9);
    tv_qp_fail(qp, TV_ERR_BROKEN, ETIMEDOUT, msg, TV_WC_RETRY_EXC_ERR, NULL);
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
    if (qp->conn.fd >= 0 && ioctl_int(qp->conn.fd, SIOCOUTQ, &outq) == 0)
        complete_acked(qp, outq);
}

static void check_acked(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    int outq;
    int err = ioctl_int(c->fd, SIOCOUTQ, &outq);
    qp->stats[TV_QP_ACK_CHECKS]++;
    c->looked = tv_now();
    if (err != 0) {
        fail_errno(qp, err, "reading the send queue");
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
        ssize_t sent = 0;
        if (n != 0) {
            struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
            sent = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (sent < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    c->want_write = 1;
                    tv_stream_set_interest(qp);
                    return;
                }
                broken(qp, errno, "sending");
                return;
            }
            qp->stats[TV_QP_SENDMSG_CALLS]++;
            qp->stats[TV_QP_BYTES_SENT] += (uint64_t)sent;
            c->sent += (uint64_t)sent;
        }
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
        tv_stream_set_interest(qp);
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
            if (c->wire_count != 0)
                break; /* earlier WRs complete first */
            char msg[TV_MSG_LEN];
            tv_work_fault_text(w, msg, sizeof msg);
            tv_qp_complete_send(qp, w, w->fault.status);
            tv_ring_consume(qp->sq);
            tv_qp_fail(qp, TV_ERR_PLAIN, EFAULT, msg, TV_WC_WR_FLUSH_ERR, NULL);
            return;
        }
        c->queued += w->length;
        w->seq = c->queued;
        c->wire_count++;
        qp->stats[TV_QP_WRS_SENT]++;
    }
    if (idle && c->wire_count != 0)
        requester_busy(qp);
    if (c->tx_index < c->wire_count)
        flush(qp);
}

/* -- receive -------------------------------------------------------------------------- */

static void peer_closed(tv_qp *qp);

/* One recvmsg into iov[0..n): the bytes, or 0 (would block; EOF and errors are handled
 * already). */
static uint64_t recv_iov(tv_qp *qp, struct iovec *iov, int n_iov) {
    tv_conn *c = &qp->conn;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n_iov};
    ssize_t n;
    do
        n = recvmsg(c->fd, &msg, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            qp->stats[TV_QP_RECV_EMPTY]++;
        else
            broken(qp, errno, "receiving");
        return 0;
    }
    qp->stats[TV_QP_RECV_CALLS]++;
    if (n == 0) {
        if (c->pending_error != 0) /* the data before a reset has all landed */
            broken(qp, c->pending_error, "connection failed");
        else
            peer_closed(qp);
        return 0;
    }
    qp->stats[TV_QP_BYTES_RECEIVED] += (uint64_t)n;
    return (uint64_t)n;
}

static int readable_bytes(tv_qp *qp) {
    int n = 0;
    return ioctl_int(qp->conn.fd, FIONREAD, &n) == 0 ? n : 0;
}

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
            char msg[TV_MSG_LEN];
            tv_work_fault_text(w, msg, sizeof msg);
            tv_qp_complete_recv(qp, w, w->fault.status, 0);
            tv_ring_consume(qp->rq);
            tv_qp_fail(qp, TV_ERR_PLAIN, EFAULT, msg, TV_WC_WR_FLUSH_ERR, NULL);
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
        uint64_t got = recv_iov(qp, iov, n_iov);
        if (got == 0)
            break; /* would block, or the QP failed or the stream ended */
        for (uint64_t left = got; left != 0;) {
            x = tv_ring_peek(qp->rq, 0);
            uint64_t took = left < x->length ? left : x->length;
            qp->stats[TV_QP_WRS_RECEIVED]++;
            tv_qp_complete_recv(qp, x, TV_WC_SUCCESS, (uint32_t)took);
            tv_ring_consume(qp->rq);
            left -= took;
        }
        if (got < room) {
            c->recv_batch = 1;
            break; /* a short read drained the socket: asking again would say EAGAIN */
        }
        c->recv_batch = most * 2 < RECV_BATCH ? most * 2 : RECV_BATCH;
    }
    if (c->closed || c->ended)
        return;
    if (c->pending_error != 0 && readable_bytes(qp) == 0) {
        broken(qp, c->pending_error, "connection failed"); /* all of it landed */
        return;
    }
    int want = tv_ring_count(qp->rq) != 0;
    if (want != c->want_read) {
        c->want_read = want;
        tv_stream_set_interest(qp);
    }
}

static void peer_closed(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->ended = 1;
    c->want_read = 0;
    tv_stream_set_interest(qp);
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

static int app_spinning(tv_qp *qp, uint64_t now) {
    uint64_t polled = atomic_load(&qp->app_polled);
    return polled != 0 && now - polled < APP_POLL_GRACE &&
           !__atomic_load_n(&qp->scq->armed, __ATOMIC_RELAXED) &&
           !__atomic_load_n(&qp->rcq->armed, __ATOMIC_RELAXED);
}

/* A failed socket: deliver what the kernel holds, then fail -- or hold the stream for
 * receives posted later when that data waits and nothing of ours does. */
static void socket_failed(tv_qp *qp, int err) {
    tv_conn *c = &qp->conn;
    c->pending_error = err;
    tv_stream_receive(qp);
    if (c->closed)
        return;
    if (c->wire_count == 0 && tv_ring_count(qp->sq) == 0 && readable_bytes(qp) > 0) {
        tv_engine_unwatch(qp->engine, qp); /* its error would be reported for ever */
        c->watched = 0;
        return;
    }
    broken(qp, err, "connection failed");
}

void tv_stream_on_events(tv_qp *qp, uint32_t events) {
    tv_conn *c = &qp->conn;
    if (events & EPOLLERR) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            socket_failed(qp, err);
            return;
        }
    }
    if ((events & EPOLLOUT) && !c->closed)
        flush(qp);
    if ((events & (EPOLLIN | EPOLLHUP)) && !c->closed) {
        uint64_t now = tv_now();
        if (app_spinning(qp, now) && !c->reads_parked) {
            /* the application polls: it receives by itself, and a wake-up of this
             * thread per message would only compete with it (see transport.py) */
            c->reads_parked = 1;
            c->park_wait = APP_POLL_GRACE;
            c->park_at = now + c->park_wait;
            tv_qp_set_timer(qp);
            tv_stream_set_interest(qp);
        } else if (!c->reads_parked) {
            tv_stream_receive(qp);
        }
    }
}

void tv_stream_on_timer(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    if (c->ack_at != 0 && c->ack_at <= now) {
        c->ack_at = 0;
        if (c->wire_count != 0)
            check_acked(qp);
    }
    if (!c->closed && c->watch_at != 0 && c->watch_at <= now)
        on_watchdog(qp, now);
    if (!c->closed && c->park_at != 0 && c->park_at <= now) {
        c->park_at = 0;
        if (c->reads_parked && app_spinning(qp, now)) {
            c->park_wait = c->park_wait * 2 < PARK_CHECK_MAX ? c->park_wait * 2 : PARK_CHECK_MAX;
            c->park_at = now + c->park_wait;
        } else if (c->reads_parked) {
            c->reads_parked = 0;
            tv_stream_set_interest(qp);
            tv_stream_receive(qp); /* whatever arrived meanwhile */
        }
    }
    if (!c->closed)
        tv_qp_set_timer(qp);
}
