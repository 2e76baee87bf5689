/* UD QPs in C: one UDP datagram per message.  The twin of tcpverbs/engine/py/ud.py --
 * read its docstring for the semantics, which are the same:
 *
 *  - The verbs layer binds the QP's UDP socket (its port is the QP number's upper 16
 *    bits) and hands the engine a duplicate at each INIT -> RTR; what arrived before
 *    is dropped (a bounded number).
 *  - A send is one sendmsg to its AH's address and remote QP's port (the 24-byte header
 *    from ud.c, then the WR's memory, no copy), and completes when the kernel took it.
 *    A full socket buffer leaves it queued for EPOLLOUT; a local error completes it with
 *    IBV_WC_GENERAL_ERR and the errno in vendor_err; a fault found at post time (too
 *    long, no UD QP number, memory) completes it with that status.  The QP goes on.
 *  - Each datagram is read whole into the connection's scratch buffer (header and MTU,
 *    allocated once at start: never sized by a peer), checked, and only then copied
 *    behind the 40-byte GRH into the oldest receive.  Malformed, too long, another QP's,
 *    the wrong Q_Key, or no receive posted: dropped and counted, memory untouched.  A
 *    receive too small for GRH and payload completes with IBV_WC_LOC_LEN_ERR.
 *  - While the application spins on poll, the engine thread parks its reads, as for the
 *    other wire modes (conn.c).
 *
 * Every function runs with the QP's lock held; the caller (qp.c) holds it.  The scratch
 * buffer belongs to the connection: allocated by tv_ud_start, freed by tv_ud_close.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frames.h"
#include "ud.h"

enum {
    DATAGRAMS_PER_CALL = 64, /* a flood cannot keep one call reading for ever */
    DROP_BEFORE_RTR_MAX = 1024,
    MAX_IOV = TV_MAX_SGE + 1,
    WC_GRH = 1,              /* IBV_WC_GRH */
    WC_WITH_IMM = 2,         /* IBV_WC_WITH_IMM */
};

static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* What arrived before RTR is not the QP's to receive. */
static void drop_waiting(tv_qp *qp) {
    uint8_t byte;
    for (int i = 0; i < DROP_BEFORE_RTR_MAX; i++) {
        if (recv(qp->conn.fd, &byte, 1, MSG_DONTWAIT | MSG_TRUNC) < 0)
            return;
        qp->stats[TV_QP_UD_DROPPED]++;
    }
}

int tv_ud_start(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    c->ud_scratch = malloc(TV_UD_HEADER + (size_t)qp->mtu);
    if (c->ud_scratch == NULL) {
        tv_conn_fail_errno(qp, ENOMEM, "a UD QP's receive buffer");
        return -1;
    }
    int on = 1; /* the address each datagram came to: its GRH's destination */
    int family = AF_INET6;
    socklen_t len = sizeof family;
    if (getsockopt(c->fd, SOL_SOCKET, SO_DOMAIN, &family, &len) != 0 ||
        (family == AF_INET6
             ? setsockopt(c->fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on)
             : setsockopt(c->fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on)) != 0) {
        tv_conn_fail_errno(qp, errno, "setting up a UD QP's socket");
        return -1;
    }
    c->ud_family = family; /* where each send's address is made for */
    drop_waiting(qp);
    c->want_read = 1;
    if (tv_conn_watch(qp) != 0)
        return -1;
    tv_ud_pump(qp);
    return 0;
}

void tv_ud_close(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    /* no shutdown for a sleeper, unlike a connection's close: the socket is shared with
     * the verbs layer's copy, which keeps the port for after a RESET */
    tv_conn_unwatch(qp);
    c->closed = 1;
    c->park_at = 0;
    tv_qp_set_timer(qp);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->ud_scratch);
    c->ud_scratch = NULL;
}

/* -- sending -------------------------------------------------------------------------- */

/* Where a datagram for (gid, port) goes, for the socket's family; 0, or -1 when an IPv6
 * destination meets an IPv4-only socket. */
static int address_of(const tv_qp *qp, const uint8_t gid[16], uint16_t port,
                      struct sockaddr_storage *to, socklen_t *len) {
    memset(to, 0, sizeof *to);
    if (qp->conn.ud_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)to;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        memcpy(&a->sin6_addr, gid, 16);
        *len = sizeof *a;
        return 0;
    }
    if (memcmp(gid, V4_MAPPED, sizeof V4_MAPPED) != 0)
        return -1;
    struct sockaddr_in *a = (struct sockaddr_in *)to;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    memcpy(&a->sin_addr, gid + 12, 4);
    *len = sizeof *a;
    return 0;
}

/* Send the head of the send queue: 1 done (sent or completed with an error), 0 full. */
static int send_one(tv_qp *qp, tv_work *w) {
    if (w->fault.status != 0) {
        tv_qp_complete_send(qp, w, w->fault.status);
        return 1;
    }
    int imm = w->opcode == TV_WR_SEND_WITH_IMM;
    tv_ud_header h = {.opcode = imm ? TV_SEND_IMM : TV_SEND,
                      .flags = w->solicited ? TV_FLAG_SOLICITED : 0,
                      .dest_qpn = w->ud_qpn, .src_qpn = qp->qp_num, .qkey = w->ud_qkey,
                      .imm = imm ? w->imm : 0};
    uint8_t header[TV_UD_HEADER];
    struct sockaddr_storage to;
    socklen_t to_len;
    int err = tv_ud_encode(&h, header) != 0                                        ? EINVAL
              : address_of(qp, w->ud_gid, (uint16_t)(w->ud_qpn >> 8), &to, &to_len) ? EAFNOSUPPORT
                                                                                   : 0;
    ssize_t sent = -1;
    if (err == 0) {
        struct iovec iov[MAX_IOV];
        int n = 0;
        iov[n++] = (struct iovec){header, sizeof header};
        for (uint32_t i = 0; i < w->nseg && n < MAX_IOV; i++)
            iov[n++] = (struct iovec){w->seg[i].base, w->seg[i].length};
        struct msghdr msg = {.msg_name = &to, .msg_namelen = to_len, .msg_iov = iov,
                             .msg_iovlen = (size_t)n};
        do
            sent = sendmsg(qp->conn.fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        err = sent < 0 ? errno : 0;
    }
    if (err != 0) {
        qp->stats[TV_QP_UD_SEND_ERRORS]++;
        tv_qp_complete_send_vendor(qp, w, TV_WC_GENERAL_ERR, (uint32_t)err);
        return 1;
    }
    qp->stats[TV_QP_SENDMSG_CALLS]++;
    qp->stats[TV_QP_WRS_SENT]++;
    qp->stats[TV_QP_BYTES_SENT] += (uint64_t)sent;
    tv_qp_complete_send(qp, w, TV_WC_SUCCESS);
    return 1;
}

void tv_ud_pump(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    if (c->closed || c->want_write || atomic_load(&qp->state) != TV_QPS_RTS)
        return;
    tv_work *w;
    while (!c->closed && (w = tv_ring_peek(qp->sq, 0)) != NULL) {
        if (!send_one(qp, w)) {
            c->want_write = 1; /* the socket's buffer is full: epoll says when it is not */
            tv_conn_set_interest(qp);
            return;
        }
        tv_ring_consume(qp->sq);
    }
}

/* -- receiving ------------------------------------------------------------------------ */

/* The address a datagram was sent to, from its IPV6_PKTINFO / IP_PKTINFO. */
static void destination_of(struct msghdr *msg, uint8_t out[16]) {
    memset(out, 0, 16);
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm != NULL; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO &&
            cm->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo info;
            memcpy(&info, CMSG_DATA(cm), sizeof info);
            memcpy(out, &info.ipi6_addr, 16);
            return;
        }
        if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO &&
            cm->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo info;
            memcpy(&info, CMSG_DATA(cm), sizeof info);
            memcpy(out, V4_MAPPED, sizeof V4_MAPPED);
            memcpy(out + 12, &info.ipi_addr, 4);
            return;
        }
    }
}

static void source_of(const struct sockaddr_storage *from, uint8_t out[16]) {
    memset(out, 0, 16);
    if (from->ss_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)from)->sin6_addr, 16);
    } else if (from->ss_family == AF_INET) {
        memcpy(out, V4_MAPPED, sizeof V4_MAPPED);
        memcpy(out + 12, &((const struct sockaddr_in *)from)->sin_addr, 4);
    }
}

/* Copy `len` bytes of `data` into w's segments from byte `at` on (they have room). */
static void place(tv_work *w, uint64_t at, const uint8_t *data, uint64_t len) {
    for (uint32_t i = 0; i < w->nseg && len != 0; i++) {
        uint64_t seg_len = w->seg[i].length;
        if (at >= seg_len) {
            at -= seg_len;
            continue;
        }
        uint64_t take = seg_len - at < len ? seg_len - at : len;
        memcpy((uint8_t *)w->seg[i].base + at, data, (size_t)take);
        data += take;
        len -= take;
        at = 0;
    }
}

/* One datagram of n bytes is in the scratch buffer: deliver it, or drop it. */
static void deliver(tv_qp *qp, size_t n, struct msghdr *msg,
                    const struct sockaddr_storage *from) {
    tv_ud_header h;
    char err[TV_UD_ERROR_LEN];
    const uint8_t *data = qp->conn.ud_scratch;
    if (tv_ud_decode(data, n, &h, err) != 0 || h.dest_qpn != qp->qp_num) {
        qp->stats[TV_QP_UD_DROPPED]++;
        return;
    }
    if (h.qkey != qp->params.qkey) {
        qp->stats[TV_QP_UD_DROPPED]++;
        qp->stats[TV_QP_QKEY_VIOLATIONS]++;
        return;
    }
    tv_work *w = tv_ring_peek(qp->rq, 0);
    if (w == NULL) {
        qp->stats[TV_QP_UD_DROPPED]++;
        return;
    }
    uint64_t payload = n - TV_UD_HEADER;
    uint32_t status = w->fault.status != 0               ? w->fault.status
                      : TV_GRH + payload > w->length ? (uint32_t)TV_WC_LOC_LEN_ERR
                                                     : (uint32_t)TV_WC_SUCCESS;
    if (status != TV_WC_SUCCESS) {
        tv_qp_complete_recv(qp, w, status, 0);
        tv_ring_consume(qp->rq);
        return;
    }
    uint8_t src[16], dst[16], grh[TV_GRH];
    source_of(from, src);
    destination_of(msg, dst);
    tv_ud_grh(src, dst, (uint32_t)n, grh);
    place(w, 0, grh, TV_GRH);
    place(w, TV_GRH, data + TV_UD_HEADER, payload);
    qp->stats[TV_QP_WRS_RECEIVED]++;
    int imm = h.opcode == TV_SEND_IMM;
    tv_qp_complete_recv_full(qp, w, TV_WC_SUCCESS, (uint32_t)(TV_GRH + payload), TV_WC_RECV,
                             imm ? h.imm : 0, WC_GRH | (imm ? WC_WITH_IMM : 0),
                             (h.flags & TV_FLAG_SOLICITED) != 0, h.src_qpn);
    tv_ring_consume(qp->rq);
}

void tv_ud_receive(tv_qp *qp) {
    tv_conn *c = &qp->conn;
    for (int i = 0; i < DATAGRAMS_PER_CALL && !c->closed; i++) {
        struct sockaddr_storage from;
        union {
            struct cmsghdr align;
            uint8_t buf[CMSG_SPACE(sizeof(struct in6_pktinfo))];
        } control;
        struct iovec iov = {c->ud_scratch, TV_UD_HEADER + (size_t)qp->mtu};
        struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                             .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t n;
        do
            n = recvmsg(c->fd, &msg, MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                qp->stats[TV_QP_RECV_EMPTY]++;
                return;
            }
            continue; /* an ICMP error for an earlier datagram: not this QP's end */
        }
        qp->stats[TV_QP_RECV_CALLS]++;
        qp->stats[TV_QP_BYTES_RECEIVED] += (uint64_t)n;
        if (msg.msg_flags & MSG_TRUNC) { /* longer than the MTU allows */
            qp->stats[TV_QP_UD_DROPPED]++;
            continue;
        }
        deliver(qp, (size_t)n, &msg, &from);
    }
}

void tv_ud_progress(tv_qp *qp) {
    if (tv_ring_count(qp->sq) != 0)
        tv_ud_pump(qp);
    tv_ud_receive(qp);
}

/* -- the engine thread's side ------------------------------------------------------------ */

void tv_ud_on_events(tv_qp *qp, uint32_t events) {
    tv_conn *c = &qp->conn;
    if (events & EPOLLERR)
        (void)tv_conn_socket_error(qp); /* an ICMP error for an earlier datagram: read, gone */
    if ((events & EPOLLOUT) && !c->closed) {
        c->want_write = 0;
        tv_conn_set_interest(qp);
        tv_ud_pump(qp);
    }
    if ((events & EPOLLIN) && !c->closed && !tv_conn_park_reads(qp, tv_now()))
        tv_ud_receive(qp);
}

void tv_ud_on_timer(tv_qp *qp, uint64_t now) {
    tv_conn *c = &qp->conn;
    if (!c->closed && c->park_at != 0 && c->park_at <= now && tv_conn_park_check(qp, now))
        tv_ud_receive(qp); /* whatever arrived meanwhile */
    if (!c->closed)
        tv_qp_set_timer(qp);
}
