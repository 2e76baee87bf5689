/* The native engine's context: the memory table, the engine thread (epoll and timers),
 * the watch list and the event queue.  Ownership, threads and lock order: engine.h.
 *
 * The engine thread sleeps in epoll_pwait2 (epoll_wait where it is missing) until a watched socket is ready, the nearest
 * timer of a watched QP falls due, or the doorbell (an eventfd) rings.  The doorbell is
 * rung only when a QP sets a timer earlier than the thread's sleep (`sleep_until`), at
 * close, or (SQ polling) when a send is posted while the thread sleeps: the thread is
 * otherwise never woken by the application.  Timers are per QP (`deadline`, the earliest
 * of its connection's); the thread finds the nearest by a scan of the watch list, which
 * holds the connected QPs only.
 *
 * SQ polling (`sq_poll_ns` != 0, a context option): posters do not write to the socket
 * themselves; they flag the QP and bump `sq_kicks`, and the engine thread pushes the
 * sends.  After each push it spins on `sq_kicks` for sq_poll_ns (looking at its sockets
 * and timers every SQ_SLICE_NS) before it sleeps, so a steady poster never pays for a
 * system call; a poster rings the doorbell only when the thread sleeps.  The poster
 * stores its flag and then reads `sleep_until`; the thread stores `sleep_until` and then
 * reads `sq_kicks` (both sequentially consistent): one of them sees the other.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

const char *const tv_engine_stat_names[TV_ENG_NSTATS] = {
    "engine_wakeups", "epoll_ctl_calls", "engine_wake_writes", "engine_timers",
    "engine_sq_pushes"};

enum { BATCH = 64 };
enum { SQ_SLICE_NS = 50000 }; /* a spinning engine thread looks at sockets this often */
static const uint64_t DRAIN_NS = 5000000000ull; /* a closed connection waits for the FIN */

/* A half-closed socket read until the peer's FIN (engine thread; the list under the
 * engine lock).  Memory is bounded: one fixed buffer, whatever the peer sends. */
typedef struct tv_drainer {
    struct tv_drainer *next;
    int fd;
    uint64_t deadline;
} tv_drainer;
#define DRAINER_TAG 1u /* epoll data of a drainer: its address with the low bit set */

void tv_cond_init_monotonic(pthread_cond_t *cond) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* its timed waits use tv_now's clock */
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

uint64_t tv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail with a valid clock and pointer */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int tv_qps_push(tv_qp ***arr, uint32_t *n, uint32_t *cap, tv_qp *qp) {
    if (*n == *cap) {
        uint32_t grown = *cap ? *cap * 2 : 8;
        tv_qp **fresh = realloc(*arr, grown * sizeof *fresh);
        if (fresh == NULL)
            return ENOMEM;
        *arr = fresh;
        *cap = grown;
    }
    (*arr)[(*n)++] = qp;
    return 0;
}

int tv_qps_drop(tv_qp **arr, uint32_t *n, const tv_qp *qp) {
    for (uint32_t i = 0; i < *n; i++)
        if (arr[i] == qp) {
            arr[i] = arr[--*n];
            return 1;
        }
    return 0;
}

static void ring_doorbell(tv_engine *e) {
    uint64_t one = 1;
    if (write(e->doorbell, &one, sizeof one) == sizeof one)
        atomic_fetch_add(&e->stats[TV_ENG_WAKE_WRITES], 1);
    /* EAGAIN: the counter is full, so the thread wakes anyway */
}

int tv_engine_init(tv_engine *e, uint64_t sq_poll_ns) {
    memset(e, 0, sizeof *e);
    e->epfd = e->doorbell = -1;
    e->sq_poll_ns = sq_poll_ns;
    int err = tv_mem_init(&e->mem);
    if (err != 0)
        return err;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0)
        goto fail;
    e->doorbell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->doorbell < 0)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->doorbell, &ev) != 0)
        goto fail;
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->events_lock, NULL);
    tv_cond_init_monotonic(&e->events_cond);
    return 0;
fail:
    err = errno;
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->doorbell >= 0)
        close(e->doorbell);
    tv_mem_destroy(&e->mem);
    return err;
}

/* Drop the references of QPs that left the watch list.  Engine thread, between batches
 * (or at close, once the thread is gone). */
static void drop_retired(tv_engine *e) {
    pthread_mutex_lock(&e->lock);
    uint32_t n = e->nretired;
    tv_qp *local[BATCH];
    if (n == 0) {
        pthread_mutex_unlock(&e->lock);
        return;
    }
    if (n > BATCH)
        n = BATCH;
    memcpy(local, e->retired + (e->nretired - n), n * sizeof *local);
    e->nretired -= n;
    int more = e->nretired != 0;
    pthread_mutex_unlock(&e->lock);
    for (uint32_t i = 0; i < n; i++)
        tv_qp_put(local[i]); /* may free the QP: outside the engine lock */
    if (more)
        drop_retired(e);
}

/* The nearest deadline of a watched QP (0: none) and, when `due` is given, references to
 * up to BATCH QPs whose deadline is <= now. */
static uint64_t scan_timers(tv_engine *e, uint64_t now, tv_qp **due, uint32_t *ndue) {
    uint64_t nearest = 0;
    if (ndue != NULL)
        *ndue = 0;
    pthread_mutex_lock(&e->lock);
    for (uint32_t i = 0; i < e->nwatch; i++) {
        tv_qp *qp = e->watch[i];
        uint64_t d = atomic_load(&qp->deadline);
        if (d == 0)
            continue;
        if (due != NULL && d <= now && *ndue < BATCH) {
            tv_qp_get(qp);
            due[(*ndue)++] = qp;
            continue;
        }
        if (nearest == 0 || d < nearest)
            nearest = d;
    }
    pthread_mutex_unlock(&e->lock);
    return nearest;
}

/* Close and forget a drainer.  Engine lock held. */
static void drainer_done(tv_engine *e, tv_drainer *d) {
    for (tv_drainer **p = &e->drainers; *p != NULL; p = &(*p)->next)
        if (*p == d) {
            *p = d->next;
            break;
        }
    epoll_ctl(e->epfd, EPOLL_CTL_DEL, d->fd, NULL);
    close(d->fd);
    free(d);
}

static void drainer_read(tv_engine *e, tv_drainer *d) {
    static uint8_t sink[65536]; /* only this thread reads into it, and never looks */
    for (;;) {
        ssize_t n = recv(d->fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        break; /* the FIN, or an error: done */
    }
    pthread_mutex_lock(&e->lock);
    drainer_done(e, d);
    pthread_mutex_unlock(&e->lock);
}

/* Drainers past their deadline are closed; the nearest deadline left (0: none). */
static uint64_t drainers_due(tv_engine *e, uint64_t now) {
    uint64_t nearest = 0;
    pthread_mutex_lock(&e->lock);
    for (tv_drainer *d = e->drainers, *next; d != NULL; d = next) {
        next = d->next;
        if (d->deadline <= now)
            drainer_done(e, d);
        else if (nearest == 0 || d->deadline < nearest)
            nearest = d->deadline;
    }
    pthread_mutex_unlock(&e->lock);
    return nearest;
}

void tv_engine_drain(tv_engine *e, int fd) {
    tv_drainer *d = malloc(sizeof *d);
    pthread_mutex_lock(&e->lock);
    int ok = d != NULL && e->thread_started && !atomic_load(&e->closing) &&
             shutdown(fd, SHUT_WR) == 0;
    if (ok) {
        *d = (tv_drainer){e->drainers, fd, tv_now() + DRAIN_NS};
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP,
                                 .data.u64 = (uint64_t)(uintptr_t)d | DRAINER_TAG};
        ok = epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) == 0;
        if (ok)
            e->drainers = d;
    }
    uint64_t deadline = ok ? d->deadline : 0; /* d is the engine thread's once listed */
    pthread_mutex_unlock(&e->lock);
    if (!ok) {
        free(d);
        close(fd);
        return;
    }
    tv_engine_timer_changed(e, deadline);
}

static inline void spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* `act` on each watched QP whose flag (the _Atomic int at offset `flag` in tv_qp) is
 * set, but for the QPs of CQ `skip`, at most BATCH of them, outside the engine lock.
 * Returns how many; *left says whether flagged ones were left (skipped, or past BATCH). */
static uint32_t serve_flagged(tv_engine *e, size_t flag, const tv_cq *skip,
                              void (*act)(tv_qp *), int *left) {
    tv_qp *local[BATCH];
    uint32_t n = 0;
    *left = 0;
    pthread_mutex_lock(&e->lock);
    for (uint32_t i = 0; i < e->nwatch; i++) {
        tv_qp *qp = e->watch[i];
        if (!atomic_load((_Atomic int *)((char *)qp + flag)))
            continue;
        if (n == BATCH || (skip != NULL && (qp->scq == skip || qp->rcq == skip))) {
            *left = 1;
            continue;
        }
        tv_qp_get(qp);
        local[n++] = qp;
    }
    pthread_mutex_unlock(&e->lock);
    for (uint32_t i = 0; i < n; i++) {
        act(local[i]);
        tv_qp_put(local[i]); /* may free the QP: outside the engine lock */
    }
    return n;
}

/* SQ polling: push the sends of every kicked QP; 1 if any were kicked. */
static int serve_kicks(tv_engine *e, uint64_t *seen) {
    uint64_t kicks = atomic_load(&e->sq_kicks);
    if (kicks == *seen)
        return 0;
    *seen = kicks;
    int left;
    uint32_t n = serve_flagged(e, offsetof(tv_qp, sq_kicked), NULL, tv_qp_push_kicked, &left);
    if (left)
        *seen = kicks - 1; /* more are flagged: look again next time */
    atomic_fetch_add(&e->stats[TV_ENG_SQ_PUSHES], n);
    return 1;
}

/* SQ polling: serve kicks until `spin_end` (pushed on by each one served) or for one
 * slice; 1 if the spin goes on (the caller looks at its sockets without sleeping). */
static int sq_spin(tv_engine *e, uint64_t *seen, uint64_t *spin_end) {
    uint64_t slice_end = tv_now() + SQ_SLICE_NS;
    while (!atomic_load(&e->closing)) {
        int served = serve_kicks(e, seen);
        uint64_t now = tv_now();
        if (served)
            *spin_end = now + e->sq_poll_ns;
        if (now >= *spin_end)
            return 0;
        if (now >= slice_end)
            return 1;
        spin_pause();
    }
    return 0;
}

/* epoll_pwait2 (nanosecond timeouts), or epoll_wait where the kernel (before 5.11) or a
 * tool like valgrind does not know it: the timeout rounded up to a millisecond. */
static int wait_events(struct epoll_event *evs, int epfd, const struct timespec *ts) {
    static _Atomic int no_pwait2;
    if (!atomic_load(&no_pwait2)) {
        int n = epoll_pwait2(epfd, evs, BATCH, ts, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        atomic_store(&no_pwait2, 1);
    }
    int ms = -1;
    if (ts != NULL) {
        uint64_t ns = (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec;
        uint64_t rounded = (ns + 999999u) / 1000000u;
        ms = rounded > INT32_MAX ? INT32_MAX : (int)rounded;
    }
    return epoll_wait(epfd, evs, BATCH, ms);
}

static void *engine_main(void *arg) {
    tv_engine *e = arg;
    struct epoll_event evs[BATCH];
    tv_qp *due[BATCH];
    uint64_t seen = 0, spin_end = 0; /* 0: kicks before the thread started count */
    while (!atomic_load(&e->closing)) {
        drop_retired(e);
        uint64_t now = tv_now();
        uint32_t ndue;
        uint64_t nearest = scan_timers(e, now, due, &ndue);
        for (uint32_t i = 0; i < ndue; i++) {
            atomic_fetch_add(&e->stats[TV_ENG_TIMERS], 1);
            tv_qp_on_timer(due[i], now);
            tv_qp_put(due[i]);
        }
        /* timers that ran may have armed new ones, due at once (a connection resuming
         * work it had to leave): they run after this turn's events, not before them */
        if (ndue != 0)
            nearest = scan_timers(e, now, NULL, NULL);
        uint64_t drain = drainers_due(e, now);
        if (drain != 0 && (nearest == 0 || drain < nearest))
            nearest = drain;
        struct timespec ts = {0, 0}, *tsp = &ts; /* spinning: a look, no sleep */
        int spinning = e->sq_poll_ns != 0 && sq_spin(e, &seen, &spin_end);
        if (!spinning) {
            /* publish the sleep before the last look, so that a timer set (or, SQ
             * polling, a send posted) after the look sees it and rings the doorbell */
            atomic_store(&e->sleep_until, nearest ? nearest : UINT64_MAX);
            if (e->sq_poll_ns != 0 && atomic_load(&e->sq_kicks) != seen) {
                atomic_store(&e->sleep_until, 0);
                continue; /* posted meanwhile: serve it before sleeping */
            }
            uint64_t again = scan_timers(e, now, NULL, NULL);
            if (again != 0 && (nearest == 0 || again < nearest))
                nearest = again;
            tsp = NULL;
            if (nearest != 0) {
                uint64_t wait = nearest > now ? nearest - now : 0;
                ts.tv_sec = (time_t)(wait / 1000000000u);
                ts.tv_nsec = (long)(wait % 1000000000u);
                tsp = &ts;
            }
        }
        int n = wait_events(evs, e->epfd, tsp);
        atomic_store(&e->sleep_until, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EBADF/EINVAL cannot happen with our own epoll fd; leave rather than spin */
        }
        if (!spinning || n > 0)
            atomic_fetch_add(&e->stats[TV_ENG_WAKEUPS], 1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 & DRAINER_TAG) {
                drainer_read(e, (tv_drainer *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)1));
                continue;
            }
            tv_qp *qp = evs[i].data.ptr;
            if (qp == NULL) { /* the doorbell */
                uint64_t v;
                if (read(e->doorbell, &v, sizeof v) < 0 && errno != EAGAIN)
                    break;
                continue;
            }
            tv_qp_on_events(qp, evs[i].events); /* valid: retired refs drop next turn */
        }
    }
    return NULL;
}

/* Start the thread on first use; 0 or an errno. Engine lock held. */
static int start_thread(tv_engine *e) {
    if (e->thread_started)
        return 0;
    int err = pthread_create(&e->thread, NULL, engine_main, e);
    if (err == 0)
        e->thread_started = 1;
    return err;
}

int tv_engine_watch(tv_engine *e, tv_qp *qp, uint32_t events) {
    pthread_mutex_lock(&e->lock);
    int err = atomic_load(&e->closing) ? EBADF : start_thread(e);
    if (err == 0)
        err = tv_qps_push(&e->watch, &e->nwatch, &e->capwatch, qp);
    if (err == 0) {
        struct epoll_event ev = {.events = events, .data.ptr = qp};
        atomic_fetch_add(&e->stats[TV_ENG_EPOLL_CTL], 1);
        if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, qp->conn.fd, &ev) != 0) {
            err = errno;
            e->nwatch--;
        } else {
            tv_qp_get(qp);
        }
    }
    pthread_mutex_unlock(&e->lock);
    return err;
}

int tv_engine_rewatch(tv_engine *e, tv_qp *qp, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = qp};
    atomic_fetch_add(&e->stats[TV_ENG_EPOLL_CTL], 1);
    return epoll_ctl(e->epfd, EPOLL_CTL_MOD, qp->conn.fd, &ev) == 0 ? 0 : errno;
}

void tv_engine_unwatch(tv_engine *e, tv_qp *qp) {
    pthread_mutex_lock(&e->lock);
    if (tv_qps_drop(e->watch, &e->nwatch, qp)) {
        atomic_fetch_add(&e->stats[TV_ENG_EPOLL_CTL], 1);
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, qp->conn.fd, NULL); /* fails only if closed */
        /* the reference goes once the engine thread is past its batch; without room
         * for it, keeping the QP alive for good is the safe failure */
        if (tv_qps_push(&e->retired, &e->nretired, &e->capretired, qp) != 0)
            tv_qp_get(qp);
    }
    pthread_mutex_unlock(&e->lock);
}

void tv_engine_kick(tv_engine *e, tv_qp *qp) {
    atomic_store(&qp->sq_kicked, 1);
    atomic_fetch_add(&e->sq_kicks, 1);
    if (atomic_load(&e->sleep_until) != 0)
        ring_doorbell(e);
}

void tv_engine_send_deferred_acks(tv_engine *e, const tv_cq *polled) {
    if (!atomic_load(&e->acks_deferred) || !atomic_exchange(&e->acks_deferred, 0))
        return;
    int left;
    serve_flagged(e, offsetof(tv_qp, ack_deferred), polled, tv_qp_send_deferred_ack, &left);
    if (left)
        atomic_store(&e->acks_deferred, 1); /* its own CQ's poll, or the next one */
}

void tv_engine_timer_changed(tv_engine *e, uint64_t deadline) {
    uint64_t sleeping = atomic_load(&e->sleep_until);
    if (sleeping != 0 && deadline != 0 && deadline < sleeping)
        ring_doorbell(e);
}

void tv_engine_event(tv_engine *e, uint32_t type, uint64_t handle, const char *reason) {
    tv_event *ev = calloc(1, sizeof *ev);
    if (ev == NULL)
        return; /* the QP's state and error still say it */
    ev->type = type;
    ev->handle = handle;
    snprintf(ev->reason, sizeof ev->reason, "%s", reason);
    pthread_mutex_lock(&e->events_lock);
    if (e->events_tail != NULL)
        e->events_tail->next = ev;
    else
        e->events_head = ev;
    e->events_tail = ev;
    pthread_cond_broadcast(&e->events_cond);
    pthread_mutex_unlock(&e->events_lock);
}

tv_event *tv_engine_next_event(tv_engine *e, int64_t timeout_ns) {
    struct timespec until;
    if (timeout_ns > 0) {
        uint64_t t = tv_now() + (uint64_t)timeout_ns;
        until.tv_sec = (time_t)(t / 1000000000u);
        until.tv_nsec = (long)(t % 1000000000u);
    }
    pthread_mutex_lock(&e->events_lock);
    while (e->events_head == NULL && !atomic_load(&e->closing) && timeout_ns != 0) {
        if (timeout_ns < 0)
            pthread_cond_wait(&e->events_cond, &e->events_lock);
        else if (pthread_cond_timedwait(&e->events_cond, &e->events_lock, &until) == ETIMEDOUT)
            break;
    }
    tv_event *ev = atomic_load(&e->closing) ? NULL : e->events_head;
    if (ev != NULL) {
        e->events_head = ev->next;
        if (e->events_head == NULL)
            e->events_tail = NULL;
    }
    pthread_mutex_unlock(&e->events_lock);
    return ev;
}

int tv_engine_add_qp(tv_engine *e, tv_qp *qp) {
    pthread_mutex_lock(&e->lock);
    int err = tv_qps_push(&e->qps, &e->nqps, &e->capqps, qp);
    pthread_mutex_unlock(&e->lock);
    return err;
}

void tv_engine_remove_qp(tv_engine *e, tv_qp *qp) {
    pthread_mutex_lock(&e->lock);
    tv_qps_drop(e->qps, &e->nqps, qp);
    for (int i = 0; i < TV_QP_NSTATS; i++)
        e->retired_qp_stats[i] += qp->stats[i];
    pthread_mutex_unlock(&e->lock);
}

/* The QPs of PD `pd`, each with a reference (tv_qp_put them), in a new array (*n of
 * them); NULL without memory for it. */
static tv_qp **qps_of(tv_engine *e, uint64_t pd, uint32_t *n) {
    pthread_mutex_lock(&e->lock);
    *n = 0;
    tv_qp **qps = malloc((e->nqps ? e->nqps : 1) * sizeof *qps);
    for (uint32_t i = 0; qps != NULL && i < e->nqps; i++)
        if (e->qps[i]->pd == pd) {
            tv_qp_get(e->qps[i]);
            qps[(*n)++] = e->qps[i];
        }
    pthread_mutex_unlock(&e->lock);
    return qps;
}

int tv_engine_add_srq(tv_engine *e, tv_srq *srq) {
    int err = 0;
    pthread_mutex_lock(&e->lock);
    if (e->nsrqs == e->capsrqs) {
        uint32_t grown = e->capsrqs ? e->capsrqs * 2 : 8;
        tv_srq **fresh = realloc(e->srqs, grown * sizeof *fresh);
        if (fresh == NULL)
            err = ENOMEM;
        else {
            e->srqs = fresh;
            e->capsrqs = grown;
        }
    }
    if (err == 0)
        e->srqs[e->nsrqs++] = srq;
    pthread_mutex_unlock(&e->lock);
    return err;
}

void tv_engine_remove_srq(tv_engine *e, tv_srq *srq) {
    pthread_mutex_lock(&e->lock);
    for (uint32_t i = 0; i < e->nsrqs; i++)
        if (e->srqs[i] == srq) {
            e->srqs[i] = e->srqs[--e->nsrqs];
            break;
        }
    pthread_mutex_unlock(&e->lock);
}

/* What a deregistration or re-registration of `region` does to the QPs and SRQs of its
 * PD -- the only ones that can reach it, locally or from the peer.  Without memory for
 * the lists, work holding pins keeps them until it completes: the wait for the pins is
 * then longer (for an SRQ's WRs, until a QP takes them), never unsafe. */
static void reach(tv_engine *e, const tv_region *region, void (*on_qp)(tv_qp *, const tv_region *),
                  void (*on_srq)(tv_srq *, const tv_region *)) {
    /* SRQs first: a QP takes a WR under the SRQ's lock, so each WR is seen either here,
     * still in its SRQ, or below, in the QP that took it */
    pthread_mutex_lock(&e->lock);
    uint32_t n = 0;
    tv_srq **srqs = malloc((e->nsrqs ? e->nsrqs : 1) * sizeof *srqs);
    for (uint32_t i = 0; srqs != NULL && i < e->nsrqs; i++)
        if (e->srqs[i]->pd == region->pd) {
            tv_srq_get(e->srqs[i]);
            srqs[n++] = e->srqs[i];
        }
    pthread_mutex_unlock(&e->lock);
    for (uint32_t i = 0; i < n; i++) {
        on_srq(srqs[i], region);
        tv_srq_put(srqs[i]);
    }
    free(srqs);
    tv_qp **qps = qps_of(e, region->pd, &n);
    for (uint32_t i = 0; i < n; i++) {
        on_qp(qps[i], region);
        tv_qp_put(qps[i]);
    }
    free(qps);
}

void *tv_engine_dereg(tv_engine *e, uint32_t key) {
    tv_region *region = tv_mem_take(&e->mem, key);
    if (region == NULL)
        return NULL;
    reach(e, region, tv_qp_revoke, tv_srq_revoke);
    return tv_mem_release(&e->mem, region);
}

int tv_engine_rereg(tv_engine *e, uint32_t key, uint64_t pd, uint64_t addr, uint64_t length,
                    uint32_t access, void *owner, void **old_owner) {
    *old_owner = NULL;
    tv_region *old = tv_mem_take(&e->mem, key);
    int status = tv_mem_reg(&e->mem, key, pd, addr, length, access, owner);
    if (old == NULL)
        return status;
    if (status == TV_MEM_OK)
        reach(e, old, tv_qp_reregistered, tv_srq_reregistered);
    else
        reach(e, old, tv_qp_revoke, tv_srq_revoke);
    *old_owner = tv_mem_release(&e->mem, old);
    return status;
}

void tv_engine_close(tv_engine *e) {
    pthread_mutex_lock(&e->lock);
    atomic_store(&e->closing, 1);
    int started = e->thread_started;
    pthread_mutex_unlock(&e->lock);
    pthread_mutex_lock(&e->events_lock);
    pthread_cond_broadcast(&e->events_cond); /* a thread in next_event returns */
    pthread_mutex_unlock(&e->events_lock);
    if (started) {
        ring_doorbell(e);
        pthread_join(e->thread, NULL);
    }
    drop_retired(e);
}

void tv_engine_free(tv_engine *e) {
    /* after close, once no QP, CQ or waiter uses it */
    while (e->drainers != NULL)
        drainer_done(e, e->drainers);
    while (e->events_head != NULL) {
        tv_event *ev = e->events_head;
        e->events_head = ev->next;
        free(ev);
    }
    free(e->watch);
    free(e->retired);
    free(e->qps);
    free(e->srqs);
    close(e->epfd);
    close(e->doorbell);
    tv_mem_destroy(&e->mem);
    pthread_mutex_destroy(&e->lock);
    pthread_mutex_destroy(&e->events_lock);
    pthread_cond_destroy(&e->events_cond);
}
