/* MSG_ZEROCOPY bookkeeping of one rc connection: see zerocopy.h (ownership: the QP lock). */
#define _GNU_SOURCE
#include "zerocopy.h"

#include <errno.h>
#include <time.h> /* before errqueue.h, which uses struct timespec */
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif

void tv_zc_enable(tv_zc *z, int fd, uint64_t threshold) {
    memset(z, 0, sizeof *z);
    int one = 1;
    if (threshold != 0 && setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one) == 0)
        z->threshold = threshold;
}

int tv_zc_wanted(const tv_zc *z, uint64_t len) {
    return z->threshold != 0 && !z->disabled && len >= z->threshold &&
           z->issued - z->done < TV_ZC_WINDOW;
}

uint64_t tv_zc_sent(tv_zc *z) { return ++z->issued; }

static int bit(const tv_zc *z, uint64_t n) {
    uint64_t i = n % TV_ZC_WINDOW;
    return (int)((z->early[i / 64] >> (i % 64)) & 1u);
}

static void set_bit(tv_zc *z, uint64_t n, int on) {
    uint64_t i = n % TV_ZC_WINDOW, mask = (uint64_t)1 << (i % 64);
    z->early[i / 64] = on ? z->early[i / 64] | mask : z->early[i / 64] & ~mask;
}

void tv_zc_release(tv_zc *z, uint32_t lo, uint32_t hi, int copied) {
    uint64_t span = (uint64_t)(uint32_t)(hi - lo) + 1;
    uint64_t base = z->done + (uint32_t)(lo - (uint32_t)z->done);
    if (base + span > z->issued) /* not calls of ours (or released already): ignore */
        return;
    for (uint64_t n = base; n < base + span; n++)
        if (bit(z, n)) /* reported twice: the first report counted */
            return;
    z->released += span;
    if (copied)
        z->copied += span;
    for (uint64_t n = base; n < base + span; n++)
        set_bit(z, n, 1);
    while (z->done < z->issued && bit(z, z->done)) {
        set_bit(z, z->done, 0);
        z->done++;
    }
}

int tv_zc_reap(tv_zc *z, int fd) {
    int count = 0;
    for (;;) {
        union {
            char buf[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6))];
            struct cmsghdr align;
        } control;
        struct msghdr msg = {.msg_control = control.buf, .msg_controllen = sizeof control.buf};
        if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? count : -errno;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
            int recverr = (cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
                          (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR);
            if (!recverr || cm->cmsg_len < CMSG_LEN(sizeof(struct sock_extended_err)))
                continue;
            struct sock_extended_err err;
            memcpy(&err, CMSG_DATA(cm), sizeof err); /* CMSG_DATA need not be aligned */
            if (err.ee_origin != SO_EE_ORIGIN_ZEROCOPY)
                continue;
            count++;
            tv_zc_release(z, err.ee_info, err.ee_data,
                          (err.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0);
        }
    }
}
