/* MSG_ZEROCOPY for the large payload segments of rc requests: numbering the zerocopy
 * calls, reading the kernel's notifications, and knowing which calls it let go of.
 *
 * Ownership and locking: one tv_zc per rc connection (inside its tv_rcconn), used under
 * the QP's lock only.  Nothing here allocates.
 *
 * The kernel numbers a socket's zerocopy sendmsg calls 0, 1, 2, ... (32 bits) and reports
 * released ranges [lo, hi] on the socket's error queue, in any order.  `issued` and `done`
 * count calls in 64 bits: the calls in [done, issued) are outstanding, at most
 * TV_ZC_WINDOW of them (a segment gets copied instead while the window is full), and a
 * bitmap of that many bits remembers those released out of order.  A range naming a call
 * never issued, or one released already, is ignored: the error queue cannot make the
 * state grow or go wrong (fuzz/zerocopy_fuzz.c holds it to a model).
 */
#ifndef TCPVERBS_NATIVE_ZEROCOPY_H
#define TCPVERBS_NATIVE_ZEROCOPY_H

#include <stdint.h>

enum { TV_ZC_WINDOW = 256 };

typedef struct tv_zc {
    uint64_t threshold; /* payload segments at least this big go zerocopy; 0: never */
    uint64_t issued;    /* zerocopy calls made: the next call's number */
    uint64_t done;      /* every call numbered below this is released */
    uint64_t early[TV_ZC_WINDOW / 64]; /* bit n % TV_ZC_WINDOW: call n >= done released */
    uint64_t released, copied;         /* calls reported, and reported copied after all */
    int disabled;       /* ENOBUFS (the pinned-page budget ran out): copy from now on */
} tv_zc;

/* Turn SO_ZEROCOPY on for `fd` when `threshold` > 0; off (threshold 0) if the kernel
 * refuses.  Never fails the connection: zerocopy is an optimisation. */
void tv_zc_enable(tv_zc *z, int fd, uint64_t threshold);
/* Whether a segment of `len` bytes goes out in a zerocopy call now. */
int tv_zc_wanted(const tv_zc *z, uint64_t len);
/* A zerocopy call went out: returns its mark (its number + 1): a WR whose bytes it carried
 * may complete once `done` >= the mark. */
uint64_t tv_zc_sent(tv_zc *z);
/* The kernel released calls lo..hi (its 32-bit numbers); `copied`: it copied after all. */
void tv_zc_release(tv_zc *z, uint32_t lo, uint32_t hi, int copied);
/* Read every notification waiting on `fd`'s error queue: how many, or -errno. */
int tv_zc_reap(tv_zc *z, int fd);
static inline int tv_zc_outstanding(const tv_zc *z) { return z->done < z->issued; }

#endif
