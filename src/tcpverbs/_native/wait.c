/* How application threads sleep on the native engine: CQ.wait and a channel's
 * get_cq_event.  Ownership, threads and lock order: engine.h.
 *
 * Both sleep on the sockets themselves.  Handing the reading to the engine thread would
 * cost two wake-ups per message: the engine thread's, when the data arrives, and the
 * sleeper's, when the engine thread signals it.  Instead the sleeper polls the sockets
 * of the QPs it waits for (a CQ's; a channel's armed CQs') together with an eventfd (the
 * CQ's `wake_fd`, the channel's fd) and reads what arrives itself, as a spinning poll
 * does -- one wake-up, as a blocking socket program has.  The eventfd brings what other
 * threads complete.  While a thread sleeps there, and for a grace period after (it is
 * likely to sleep again at once), the engine thread's reads of those QPs are parked
 * (tv_qp_direct_begin, conn.c); the engine thread still serves their timers, errors and
 * sends.  A sleeper with more CQs or QPs than it polls (TV_CHANNEL_CQS, DIRECT_MAX)
 * hands the reading to the engine thread and sleeps on the eventfd or, for CQ.wait, on
 * the CQ's condition variable.
 *
 * CQ.wait spins its budget first, polling and making progress in the caller's thread.
 * The binding calls both without the GIL, so a thread spinning or sleeping here never
 * keeps another Python thread from running.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static void to_timespec(uint64_t ns, struct timespec *ts) {
    ts->tv_sec = (time_t)(ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

/* -- sleeping on the sockets ------------------------------------------------------------ */

enum { DIRECT_MAX = 8 }; /* sockets one sleeper polls */

/* pfd[0] is the channel's eventfd; pfd[i + 1] the socket of qp[i] (fd -1: done with it,
 * and its end already given).  Each qp[i] holds a reference. */
typedef struct direct_set {
    int n;
    tv_qp *qp[DIRECT_MAX];
    struct pollfd pfd[DIRECT_MAX + 1];
} direct_set;

static int holds(const direct_set *set, const tv_qp *qp) {
    for (int i = 0; i < set->n; i++)
        if (set->qp[i] == qp)
            return 1;
    return 0;
}

static void release(direct_set *set) {
    for (int i = 0; i < set->n; i++) {
        if (set->pfd[i + 1].fd >= 0)
            tv_qp_direct_end(set->qp[i]);
        tv_qp_put(set->qp[i]);
    }
    set->n = 0;
}

/* The QPs of `cq` into the set; 0 when they do not all fit. */
static int gather_cq(direct_set *set, tv_cq *cq) {
    int fits = 1;
    pthread_mutex_lock(&cq->qps_lock);
    for (uint32_t i = 0; i < cq->nqps && fits; i++) {
        tv_qp *qp = cq->qps[i];
        if (holds(set, qp))
            continue; /* sends and receives on two CQs of the channel */
        if (set->n == DIRECT_MAX) {
            fits = 0;
            break;
        }
        int fd = tv_qp_direct_begin(qp); /* the list's QPs are alive while it is held */
        if (fd < 0)
            continue;
        tv_qp_get(qp);
        set->qp[set->n] = qp;
        set->pfd[set->n + 1] = (struct pollfd){.fd = fd, .events = POLLIN};
        set->n++;
    }
    pthread_mutex_unlock(&cq->qps_lock);
    return fits;
}

/* The sockets of the channel's QPs, or none (the eventfd alone) when there are more
 * than a sleeper polls. */
static void gather_channel(direct_set *set, tv_channel *ch) {
    tv_cq *cqs[TV_CHANNEL_CQS];
    uint32_t n = 0;
    pthread_mutex_lock(&ch->lock);
    for (uint32_t i = 0; i < ch->ncqs && ch->untracked == 0; i++) {
        /* an unarmed CQ's QPs are left to the engine thread: what they get raises no event */
        if (!__atomic_load_n(&ch->cqs[i]->armed, __ATOMIC_RELAXED))
            continue;
        cqs[n] = ch->cqs[i]; /* listed: not destroyed, so the binding holds it */
        atomic_fetch_add(&cqs[n++]->refs, 1);
    }
    pthread_mutex_unlock(&ch->lock);
    int fits = 1;
    for (uint32_t i = 0; i < n; i++) {
        fits = fits && gather_cq(set, cqs[i]);
        tv_cq_put(cqs[i]);
    }
    if (!fits)
        release(set);
}

/* Read what poll found on the sockets; stop polling a socket its QP is done with, or
 * one that reports an error only (the engine thread, which watches errors, deals with
 * it: polling it again would spin). */
static void serve(direct_set *set) {
    for (int i = 0; i < set->n; i++) {
        struct pollfd *p = &set->pfd[i + 1];
        if (p->fd < 0 || p->revents == 0)
            continue;
        int keep = (p->revents & (POLLIN | POLLHUP)) && tv_qp_direct_ready(set->qp[i], p->fd);
        if (!keep) {
            tv_qp_direct_end(set->qp[i]);
            p->fd = -1;
        }
    }
}

/* One sleep: until a socket of the set or `wake_fd` is readable, or `deadline` (ns, 0:
 * none); then read what arrived, as `owner`'s sleeper (its completions and events need
 * no signal: the caller looks for them next).  -1 when poll fails. */
static int sleep_once(direct_set *set, int wake_fd, const void *owner, uint64_t deadline) {
    struct timespec ts, *tsp = NULL;
    if (deadline != 0) {
        uint64_t now = tv_now();
        to_timespec(deadline > now ? deadline - now : 0, &ts);
        tsp = &ts;
    }
    if (set->n != 0) /* what this thread read and held back for a reply goes now */
        tv_engine_send_deferred_acks(set->qp[0]->engine, NULL);
    set->pfd[0] = (struct pollfd){.fd = wake_fd, .events = POLLIN};
    for (int i = 0; i <= set->n; i++)
        set->pfd[i].revents = 0;
    if (ppoll(set->pfd, (nfds_t)set->n + 1, tsp, NULL) < 0 && errno != EINTR)
        return -1;
    tv_serving_sleeper = owner;
    serve(set);
    tv_serving_sleeper = NULL;
    return 0;
}

/* -- CQ.wait -------------------------------------------------------------------------- */

/* Sleep on the condition variable every push signals, the engine thread reading. */
static void sleep_on_cond(tv_cq *cq, uint64_t deadline_ns) {
    tv_cq_app_blocking(cq, 0);
    pthread_mutex_lock(&cq->lock);
    if (tv_ring_count(cq->ring) == 0 && cq->lost == 0 && !cq->closed) {
        atomic_fetch_add(&cq->stats[TV_CQ_SLEEPS], 1);
        cq->sleepers++;
        if (deadline_ns == 0) {
            pthread_cond_wait(&cq->wakeup, &cq->lock);
        } else {
            struct timespec ts;
            to_timespec(deadline_ns, &ts);
            pthread_cond_timedwait(&cq->wakeup, &cq->lock, &ts);
        }
        cq->sleepers--;
    }
    pthread_mutex_unlock(&cq->lock);
}

/* Count this thread among the CQ's socket sleepers (pushes then write its `wake_fd`,
 * made on first use); 0 when it has none and cannot make one. */
static int join_sleepers(tv_cq *cq) {
    int ok = 1;
    pthread_mutex_lock(&cq->lock);
    if (cq->wake_fd < 0)
        cq->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (cq->wake_fd < 0)
        ok = 0;
    else
        cq->socket_sleepers++;
    pthread_mutex_unlock(&cq->lock);
    return ok;
}

/* After a sleep: `wake_fd` back to unreadable (a push writes it once until then). */
static void unsignal_cq(tv_cq *cq) {
    uint64_t v;
    pthread_mutex_lock(&cq->lock);
    if (cq->wake_signalled && read(cq->wake_fd, &v, sizeof v) == sizeof v)
        cq->wake_signalled = 0;
    pthread_mutex_unlock(&cq->lock);
}

static void leave_sleepers(tv_cq *cq) {
    unsignal_cq(cq);
    pthread_mutex_lock(&cq->lock);
    cq->socket_sleepers--;
    pthread_mutex_unlock(&cq->lock);
}

int tv_cq_wait(tv_cq *cq, tv_cqe *out, int n, uint32_t *lost, uint64_t spin_ns,
               uint64_t deadline_ns) {
    uint64_t spin_end = tv_now() + spin_ns;
    if (deadline_ns != 0 && deadline_ns < spin_end)
        spin_end = deadline_ns; /* a timeout shorter than the spin budget ends the spin */
    direct_set set = {.n = 0};
    int asleep = 0; /* 1: among the socket sleepers; -1: sleeps on the condition variable */
    int got = 0;
    for (;;) {
        atomic_fetch_add(&cq->stats[TV_CQ_POLLS], 1);
        got = tv_cq_take(cq, out, n, lost);
        if (got == 0 && asleep <= 0) { /* a socket sleeper has just read */
            tv_cq_progress(cq);
            got = tv_cq_take(cq, out, n, lost);
        }
        if (got != 0)
            break;
        atomic_fetch_add(&cq->stats[TV_CQ_POLLS_EMPTY], 1);
        if (cq->closed)
            break;
        uint64_t now = tv_now();
        if (now < spin_end)
            continue;
        if (deadline_ns != 0 && now >= deadline_ns)
            break;
        if (asleep == 0) {
            asleep = gather_cq(&set, cq) && set.n != 0 && join_sleepers(cq) ? 1 : -1;
            if (asleep < 0)
                release(&set);
            continue; /* a push may have come before it joined */
        }
        if (asleep < 0) {
            sleep_on_cond(cq, deadline_ns);
            continue;
        }
        atomic_fetch_add(&cq->stats[TV_CQ_SLEEPS], 1);
        if (sleep_once(&set, cq->wake_fd, cq, deadline_ns) < 0)
            break;
        if (set.pfd[0].revents & POLLIN)
            unsignal_cq(cq);
    }
    if (asleep > 0)
        leave_sleepers(cq);
    release(&set);
    return got;
}

/* -- get_cq_event ------------------------------------------------------------------------ */

int tv_channel_get_event(tv_channel *ch, int64_t timeout_ns, uint64_t *handle) {
    uint64_t deadline = timeout_ns < 0 ? 0 : tv_now() + (uint64_t)timeout_ns;
    direct_set set = {.n = 0};
    int gathered = 0, got;
    for (;;) {
        got = tv_channel_take_event(ch, handle);
        if (got != 0)
            break;
        if (deadline != 0 && tv_now() >= deadline)
            break;
        if (!gathered) {
            gathered = 1;
            gather_channel(&set, ch);
        }
        if (sleep_once(&set, ch->fd, ch, deadline) < 0)
            break;
    }
    release(&set);
    return got > 0;
}
