/* What both wire modes share about a QP's connection: epoll interest, failures, the
 * requester timeout, reads parked while the application polls, and one receive call.
 * The C twin of tcpverbs/engine/py/transport.py (its docstrings say why each is so).
 *
 * Every function runs with the QP's lock held.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
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
    WATCH_TICKS = 4,                 /* looks per requester timeout */
    WINDOW_PROBES_UNANSWERED = 3,    /* a closed window whose probes go unanswered */
    APP_POLL_GRACE = 2000000,        /* ns without a poll before the engine thread reads */
    PARK_CHECK_MAX = 32000000,
};

void tv_conn_fail_errno(tv_qp *qp, int err, const char *doing) {
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
    const char *where = qp->conn.rc != NULL ? tv_rcconn_where(qp) : ""; /* in the protocol */
    snprintf(msg, sizeof msg, "%s%s%s: %s", doing, *where ? " " : "", where, strerror(err));
    tv_failure f = tv_failure_of(kind, err, msg);
    f.first_status = err == ETIMEDOUT ? TV_WC_RETRY_EXC_ERR : TV_WC_WR_FLUSH_ERR;
    f.goodbye = 0; /* the socket failed: nobody would read it */
    f.setup = !tv_conn_established(qp);
    tv_qp_fail_with(qp, &f);
}

void tv_conn_broken(tv_qp *qp, int err, const char *doing) {
    if (!qp->conn.closed)
        tv_conn_fail_errno(qp, err, doing);
}

int tv_conn_ioctl(int fd, unsigned long request, int *value) {
    return ioctl(fd, request, value) == 0 ? 0 : errno;
}

static uint32_t events_of(const tv_conn *c) {
    return (c->want_read && !c->reads_parked ? EPOLLIN : 0u) |
           (c->want_write ? EPOLLOUT : 0u) | EPOLLERR | EPOLLHUP;
}

void tv_conn_set_interest(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    uint32_t events = events_of(c);
    if (events != c->events && !c->closed && c->watched &&
        tv_engine_rewatch(qp->engine, qp, events) == 0)
        c->events = events; /* only once epoll has it */
}

int tv_conn_watch(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->events = events_of(c);
    c->watched = 1;
    int err = tv_engine_watch(qp->engine, qp, c->events);
    if (err != 0) {
        c->watched = 0;
        tv_conn_fail_errno(qp, err, "watching the connection");
    }
    return err;
}

void tv_conn_unwatch(tv_qp *qp) {
    if (qp->conn.watched)
        tv_engine_unwatch(qp->engine, qp);
    qp->conn.watched = 0;
}

void tv_conn_close(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    tv_conn_unwatch(qp);
    c->closed = 1;
    c->ack_at = c->watch_at = c->park_at = c->rc_at = 0;
    tv_qp_set_timer(qp);
    if (c->fd >= 0) {
        /* a thread asleep in poll() on the socket (wait.c) keeps it open past close():
         * shut it down, so the peer sees the end now and that poll() returns (its only
         * failure, ENOTCONN, says the peer ended it already) */
        if (qp->app_waiting)
            (void)shutdown(c->fd, SHUT_RDWR);
        close(c->fd);
    }
    c->fd = -1;
}

int tv_conn_established(const tv_qp *qp) {
    return qp->wire != TV_WIRE_RC || (qp->conn.rc != NULL && tv_rcconn_established(qp));
}

/* -- the requester timeout ------------------------------------------------------------ */

uint64_t tv_requester_timeout(const tv_params *p) {
    if (p->timeout == 0)
        return 0; /* for ever, as in verbs */
    double seconds = 4.096e-6 * (double)(1ull << (p->timeout & 31)) * (p->retry_cnt + 1.0);
    return (uint64_t)((seconds > 1.0 ? seconds : 1.0) * 1e9);
}

void tv_conn_requester_busy(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->busy_since = tv_now();
    if (c->watch_at == 0) {
        uint64_t limit = tv_requester_timeout(&qp->params);
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
        tv_conn_ioctl(qp->conn.fd, SIOCOUTQ, &unsent) == 0 && unsent > 0)
        return 0; /* a closed window: a run of unanswered probes says more than time */
    return (uint64_t)ms * 1000000u;
}

void tv_conn_watchdog(tv_qp *qp, uint64_t now, int awaiting_peer) {
    tv_conn *c = &qp->conn;
    c->watch_at = 0;
    uint64_t limit = tv_requester_timeout(&qp->params);
    if (!awaiting_peer || limit == 0)
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
    tv_failure f = tv_failure_of(TV_ERR_BROKEN, ETIMEDOUT, msg);
    f.first_status = TV_WC_RETRY_EXC_ERR;
    tv_qp_fail_with(qp, &f);
}

/* -- reads parked while the application polls ------------------------------------------ */

int tv_conn_waited_lately(const tv_qp *qp, uint64_t now) {
    return qp->waited_at != 0 && now - qp->waited_at < APP_POLL_GRACE;
}

static int app_spinning(tv_qp *qp, uint64_t now) {
    if (qp->app_waiting || tv_conn_waited_lately(qp, now))
        return 1; /* a thread sleeps on the socket and reads it (wait.c), or just did */
    uint64_t polled = atomic_load(&qp->app_polled);
    return polled != 0 && now - polled < APP_POLL_GRACE &&
           !__atomic_load_n(&qp->scq->armed, __ATOMIC_RELAXED) &&
           !__atomic_load_n(&qp->rcq->armed, __ATOMIC_RELAXED);
}

int tv_conn_park_reads(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    if (c->reads_parked)
        return 1;
    if (!app_spinning(qp, now))
        return 0;
    /* the application polls: it receives by itself, and a wake-up of the engine thread
     * per message would only compete with it (see transport.py, _park_reads) */
    c->reads_parked = 1;
    c->park_wait = APP_POLL_GRACE;
    c->park_at = now + c->park_wait;
    tv_qp_set_timer(qp);
    tv_conn_set_interest(qp);
    return 1;
}

int tv_conn_park_check(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    c->park_at = 0;
    if (!c->reads_parked)
        return 0;
    if (app_spinning(qp, now)) {
        c->park_wait = c->park_wait * 2 < PARK_CHECK_MAX ? c->park_wait * 2 : PARK_CHECK_MAX;
        c->park_at = now + c->park_wait;
        return 0;
    }
    c->reads_parked = 0;
    tv_conn_set_interest(qp);
    return 1; /* the caller reads what arrived meanwhile */
}

void tv_conn_park_for_waiter(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    if (c->reads_parked)
        return; /* parked for a spinning poll: its timer unparks it once that stops */
    c->reads_parked = 1; /* no timer while it sleeps: the last to leave starts it */
    c->park_at = 0;
    tv_conn_set_interest(qp);
}

void tv_conn_waiter_left(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    qp->waited_at = now;
    /* the park timer gives the reading back to the engine thread once no thread has slept
     * on the socket for the grace period (it checks again while one does) */
    if (c->reads_parked && c->park_at == 0) {
        c->park_wait = APP_POLL_GRACE;
        c->park_at = now + c->park_wait;
        tv_qp_set_timer(qp);
    }
}

int tv_conn_unpark(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    if (!c->reads_parked)
        return 0;
    c->reads_parked = 0;
    c->park_at = 0;
    tv_qp_set_timer(qp);
    tv_conn_set_interest(qp);
    return 1;
}

/* -- one send call, one receive call -------------------------------------------------------- */

int64_t tv_conn_send(tv_qp *qp, struct iovec *iov, int n_iov, int flags) {
    tv_conn *c = &qp->conn;
    if (n_iov == 0)
        return 0;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n_iov};
    ssize_t sent;
    do /* one piece: send(), which copies no msghdr and no iovec in from user space */
        sent = n_iov == 1 && flags == 0
                   ? send(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT)
                   : sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT | flags);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->want_write = 1; /* epoll says when there is room */
            tv_conn_set_interest(qp);
            return TV_SEND_FULL;
        }
        if (errno == ENOBUFS && (flags & MSG_ZEROCOPY))
            return TV_SEND_NOBUFS;
        tv_conn_broken(qp, errno, "sending");
        return TV_SEND_FAILED;
    }
    qp->stats[TV_QP_SENDMSG_CALLS]++;
    qp->stats[TV_QP_BYTES_SENT] += (uint64_t)sent;
    return sent;
}

/* -- one receive call ---------------------------------------------------------------------- */

int64_t tv_conn_recv(tv_qp *qp, struct iovec *iov, int n_iov) {
    tv_conn *c = &qp->conn;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n_iov};
    ssize_t n;
    do /* one piece: recv(), as send() above */
        n = n_iov == 1 ? recv(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT)
                       : recvmsg(c->fd, &msg, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            qp->stats[TV_QP_RECV_EMPTY]++;
            return 0;
        }
        tv_conn_broken(qp, errno, "receiving");
        return TV_RECV_FAILED;
    }
    qp->stats[TV_QP_RECV_CALLS]++;
    if (n == 0) /* the peer's FIN -- or, with pending_error, the end of what came before
                 * a reset: the caller says which */
        return TV_RECV_EOF;
    qp->stats[TV_QP_BYTES_RECEIVED] += (uint64_t)n;
    return n;
}

int tv_conn_readable(tv_qp *qp) {
    int n = 0;
    return tv_conn_ioctl(qp->conn.fd, FIONREAD, &n) == 0 ? n : 0;
}

int tv_conn_socket_error(tv_qp *qp) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(qp->conn.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    return err;
}
