/* Completion queues and channels of the native engine, and its waiting policy.
 * Ownership, threads and lock order: engine.h.
 *
 * A CQ is a ring of tv_cqe (ring.h) holding at most `cqe` completions.  Producers are
 * the QPs completing work (each under its own lock, so they also take the CQ's lock to
 * share the ring); the consumer is the application's poll.  One more completion than
 * `cqe` is an overrun: counted, an IBV_EVENT_CQ_ERR queued, and the next poll reports
 * it.  Polling gives the WRs' queue slots back, under the QP's lock once the CQ's is let
 * go (a run of completions of one queue costs one lock round).
 *
 * Waiting: tv_cq_wait spins its budget, polling and making progress in the caller's
 * thread, then tells the CQ's QPs the application is about to block (the engine thread
 * reads their sockets from then on) and sleeps on a condition variable that every push
 * signals.  The binding calls it without the GIL, so a thread spinning here never keeps
 * another Python thread from running.
 *
 * A channel is an eventfd and a queue of CQ handles: readable while an event is queued.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

const char *const tv_cq_stat_names[TV_CQ_NSTATS] = {
    "polls", "polls_empty", "yields", "completions", "overruns", "sleeps", "event_writes"};

static void to_timespec(uint64_t ns, struct timespec *ts) {
    ts->tv_sec = (time_t)(ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

/* -- channels ---------------------------------------------------------------------- */

tv_channel *tv_channel_new(void) {
    tv_channel *ch = calloc(1, sizeof *ch);
    if (ch == NULL)
        return NULL;
    ch->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ch->fd < 0) {
        int err = errno;
        free(ch);
        errno = err;
        return NULL;
    }
    atomic_init(&ch->refs, 1);
    pthread_mutex_init(&ch->lock, NULL);
    return ch;
}

void tv_channel_put(tv_channel *ch) {
    if (ch == NULL || atomic_fetch_sub(&ch->refs, 1) != 1)
        return;
    close(ch->fd);
    free(ch->events);
    pthread_mutex_destroy(&ch->lock);
    free(ch);
}

static void drain(int fd) {
    uint64_t v;
    while (read(fd, &v, sizeof v) == sizeof v) {
    }
}

static void channel_notify(tv_cq *cq, tv_channel *ch) {
    pthread_mutex_lock(&ch->lock);
    if (!ch->closed) {
        if (ch->len == ch->cap) { /* grows with what the application leaves unread */
            uint32_t grown = ch->cap ? ch->cap * 2 : 8;
            uint64_t *fresh = malloc(grown * sizeof *fresh);
            if (fresh != NULL) {
                for (uint32_t i = 0; i < ch->len; i++)
                    fresh[i] = ch->events[(ch->head + i) % ch->cap];
                free(ch->events);
                ch->events = fresh;
                ch->cap = grown;
                ch->head = 0;
            }
        }
        if (ch->len < ch->cap) { /* without memory the event is lost; the CQ still has it */
            ch->events[(ch->head + ch->len++) % ch->cap] = cq->handle;
            uint64_t one = 1;
            if (write(ch->fd, &one, sizeof one) == sizeof one)
                atomic_fetch_add(&cq->stats[TV_CQ_EVENT_WRITES], 1);
        }
    }
    pthread_mutex_unlock(&ch->lock);
}

int tv_channel_get_event(tv_channel *ch, int64_t timeout_ns, uint64_t *handle) {
    uint64_t deadline = timeout_ns < 0 ? 0 : tv_now() + (uint64_t)timeout_ns;
    for (;;) {
        pthread_mutex_lock(&ch->lock);
        if (ch->closed) {
            pthread_mutex_unlock(&ch->lock);
            return 0;
        }
        if (ch->len != 0) {
            *handle = ch->events[ch->head];
            ch->head = (ch->head + 1) % ch->cap;
            if (--ch->len == 0)
                drain(ch->fd); /* readable <=> events queued */
            pthread_mutex_unlock(&ch->lock);
            return 1;
        }
        drain(ch->fd);
        pthread_mutex_unlock(&ch->lock);
        struct timespec ts, *tsp = NULL;
        if (deadline != 0) {
            uint64_t now = tv_now();
            if (now >= deadline)
                return 0;
            to_timespec(deadline - now, &ts);
            tsp = &ts;
        }
        struct pollfd pfd = {.fd = ch->fd, .events = POLLIN};
        if (ppoll(&pfd, 1, tsp, NULL) < 0 && errno != EINTR)
            return 0;
    }
}

void tv_channel_destroy(tv_channel *ch) {
    pthread_mutex_lock(&ch->lock);
    if (!ch->closed) {
        ch->closed = 1;
        uint64_t one = 1;
        if (write(ch->fd, &one, sizeof one) < 0) { /* wakes a ppoll on it; full is awake */
        }
    }
    pthread_mutex_unlock(&ch->lock);
}

/* -- completion queues ------------------------------------------------------------- */

static uint32_t ring_slots(uint32_t cqe) {
    uint32_t slots = 1;
    while (slots < cqe && slots < TV_RING_MAX_SLOTS)
        slots <<= 1;
    return slots;
}

tv_cq *tv_cq_new(tv_engine *e, uint64_t handle, uint32_t cqe, tv_channel *ch) {
    if (cqe == 0 || cqe > TV_RING_MAX_SLOTS) {
        errno = EINVAL;
        return NULL;
    }
    tv_cq *cq = calloc(1, sizeof *cq);
    if (cq == NULL)
        return NULL;
    uint32_t slots = ring_slots(cqe);
    size_t bytes = tv_ring_bytes(slots, sizeof(tv_cqe));
    bytes = (bytes + TV_CACHE_LINE - 1) / TV_CACHE_LINE * TV_CACHE_LINE;
    cq->ring_mem = aligned_alloc(TV_CACHE_LINE, bytes);
    if (cq->ring_mem == NULL) {
        free(cq);
        errno = ENOMEM;
        return NULL;
    }
    cq->ring = tv_ring_init(cq->ring_mem, slots, sizeof(tv_cqe));
    atomic_init(&cq->refs, 1);
    cq->engine = e;
    cq->handle = handle;
    cq->cqe = cqe;
    pthread_mutex_init(&cq->lock, NULL);
    pthread_mutex_init(&cq->qps_lock, NULL);
    tv_cond_init_monotonic(&cq->wakeup);
    if (ch != NULL) {
        atomic_fetch_add(&ch->refs, 1);
        cq->channel = ch;
    }
    return cq;
}

/* Drop every queued completion (their QP references).  CQ lock held. */
static void drop_entries(tv_cq *cq) {
    const tv_cqe *slot;
    while ((slot = tv_ring_consume_slot(cq->ring)) != NULL) {
        tv_qp *qp = slot->qp;
        tv_ring_consume(cq->ring);
        tv_qp_put(qp);
    }
}

void tv_cq_destroy(tv_cq *cq) {
    pthread_mutex_lock(&cq->lock);
    cq->closed = 1;
    pthread_cond_broadcast(&cq->wakeup); /* a sleeper in wait returns */
    pthread_mutex_unlock(&cq->lock);
    /* the references of unpolled completions would keep a destroyed QP alive, and that
     * QP this CQ: drop them outside the lock (a QP freed here puts its CQs) */
    for (;;) {
        tv_cqe e;
        pthread_mutex_lock(&cq->lock);
        const tv_cqe *slot = tv_ring_consume_slot(cq->ring);
        if (slot != NULL) {
            e = *slot;
            tv_ring_consume(cq->ring);
        }
        pthread_mutex_unlock(&cq->lock);
        if (slot == NULL)
            break;
        tv_qp_put(e.qp);
    }
}

void tv_cq_put(tv_cq *cq) {
    if (cq == NULL || atomic_fetch_sub(&cq->refs, 1) != 1)
        return;
    drop_entries(cq); /* none is left after destroy; this is for a CQ never destroyed */
    tv_channel_put(cq->channel);
    pthread_mutex_destroy(&cq->lock);
    pthread_mutex_destroy(&cq->qps_lock);
    pthread_cond_destroy(&cq->wakeup);
    free(cq->qps);
    free(cq->ring_mem);
    free(cq);
}

int tv_cq_push(tv_cq *cq, const tv_cqe *entry, int solicited) {
    int notify = 0, overrun = 0, lost = 0;
    pthread_mutex_lock(&cq->lock);
    if (cq->closed) {
        pthread_mutex_unlock(&cq->lock);
        return 1;
    }
    tv_cqe *slot = tv_ring_count(cq->ring) < cq->cqe ? tv_ring_produce_slot(cq->ring) : NULL;
    if (slot == NULL) {
        lost = 1;
        overrun = ++cq->lost == 1;
        atomic_fetch_add(&cq->stats[TV_CQ_OVERRUNS], 1);
    } else {
        *slot = *entry;
        tv_qp_get(entry->qp);
        tv_ring_produce(cq->ring);
    }
    atomic_fetch_add(&cq->stats[TV_CQ_COMPLETIONS], 1);
    if (cq->sleepers)
        pthread_cond_broadcast(&cq->wakeup);
    if (cq->armed && (!cq->solicited_only || solicited || entry->status != TV_WC_SUCCESS)) {
        cq->armed = 0;
        notify = 1;
    }
    pthread_mutex_unlock(&cq->lock);
    if (overrun)
        tv_engine_event(cq->engine, TV_EVENT_CQ_ERR, cq->handle, "CQ overrun");
    if (notify && cq->channel != NULL)
        channel_notify(cq, cq->channel);
    return lost; /* never to be polled: its slot is free now */
}

int tv_cq_take(tv_cq *cq, tv_cqe *out, int n, uint32_t *lost) {
    if (tv_ring_count(cq->ring) == 0 && cq->lost == 0) /* the empty poll takes no lock */
        return 0;
    int got = 0;
    pthread_mutex_lock(&cq->lock);
    if (cq->lost != 0) {
        *lost = cq->lost;
        cq->lost = 0;
        pthread_mutex_unlock(&cq->lock);
        return -1;
    }
    const tv_cqe *slot;
    while (got < n && (slot = tv_ring_consume_slot(cq->ring)) != NULL) {
        out[got++] = *slot;
        tv_ring_consume(cq->ring);
    }
    pthread_mutex_unlock(&cq->lock);
    /* slots are freed once per run of completions of one queue (one lock round) */
    for (int i = 0; i < got;) {
        int j = i + 1;
        while (j < got && out[j].qp == out[i].qp && out[j].is_send == out[i].is_send &&
               out[j].generation == out[i].generation)
            j++;
        tv_qp_slot_freed(out[i].qp, (int)out[i].is_send, out[i].generation, (uint32_t)(j - i));
        for (int k = i; k < j; k++)
            tv_qp_put(out[k].qp);
        i = j;
    }
    return got;
}

void tv_cq_progress(tv_cq *cq) {
    tv_engine_send_deferred_acks(cq->engine, cq); /* waiting on any CQ is the next move */
    pthread_mutex_lock(&cq->qps_lock);
    for (uint32_t i = 0; i < cq->nqps; i++)
        tv_qp_progress(cq->qps[i]);
    pthread_mutex_unlock(&cq->qps_lock);
}

static void app_blocking(tv_cq *cq) {
    pthread_mutex_lock(&cq->qps_lock);
    for (uint32_t i = 0; i < cq->nqps; i++)
        tv_qp_app_blocking(cq->qps[i]);
    pthread_mutex_unlock(&cq->qps_lock);
}

int tv_cq_wait(tv_cq *cq, tv_cqe *out, int n, uint32_t *lost, uint64_t spin_ns,
               uint64_t deadline_ns) {
    uint64_t spin_end = tv_now() + spin_ns;
    for (;;) {
        atomic_fetch_add(&cq->stats[TV_CQ_POLLS], 1);
        int got = tv_cq_take(cq, out, n, lost);
        if (got == 0) {
            tv_cq_progress(cq);
            got = tv_cq_take(cq, out, n, lost);
        }
        if (got != 0)
            return got;
        atomic_fetch_add(&cq->stats[TV_CQ_POLLS_EMPTY], 1);
        if (cq->closed)
            return 0;
        uint64_t now = tv_now();
        if (now < spin_end)
            continue;
        if (deadline_ns != 0 && now >= deadline_ns)
            return 0;
        app_blocking(cq); /* about to sleep: the engine thread reads from here on */
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
}

void tv_cq_req_notify(tv_cq *cq, int solicited_only) {
    pthread_mutex_lock(&cq->lock);
    cq->armed = 1;
    cq->solicited_only = solicited_only;
    pthread_mutex_unlock(&cq->lock);
    app_blocking(cq); /* about to sleep: the engine thread takes over */
}

uint32_t tv_cq_pending(tv_cq *cq) { return tv_ring_count(cq->ring); }

int tv_cq_add_qp(tv_cq *cq, tv_qp *qp) {
    int err = 0;
    pthread_mutex_lock(&cq->qps_lock);
    int there = 0;
    for (uint32_t i = 0; i < cq->nqps; i++)
        there |= cq->qps[i] == qp; /* the same CQ for sends and receives */
    if (!there)
        err = tv_qps_push(&cq->qps, &cq->nqps, &cq->capqps, qp);
    pthread_mutex_unlock(&cq->qps_lock);
    return err;
}

void tv_cq_remove_qp(tv_cq *cq, tv_qp *qp) {
    pthread_mutex_lock(&cq->qps_lock);
    tv_qps_drop(cq->qps, &cq->nqps, qp);
    pthread_mutex_unlock(&cq->qps_lock);
}

void tv_cq_discard_qp(tv_cq *cq, tv_qp *qp) {
    pthread_mutex_lock(&cq->lock);
    uint32_t n = tv_ring_count(cq->ring), dropped = 0;
    for (uint32_t i = 0; i < n; i++) { /* each taken out and, if kept, put back in order */
        tv_cqe e = *(const tv_cqe *)tv_ring_consume_slot(cq->ring);
        tv_ring_consume(cq->ring);
        if (e.qp == qp) {
            dropped++;
            continue;
        }
        *(tv_cqe *)tv_ring_produce_slot(cq->ring) = e;
        tv_ring_produce(cq->ring);
    }
    pthread_mutex_unlock(&cq->lock);
    while (dropped--) /* the QP's own reference (the caller's) keeps it alive */
        tv_qp_put(qp);
}
