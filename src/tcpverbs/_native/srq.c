/* A shared receive queue in the native engine: the C twin of tcpverbs/engine/py/srq.py.
 *
 * The ring holds posted receive WRs, checked and pinned at post time as a QP's are
 * (tv_work_resolve).  When a message comes for one of its QPs and that QP has no receive
 * of its own, the QP takes the oldest WR here into its own receive ring (tv_srq_take,
 * called from tv_qp_next_recv with the QP's lock held): the slot is copied whole, pins
 * and all, so from then on the WR is the QP's, completed or flushed there.  An armed
 * limit (tv_srq_modify) queues IBV_EVENT_SRQ_LIMIT_REACHED once when a take leaves fewer
 * WRs than the limit, and disarms.  Deregistering an MR unpins the WRs here that use it
 * and leaves them the LOC_PROT_ERR fault for their turn; re-registering checks them again.
 *
 * Ownership and locking: engine.h ("srq.c").  Sizes come from the application (max_wr,
 * max_sge), never from a peer; a resize moves the slots into a new ring.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tv_srq *tv_srq_new(tv_engine *e, uint64_t handle, uint64_t pd, uint32_t max_wr,
                   uint32_t max_sge) {
    if (max_wr == 0 || max_wr > TV_RING_MAX_SLOTS || max_sge == 0 || max_sge > TV_MAX_SGE) {
        errno = EINVAL;
        return NULL;
    }
    tv_srq *srq = calloc(1, sizeof *srq);
    if (srq == NULL)
        return NULL;
    srq->slot_size = tv_recv_slot_size(max_sge);
    srq->ring = tv_new_ring(max_wr, srq->slot_size, &srq->ring_mem);
    if (srq->ring == NULL) {
        free(srq);
        errno = ENOMEM;
        return NULL;
    }
    atomic_init(&srq->refs, 1);
    pthread_mutex_init(&srq->lock, NULL);
    srq->engine = e;
    srq->handle = handle;
    srq->pd = pd;
    srq->max_wr = max_wr;
    srq->max_sge = max_sge;
    if (tv_engine_add_srq(e, srq) != 0) {
        tv_srq_put(srq);
        errno = ENOMEM;
        return NULL;
    }
    return srq;
}

void tv_srq_get(tv_srq *srq) { atomic_fetch_add(&srq->refs, 1); }

/* Unpin and drop every WR in the ring (lock held). */
static void drop_all(tv_srq *srq) {
    tv_work *w;
    while ((w = tv_ring_peek(srq->ring, 0)) != NULL) {
        tv_work_unpin_in(&srq->engine->mem, w);
        tv_ring_consume(srq->ring);
    }
}

void tv_srq_put(tv_srq *srq) {
    if (atomic_fetch_sub(&srq->refs, 1) != 1)
        return;
    drop_all(srq); /* (none left after tv_srq_destroy) */
    pthread_mutex_destroy(&srq->lock);
    free(srq->ring_mem);
    free(srq);
}

void tv_srq_destroy(tv_srq *srq) {
    pthread_mutex_lock(&srq->lock);
    int was = srq->destroyed;
    srq->destroyed = 1;
    drop_all(srq);
    pthread_mutex_unlock(&srq->lock);
    if (!was)
        tv_engine_remove_srq(srq->engine, srq);
}

void tv_srq_post_recv(tv_srq *srq, uint64_t wr_id, const tv_sge_in *sge, uint32_t num_sge,
                      uint32_t sg_len, tv_post_result *res) {
    *res = (tv_post_result){0};
    if (num_sge > srq->max_sge) {
        *res = (tv_post_result){TV_FAULT_TOO_MANY_SGE, num_sge, srq->max_sge};
        return;
    }
    if (num_sge > sg_len) {
        *res = (tv_post_result){TV_FAULT_SGE_COUNT, num_sge, sg_len};
        return;
    }
    pthread_mutex_lock(&srq->lock);
    tv_work *w = tv_ring_count(srq->ring) < srq->max_wr ? tv_ring_produce_slot(srq->ring)
                                                        : NULL;
    if (w == NULL || srq->destroyed) {
        pthread_mutex_unlock(&srq->lock);
        *res = (tv_post_result){TV_FAULT_QUEUE_FULL, 0, srq->max_wr};
        return;
    }
    tv_work_init_recv(&srq->engine->mem, srq->pd, w, wr_id, sge, num_sge);
    tv_ring_produce(srq->ring);
    pthread_mutex_unlock(&srq->lock);
}

int tv_srq_take(tv_srq *srq, tv_work *slot, uint32_t slot_size) {
    pthread_mutex_lock(&srq->lock);
    const tv_work *w = tv_ring_peek(srq->ring, 0);
    if (w == NULL || slot_size < srq->slot_size) { /* (the second never: TV_MAX_SGE) */
        pthread_mutex_unlock(&srq->lock);
        return 0;
    }
    memcpy(slot, w, srq->slot_size); /* the pins go with it */
    tv_ring_consume(srq->ring);
    uint32_t left = tv_ring_count(srq->ring);
    int reached = left < srq->limit;
    if (reached)
        srq->limit = 0; /* an armed limit fires once */
    pthread_mutex_unlock(&srq->lock);
    if (reached) {
        char why[TV_MSG_LEN];
        snprintf(why, sizeof why, "%" PRIu32 " receive WRs left in the SRQ", left);
        tv_engine_event(srq->engine, TV_EVENT_SRQ_LIMIT_REACHED, srq->handle, why);
    }
    return 1;
}

uint32_t tv_srq_count(tv_srq *srq) {
    pthread_mutex_lock(&srq->lock);
    uint32_t n = tv_ring_count(srq->ring);
    pthread_mutex_unlock(&srq->lock);
    return n;
}

/* Move the WRs into a ring of at least `max_wr` slots of room for `max_sge` segments
 * (lock held): 0 or ENOMEM. */
static int grow(tv_srq *srq, uint32_t max_wr, uint32_t max_sge) {
    void *mem;
    uint32_t slot_size = tv_recv_slot_size(max_sge);
    tv_ring *ring = tv_new_ring(max_wr, slot_size, &mem);
    if (ring == NULL)
        return ENOMEM;
    const tv_work *w;
    while ((w = tv_ring_peek(srq->ring, 0)) != NULL) {
        void *slot = tv_ring_produce_slot(ring); /* room: max_wr >= the WRs held */
        memcpy(slot, w, srq->slot_size);         /* slot_size >= the old one */
        tv_ring_produce(ring);
        tv_ring_consume(srq->ring);
    }
    free(srq->ring_mem);
    srq->ring = ring;
    srq->ring_mem = mem;
    srq->slot_size = slot_size;
    return 0;
}

int tv_srq_modify(tv_srq *srq, int set_max, uint32_t max_wr, uint32_t max_sge, int set_limit,
                  uint32_t limit) {
    int err = 0;
    pthread_mutex_lock(&srq->lock);
    if (set_max) {
        if (max_wr == 0 || max_wr > TV_RING_MAX_SLOTS || max_wr < tv_ring_count(srq->ring) ||
            max_sge < srq->max_sge || max_sge > TV_MAX_SGE)
            err = EINVAL;
        else if (max_wr > tv_ring_capacity(srq->ring) || max_sge > srq->max_sge)
            err = grow(srq, max_wr, max_sge);
        if (err == 0) {
            srq->max_wr = max_wr;
            srq->max_sge = max_sge;
        }
    }
    if (err == 0 && set_limit)
        srq->limit = limit;
    pthread_mutex_unlock(&srq->lock);
    return err;
}

void tv_srq_revoke(tv_srq *srq, const tv_region *region) {
    pthread_mutex_lock(&srq->lock);
    tv_work *w;
    for (uint32_t i = 0; (w = tv_ring_peek(srq->ring, i)) != NULL; i++) {
        for (uint32_t k = 0; k < w->nseg; k++) {
            if (w->seg[k].region != region)
                continue;
            uint64_t addr = (uint64_t)(uintptr_t)w->seg[k].base, length = w->seg[k].length;
            tv_work_unpin_in(&srq->engine->mem, w);
            w->fault = (tv_work_fault){TV_WC_LOC_PROT_ERR, TV_MEM_NO_KEY, k, region->key,
                                       addr, length};
            break;
        }
    }
    pthread_mutex_unlock(&srq->lock);
}

void tv_srq_reregistered(tv_srq *srq, const tv_region *old) {
    pthread_mutex_lock(&srq->lock);
    tv_work *w;
    for (uint32_t i = 0; (w = tv_ring_peek(srq->ring, i)) != NULL; i++)
        if (w->fault.status == 0)
            tv_work_check_again(&srq->engine->mem, srq->pd, w, old);
    pthread_mutex_unlock(&srq->lock);
}
