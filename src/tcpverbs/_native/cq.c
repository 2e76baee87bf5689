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
 * A channel is an eventfd and a queue of CQ handles: readable while an event is queued.
 * How threads wait on either: wait.c.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

const char *const tv_cq_stat_names[TV_CQ_NSTATS] = {
    "polls", "polls_empty", "yields", "completions", "overruns", "sleeps", "event_writes"};

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

_Thread_local const void *tv_serving_sleeper;

/* Make the eventfd say whether events are queued (one read resets its counter); a
 * sleeper that queued events itself left that to here.  Channel lock. */
static void signal_queued(tv_channel *ch) {
    uint64_t v = 1;
    if (ch->len == 0 && ch->signalled && read(ch->fd, &v, sizeof v) == sizeof v)
        ch->signalled = 0;
    else if (ch->len != 0 && !ch->signalled && write(ch->fd, &v, sizeof v) == sizeof v)
        ch->signalled = 1;
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
            if (!ch->signalled && tv_serving_sleeper != ch &&
                write(ch->fd, &one, sizeof one) == sizeof one) {
                ch->signalled = 1;
                atomic_fetch_add(&cq->stats[TV_CQ_EVENT_WRITES], 1);
            }
        }
    }
    pthread_mutex_unlock(&ch->lock);
}

int tv_channel_take_event(tv_channel *ch, uint64_t *handle) {
    int got = 0;
    pthread_mutex_lock(&ch->lock);
    if (ch->closed) {
        got = -1;
    } else if (ch->len != 0) {
        *handle = ch->events[ch->head];
        ch->head = (ch->head + 1) % ch->cap;
        ch->len--;
        got = 1;
    }
    if (!ch->closed) /* readable <=> events queued */
        signal_queued(ch);
    pthread_mutex_unlock(&ch->lock);
    return got;
}

/* The channel's list of CQs (wait.c reads it under the channel's lock). */
static void channel_add_cq(tv_channel *ch, tv_cq *cq) {
    pthread_mutex_lock(&ch->lock);
    if (ch->ncqs < TV_CHANNEL_CQS)
        ch->cqs[ch->ncqs++] = cq;
    else
        ch->untracked++;
    pthread_mutex_unlock(&ch->lock);
}

static void channel_remove_cq(tv_channel *ch, tv_cq *cq) {
    pthread_mutex_lock(&ch->lock);
    uint32_t i = 0;
    while (i < ch->ncqs && ch->cqs[i] != cq)
        i++;
    if (i < ch->ncqs)
        ch->cqs[i] = ch->cqs[--ch->ncqs];
    else if (ch->untracked > 0)
        ch->untracked--;
    pthread_mutex_unlock(&ch->lock);
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
    cq->wake_fd = -1;
    cq->engine = e;
    cq->handle = handle;
    cq->cqe = cqe;
    pthread_mutex_init(&cq->lock, NULL);
    pthread_mutex_init(&cq->qps_lock, NULL);
    tv_cond_init_monotonic(&cq->wakeup);
    if (ch != NULL) {
        atomic_fetch_add(&ch->refs, 1);
        cq->channel = ch;
        channel_add_cq(ch, cq);
    }
    return cq;
}

/* CQ lock held. */
static void wake_socket_sleepers(tv_cq *cq) {
    uint64_t one = 1;
    if (cq->socket_sleepers && !cq->wake_signalled && tv_serving_sleeper != cq &&
        write(cq->wake_fd, &one, sizeof one) == sizeof one)
        cq->wake_signalled = 1;
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
    int was_closed = cq->closed;
    cq->closed = 1;
    pthread_cond_broadcast(&cq->wakeup); /* a sleeper in wait returns */
    wake_socket_sleepers(cq);
    pthread_mutex_unlock(&cq->lock);
    if (!was_closed && cq->channel != NULL)
        channel_remove_cq(cq->channel, cq);
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
    if (cq->wake_fd >= 0)
        close(cq->wake_fd);
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
    wake_socket_sleepers(cq);
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

void tv_cq_app_blocking(tv_cq *cq, int lazy) {
    pthread_mutex_lock(&cq->qps_lock);
    for (uint32_t i = 0; i < cq->nqps; i++)
        tv_qp_app_blocking(cq->qps[i], lazy);
    pthread_mutex_unlock(&cq->qps_lock);
}

void tv_cq_req_notify(tv_cq *cq, int solicited_only) {
    pthread_mutex_lock(&cq->lock);
    cq->armed = 1;
    cq->solicited_only = solicited_only;
    pthread_mutex_unlock(&cq->lock);
    tv_cq_app_blocking(cq, 1); /* about to sleep: the engine thread takes over */
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
