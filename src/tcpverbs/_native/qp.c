/* A QP in the native engine: its rings, the checks at post time, outcomes, the error
 * flush, revocation and RESET.  The C twin of tcpverbs/engine/py/qp.py (its theory of
 * operation holds here); ownership, threads and lock order: engine.h.
 *
 * The send ring holds every posted send WR until its outcome is known, oldest first: the
 * stream transport hands WRs to the wire from the head (conn.wire_count of them are on
 * the wire) and completes them there.  The receive ring holds posted receives.  Queue
 * slots (max_send_wr / max_recv_wr) are counted apart from the rings (sq_slots, rq_slots):
 * taken at post time and given back when the completion is polled, so an application
 * that stops polling gets ENOMEM from post instead of growing memory.
 *
 * The QP's lock is recursive: the verbs layer's fail() and the transports' failures
 * both end in tv_qp_fail, from outside and from inside the lock.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const tv_qp_stat_names[TV_QP_NSTATS] = {
    "wrs_sent", "wrs_received", "bytes_sent", "bytes_received", "sendmsg_calls",
    "recv_calls", "recv_empty", "ack_checks", "frames_sent", "frames_received",
    "rnr_naks_sent", "rnr_naks_received", "remote_ops", "zerocopy_sends",
    "zerocopy_released", "zerocopy_copied", "zerocopy_disabled", "ud_dropped",
    "qkey_violations", "ud_send_errors"};

static uint32_t send_slot_size(uint32_t max_sge, uint32_t max_inline) {
    size_t size = sizeof(tv_work) + (max_sge ? max_sge : 1) * sizeof(tv_seg);
    size += (max_inline + 7u) & ~7u;
    return (uint32_t)size;
}

uint32_t tv_recv_slot_size(uint32_t max_sge) {
    return (uint32_t)(sizeof(tv_work) + (max_sge ? max_sge : 1) * sizeof(tv_seg));
}

tv_ring *tv_new_ring(uint32_t depth, uint32_t slot_size, void **mem) {
    uint32_t slots = 1;
    while (slots < depth)
        slots <<= 1;
    size_t bytes = tv_ring_bytes(slots, slot_size);
    if (bytes == 0)
        return NULL;
    bytes = (bytes + TV_CACHE_LINE - 1) / TV_CACHE_LINE * TV_CACHE_LINE;
    *mem = aligned_alloc(TV_CACHE_LINE, bytes);
    return *mem == NULL ? NULL : tv_ring_init(*mem, slots, slot_size);
}

tv_qp *tv_qp_new(tv_engine *e, const tv_qp_spec *spec, tv_cq *scq, tv_cq *rcq) {
    if ((spec->srq != NULL && spec->srq->engine != e) || /* another context's SRQ */
        spec->max_send_sge > TV_MAX_SGE || spec->max_recv_sge > TV_MAX_SGE ||
        spec->max_send_wr > TV_RING_MAX_SLOTS || spec->max_recv_wr > TV_RING_MAX_SLOTS ||
        spec->max_inline > 65536) {
        errno = EINVAL;
        return NULL;
    }
    tv_qp *qp = calloc(1, sizeof *qp);
    if (qp == NULL)
        return NULL;
    qp->sq = tv_new_ring(spec->max_send_wr, send_slot_size(spec->max_send_sge, spec->max_inline),
                      &qp->sq_mem);
    if (spec->srq != NULL) /* WRs taken from the SRQ, one at a time, of any SGE count */
        qp->rq = tv_new_ring(2, tv_recv_slot_size(TV_MAX_SGE), &qp->rq_mem);
    else
        qp->rq = tv_new_ring(spec->max_recv_wr, tv_recv_slot_size(spec->max_recv_sge),
                             &qp->rq_mem);
    if (qp->sq == NULL || qp->rq == NULL) {
        free(qp->sq_mem);
        free(qp->rq_mem);
        free(qp);
        errno = ENOMEM;
        return NULL;
    }
    atomic_init(&qp->refs, 1);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&qp->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    qp->engine = e;
    qp->handle = spec->handle;
    qp->qp_num = spec->qp_num;
    qp->pd = spec->pd;
    qp->max_send_wr = spec->max_send_wr;
    qp->max_recv_wr = spec->max_recv_wr;
    qp->max_send_sge = spec->max_send_sge;
    qp->max_recv_sge = spec->max_recv_sge;
    qp->max_inline = spec->max_inline;
    qp->sq_sig_all = spec->sq_sig_all;
    qp->wire = spec->wire;
    qp->mtu = spec->mtu;
    qp->conn.fd = -1;
    atomic_init(&qp->state, TV_QPS_RESET);
    atomic_init(&qp->sq_slots, 0);
    atomic_init(&qp->rq_slots, 0);
    atomic_fetch_add(&scq->refs, 1);
    atomic_fetch_add(&rcq->refs, 1);
    qp->scq = scq;
    qp->rcq = rcq;
    if (spec->srq != NULL) {
        tv_srq_get(spec->srq);
        qp->srq = spec->srq;
    }
    if (tv_cq_add_qp(scq, qp) != 0 || tv_cq_add_qp(rcq, qp) != 0 ||
        tv_engine_add_qp(e, qp) != 0) {
        tv_cq_remove_qp(scq, qp);
        tv_cq_remove_qp(rcq, qp);
        tv_qp_put(qp);
        errno = ENOMEM;
        return NULL;
    }
    return qp;
}

void tv_qp_get(tv_qp *qp) { atomic_fetch_add(&qp->refs, 1); }

void tv_qp_put(tv_qp *qp) {
    if (atomic_fetch_sub(&qp->refs, 1) != 1)
        return;
    tv_rcconn_free(qp);
    tv_cq_put(qp->scq);
    tv_cq_put(qp->rcq);
    if (qp->srq != NULL)
        tv_srq_put(qp->srq);
    pthread_mutex_destroy(&qp->lock);
    free(qp->sq_mem);
    free(qp->rq_mem);
    free(qp);
}

static tv_work *head_of(tv_ring *r) { return tv_ring_peek(r, 0); }

tv_work *tv_qp_next_recv(tv_qp *qp) {
    tv_work *w = head_of(qp->rq);
    if (w != NULL || qp->srq == NULL)
        return w;
    w = tv_ring_produce_slot(qp->rq); /* the QP's lock makes it producer and consumer */
    if (w == NULL || !tv_srq_take(qp->srq, w, qp->rq->slot_size))
        return NULL;
    atomic_fetch_add(&qp->rq_slots, 1); /* given back when its completion is polled */
    tv_ring_produce(qp->rq);
    return w;
}

/* -- posting ------------------------------------------------------------------------ */

static uint32_t wc_opcode_of(uint32_t opcode) {
    switch (opcode) {
    case TV_WR_SEND:
    case TV_WR_SEND_WITH_IMM:
        return TV_WC_SEND;
    case TV_WR_RDMA_WRITE:
    case TV_WR_RDMA_WRITE_WITH_IMM:
        return TV_WC_RDMA_WRITE;
    case TV_WR_RDMA_READ:
        return TV_WC_RDMA_READ;
    case TV_WR_ATOMIC_CMP_AND_SWP:
        return TV_WC_COMP_SWAP;
    case TV_WR_ATOMIC_FETCH_AND_ADD:
        return TV_WC_FETCH_ADD;
    default:
        return UINT32_MAX;
    }
}

static int is_atomic(uint32_t opcode) {
    return opcode == TV_WR_ATOMIC_CMP_AND_SWP || opcode == TV_WR_ATOMIC_FETCH_AND_ADD;
}

void tv_work_unpin_in(tv_memtable *mem, tv_work *w) {
    for (uint32_t i = 0; i < w->nseg; i++)
        if (w->seg[i].region != NULL) {
            tv_mem_unpin(mem, w->seg[i].region);
            w->seg[i].region = NULL;
        }
    w->nseg = 0;
}

void tv_work_unpin(tv_qp *qp, tv_work *w) { tv_work_unpin_in(&qp->engine->mem, w); }

void tv_work_resolve(tv_memtable *mem, uint64_t pd, tv_work *w, const tv_sge_in *sge,
                     uint32_t n, uint32_t need, unsigned char *inline_buf) {
    w->nseg = 0;
    uint64_t copied = 0;
    for (uint32_t i = 0; i < n; i++) {
        tv_region *region = NULL;
        int status;
        if (inline_buf != NULL) {
            status = tv_mem_check(mem, sge[i].lkey, pd, sge[i].addr, sge[i].length, 0, NULL);
            if ((status == TV_MEM_NO_KEY || status == TV_MEM_WRONG_PD) &&
                tv_mem_find(mem, pd, sge[i].addr, sge[i].length))
                status = TV_MEM_OK; /* ibv_post_send ignores the lkey of inline data */
        } else {
            status = tv_mem_check(mem, sge[i].lkey, pd, sge[i].addr, sge[i].length, need,
                                  sge[i].length ? &region : NULL);
        }
        if (status != TV_MEM_OK) {
            tv_work_unpin_in(mem, w);
            w->fault = (tv_work_fault){TV_WC_LOC_PROT_ERR, (uint32_t)status, i, sge[i].lkey,
                                       sge[i].addr, sge[i].length};
            return;
        }
        if (sge[i].length == 0)
            continue;
        if (inline_buf != NULL) { /* the caller may reuse the buffer once post returns */
            memcpy(inline_buf + copied, (const void *)(uintptr_t)sge[i].addr, sge[i].length);
            copied += sge[i].length;
            continue;
        }
        w->seg[w->nseg++] = (tv_seg){(unsigned char *)(uintptr_t)sge[i].addr, sge[i].length,
                                     region};
    }
    if (inline_buf != NULL && copied)
        w->seg[w->nseg++] = (tv_seg){inline_buf, copied, NULL};
}

void tv_work_init_recv(tv_memtable *mem, uint64_t pd, tv_work *w, uint64_t wr_id,
                       const tv_sge_in *sge, uint32_t num_sge) {
    memset(w, 0, offsetof(tv_work, ud_gid)); /* (the UD fields: a UD send's own) */
    w->wr_id = wr_id;
    w->wc_opcode = TV_WC_RECV;
    tv_work_resolve(mem, pd, w, sge, num_sge, TV_LOCAL_WRITE, NULL);
    for (uint32_t i = 0; i < w->nseg; i++)
        w->length += w->seg[i].length; /* the capacity */
}

void tv_work_fault_text(const tv_work *w, char *out, size_t cap) {
    const tv_work_fault *f = &w->fault;
    if (f->status == TV_WC_LOC_LEN_ERR) {
        snprintf(out, cap, "message of %" PRIu64 " bytes exceeds max_msg_sz", w->length);
        return;
    }
    switch (f->mem) {
    case TV_MEM_NO_ACCESS:
        snprintf(out, cap, "SGE %u: MR 0x%x lacks IBV_ACCESS_LOCAL_WRITE", f->sge, f->lkey);
        break;
    case TV_MEM_OUT_OF_RANGE:
        snprintf(out, cap, "SGE %u: [0x%" PRIx64 ", +%" PRIu64 ") is outside MR 0x%x", f->sge,
                 f->addr, f->length, f->lkey);
        break;
    default:
        snprintf(out, cap, "SGE %u: lkey 0x%x is not an MR of this QP's PD", f->sge, f->lkey);
    }
}

void tv_qp_post_send(tv_qp *qp, const tv_send_in *wr, tv_post_result *res) {
    *res = (tv_post_result){0};
    int state = atomic_load(&qp->state);
    if (qp->setup_failed) {
        res->fault = TV_FAULT_SETUP_FAILED;
        return;
    }
    if (state != TV_QPS_RTS && state != TV_QPS_ERR) {
        *res = (tv_post_result){TV_FAULT_BAD_STATE, (uint64_t)state, 0};
        return;
    }
    uint32_t wc_opcode = wc_opcode_of(wr->opcode);
    int ud = qp->wire == TV_WIRE_UD;
    if (wc_opcode == UINT32_MAX || (qp->wire == TV_WIRE_STREAM && wr->opcode != TV_WR_SEND) ||
        (ud && wr->opcode != TV_WR_SEND && wr->opcode != TV_WR_SEND_WITH_IMM)) {
        *res = (tv_post_result){TV_FAULT_BAD_OPCODE, wr->opcode, 0};
        return;
    }
    if (ud && wr->remote_qpn >> 24) {
        *res = (tv_post_result){TV_FAULT_BAD_FIELD, TV_FIELD_REMOTE_QPN, 24};
        return;
    }
    if (ud && (!wr->ah_ok || wr->ah_pd != qp->pd)) { /* an AH of this QP's PD */
        *res = (tv_post_result){TV_FAULT_BAD_FIELD, TV_FIELD_AH, 0};
        return;
    }
    if (wr->num_sge > qp->max_send_sge) {
        *res = (tv_post_result){TV_FAULT_TOO_MANY_SGE, wr->num_sge, qp->max_send_sge};
        return;
    }
    if (wr->num_sge > wr->sg_len) {
        *res = (tv_post_result){TV_FAULT_SGE_COUNT, wr->num_sge, wr->sg_len};
        return;
    }
    uint64_t length = 0;
    for (uint32_t i = 0; i < wr->num_sge; i++)
        length += wr->sge[i].length;
    int is_inline = (wr->send_flags & TV_SEND_INLINE) != 0;
    int writes_local = wr->opcode == TV_WR_RDMA_READ || is_atomic(wr->opcode);
    if (is_inline && length > qp->max_inline) {
        *res = (tv_post_result){TV_FAULT_INLINE_TOO_LONG, length, qp->max_inline};
        return;
    }
    if (is_inline && writes_local) {
        *res = (tv_post_result){TV_FAULT_NOT_INLINABLE, wr->opcode, 0};
        return;
    }
    if (is_atomic(wr->opcode) && (wr->num_sge != 1 || length != 8)) {
        *res = (tv_post_result){TV_FAULT_ATOMIC_SHAPE, wr->num_sge, length};
        return;
    }
    if (tv_qp_slots_used(qp, 1) >= qp->max_send_wr) {
        *res = (tv_post_result){TV_FAULT_QUEUE_FULL, 0, qp->max_send_wr};
        return;
    }
    tv_work *w = tv_ring_produce_slot(qp->sq); /* room: occupancy <= slots < depth */
    if (w == NULL) { /* cannot happen while the slot count holds; refuse rather than trust */
        *res = (tv_post_result){TV_FAULT_QUEUE_FULL, 0, qp->max_send_wr};
        return;
    }
    memset(w, 0, offsetof(tv_work, ud_gid)); /* (the UD fields: a UD send's own) */
    w->wr_id = wr->wr_id;
    w->length = length;
    w->opcode = wr->opcode;
    w->wc_opcode = wc_opcode;
    w->imm = wr->imm;
    w->rkey = wr->rkey;
    w->remote_addr = wr->remote_addr;
    w->compare_add = wr->compare_add;
    w->swap = wr->swap;
    w->signaled = qp->sq_sig_all || (wr->send_flags & TV_SEND_SIGNALED);
    w->solicited = (wr->send_flags & TV_SEND_SOLICITED) != 0;
    w->fence = (wr->send_flags & TV_SEND_FENCE) != 0;
    w->needs_response = (uint8_t)writes_local; /* READ and atomics: answered, not acked */
    unsigned char *inline_buf =
        is_inline ? (unsigned char *)&w->seg[qp->max_send_sge ? qp->max_send_sge : 1] : NULL;
    tv_work_resolve(&qp->engine->mem, qp->pd, w, wr->sge, wr->num_sge,
                    writes_local ? TV_LOCAL_WRITE : 0, inline_buf);
    if (w->fault.status == 0 && length > TV_MAX_MSG_SZ) {
        tv_work_unpin(qp, w);
        w->fault.status = TV_WC_LOC_LEN_ERR;
    }
    if (ud) {
        memcpy(w->ud_gid, wr->ah_gid, sizeof w->ud_gid);
        w->ud_qpn = (uint32_t)wr->remote_qpn;
        w->ud_qkey = wr->remote_qkey & 0x80000000u ? qp->params.qkey : wr->remote_qkey;
        uint32_t bad = length > qp->mtu ? TV_WC_LOC_LEN_ERR /* over the MTU */
                       : (w->ud_qpn == 0 || (w->ud_qpn & 0xff) != 0)
                           ? TV_WC_LOC_QP_OP_ERR /* no UD QP's number: no port to go to */
                           : 0;
        if (w->fault.status == 0 && bad != 0) {
            tv_work_unpin(qp, w);
            w->fault.status = bad;
        }
    }
    atomic_fetch_add(&qp->sq_slots, 1);
    if (state == TV_QPS_ERR) {
        tv_qp_complete_send(qp, w, TV_WC_WR_FLUSH_ERR); /* the slot is never published */
        return;
    }
    tv_ring_produce(qp->sq);
}

void tv_qp_post_recv(tv_qp *qp, uint64_t wr_id, const tv_sge_in *sge, uint32_t num_sge,
                     uint32_t sg_len, tv_post_result *res) {
    *res = (tv_post_result){0};
    int state = atomic_load(&qp->state);
    if (qp->setup_failed) {
        res->fault = TV_FAULT_SETUP_FAILED;
        return;
    }
    if (state == TV_QPS_RESET) {
        *res = (tv_post_result){TV_FAULT_BAD_STATE, (uint64_t)state, 0};
        return;
    }
    if (num_sge > qp->max_recv_sge) {
        *res = (tv_post_result){TV_FAULT_TOO_MANY_SGE, num_sge, qp->max_recv_sge};
        return;
    }
    if (num_sge > sg_len) {
        *res = (tv_post_result){TV_FAULT_SGE_COUNT, num_sge, sg_len};
        return;
    }
    if (tv_qp_slots_used(qp, 0) >= qp->max_recv_wr) {
        *res = (tv_post_result){TV_FAULT_QUEUE_FULL, 0, qp->max_recv_wr};
        return;
    }
    tv_work *w = tv_ring_produce_slot(qp->rq);
    if (w == NULL) {
        *res = (tv_post_result){TV_FAULT_QUEUE_FULL, 0, qp->max_recv_wr};
        return;
    }
    tv_work_init_recv(&qp->engine->mem, qp->pd, w, wr_id, sge, num_sge);
    atomic_fetch_add(&qp->rq_slots, 1);
    if (state == TV_QPS_ERR) {
        tv_qp_complete_recv(qp, w, TV_WC_WR_FLUSH_ERR, 0);
        return;
    }
    tv_ring_produce(qp->rq);
}

/* Push posted sends onto the wire.  QP lock held. */
static void push_sends(tv_qp *qp) {
    if (qp->conn.fd < 0 || qp->conn.closed)
        return;
    if (qp->wire == TV_WIRE_RC)
        tv_rcconn_pump(qp);
    else if (qp->wire == TV_WIRE_UD)
        tv_ud_pump(qp);
    else if (atomic_load(&qp->state) == TV_QPS_RTS)
        tv_stream_pump(qp);
}

void tv_qp_posted(tv_qp *qp, int send) {
    if (send && qp->engine->sq_poll_ns != 0) {
        tv_engine_kick(qp->engine, qp); /* the engine thread pushes them */
        return;
    }
    pthread_mutex_lock(&qp->lock);
    if (send)
        push_sends(qp);
    else if (qp->wire == TV_WIRE_STREAM && qp->conn.fd >= 0 && !qp->conn.closed)
        tv_stream_receive(qp); /* rc receives: nothing to resume (a refused SEND comes
                                  back itself) */
    pthread_mutex_unlock(&qp->lock);
}

void tv_qp_send_deferred_ack(tv_qp *qp) {
    if (pthread_mutex_trylock(&qp->lock) != 0) {
        atomic_store(&qp->engine->acks_deferred, 1); /* busy: the next poll tries again */
        return;
    }
    if (qp->conn.fd >= 0 && !qp->conn.closed && qp->wire == TV_WIRE_RC)
        tv_rcconn_send_deferred_ack(qp);
    pthread_mutex_unlock(&qp->lock);
}

void tv_qp_push_kicked(tv_qp *qp) {
    if (!atomic_exchange(&qp->sq_kicked, 0))
        return;
    pthread_mutex_lock(&qp->lock);
    push_sends(qp);
    pthread_mutex_unlock(&qp->lock);
}

/* -- outcomes ------------------------------------------------------------------------ */

void tv_qp_complete_send(tv_qp *qp, tv_work *w, uint32_t status) {
    tv_qp_complete_send_vendor(qp, w, status, 0);
}

void tv_qp_complete_send_vendor(tv_qp *qp, tv_work *w, uint32_t status, uint32_t vendor_err) {
    tv_work_unpin(qp, w);
    if (status == TV_WC_SUCCESS && !w->signaled) {
        tv_qp_slot_freed(qp, 1, qp->generation, 1);
        return;
    }
    tv_cqe e = {.wr_id = w->wr_id, .status = status, .opcode = w->wc_opcode,
                .vendor_err = vendor_err,
                .byte_len = status == TV_WC_SUCCESS ? (uint32_t)w->length : 0,
                .qp_num = qp->qp_num, .qp = qp, .generation = qp->generation, .is_send = 1};
    if (tv_cq_push(qp->scq, &e, 0))
        tv_qp_slot_freed(qp, 1, qp->generation, 1);
}

void tv_qp_complete_recv(tv_qp *qp, tv_work *w, uint32_t status, uint32_t byte_len) {
    tv_qp_complete_recv_full(qp, w, status, byte_len, TV_WC_RECV, 0, 0, 0, 0);
}

void tv_qp_complete_recv_full(tv_qp *qp, tv_work *w, uint32_t status, uint32_t byte_len,
                              uint32_t opcode, uint32_t imm, uint32_t wc_flags, int solicited,
                              uint32_t src_qp) {
    tv_work_unpin(qp, w);
    tv_cqe e = {.wr_id = w->wr_id, .status = status, .opcode = opcode, .byte_len = byte_len,
                .qp_num = qp->qp_num, .src_qp = src_qp, .imm_data = imm,
                .wc_flags = wc_flags, .qp = qp, .generation = qp->generation, .is_send = 0};
    if (tv_cq_push(qp->rcq, &e, solicited))
        tv_qp_slot_freed(qp, 0, qp->generation, 1);
}

void tv_qp_slot_freed(tv_qp *qp, int is_send, uint32_t generation, uint32_t count) {
    _Atomic uint64_t *slots = is_send ? &qp->sq_slots : &qp->rq_slots;
    uint64_t word = atomic_load(slots);
    for (;;) {
        if ((uint32_t)(word >> 32) != generation)
            return; /* posted before a RESET that freed it */
        uint32_t used = (uint32_t)word;
        uint64_t fresh = (word & ~(uint64_t)UINT32_MAX) | (used > count ? used - count : 0);
        if (atomic_compare_exchange_weak(slots, &word, fresh))
            return;
    }
}

uint32_t tv_qp_slots_used(tv_qp *qp, int is_send) {
    return (uint32_t)atomic_load(is_send ? &qp->sq_slots : &qp->rq_slots);
}

static int uses(const tv_work *w, const tv_region *region) {
    for (uint32_t i = 0; region != NULL && i < w->nseg; i++)
        if (w->seg[i].region == region)
            return 1;
    return 0;
}

/* Drop the connection (QP lock held): a stream closes at once; rc says goodbye first
 * (the owed ACK, a TERMINATE) when asked to. */
static void close_conn(tv_qp *qp, int goodbye, const char *why) {
    if (qp->conn.fd < 0)
        return;
    if (qp->wire == TV_WIRE_RC)
        tv_rcconn_close(qp, goodbye, why);
    else if (qp->wire == TV_WIRE_UD)
        tv_ud_close(qp);
    else
        tv_conn_close(qp);
}

tv_failure tv_failure_of(int kind, int err, const char *msg) {
    return (tv_failure){.kind = kind, .err = err, .msg = msg,
                        .first_status = TV_WC_WR_FLUSH_ERR, .first_recv_status = 0,
                        .revoked = NULL, .goodbye = 1, .setup = 0, .event = TV_EVENT_QP_FATAL};
}

void tv_qp_fail(tv_qp *qp, int kind, int err, const char *msg) {
    tv_failure f = tv_failure_of(kind, err, msg);
    tv_qp_fail_with(qp, &f);
}

void tv_qp_fail_with(tv_qp *qp, const tv_failure *f) {
    pthread_mutex_lock(&qp->lock);
    int state = atomic_load(&qp->state);
    if (state == TV_QPS_ERR || qp->destroyed) {
        pthread_mutex_unlock(&qp->lock);
        return;
    }
    /* ERR is published before any completion of the failure is queued: a thread that
     * polls an error completion and then looks at the state sees ERR */
    atomic_store(&qp->state, TV_QPS_ERR);
    qp->has_error = 1;
    qp->err_kind = f->kind;
    qp->err_errno = f->err;
    if (f->setup)
        qp->setup_failed = 1;
    char reason[TV_MSG_LEN]; /* f->msg may live in what closing frees */
    snprintf(reason, sizeof reason, "%s", f->msg);
    snprintf(qp->err_msg, sizeof qp->err_msg, "%s", reason);
    if (qp->conn.fd >= 0) {
        if (qp->wire == TV_WIRE_STREAM)
            tv_stream_settle(qp); /* what TCP acknowledged is done, whatever happens */
        close_conn(qp, f->goodbye, reason);
    }
    if (qp->wire == TV_WIRE_RC)
        tv_rcconn_complete_held(qp); /* done before the failure: they succeeded */
    uint32_t status = f->first_status;
    tv_work *w;
    while ((w = head_of(qp->sq)) != NULL) {
        uint32_t st = uses(w, f->revoked) ? TV_WC_LOC_PROT_ERR
                      : w->override ? w->override /* the one a peer's TERMINATE named */
                                    : status;
        tv_qp_complete_send(qp, w, st);
        tv_ring_consume(qp->sq);
        status = TV_WC_WR_FLUSH_ERR;
    }
    status = f->first_recv_status ? f->first_recv_status : TV_WC_WR_FLUSH_ERR;
    while ((w = head_of(qp->rq)) != NULL) {
        tv_qp_complete_recv(qp, w, uses(w, f->revoked) ? TV_WC_LOC_PROT_ERR : status, 0);
        tv_ring_consume(qp->rq);
        status = TV_WC_WR_FLUSH_ERR;
    }
    uint64_t handle = qp->handle;
    int with_srq = qp->srq != NULL;
    pthread_mutex_unlock(&qp->lock);
    tv_engine_event(qp->engine, f->event, handle, reason);
    if (with_srq) /* it takes none of the SRQ's WRs any more */
        tv_engine_event(qp->engine, TV_EVENT_QP_LAST_WQE_REACHED, handle, "the QP is in ERR");
}

void tv_qp_revoke(tv_qp *qp, const tv_region *region) {
    pthread_mutex_lock(&qp->lock); /* waits out a placement into it under way */
    int state = atomic_load(&qp->state);
    if (state != TV_QPS_ERR && !qp->destroyed && qp->conn.rc != NULL &&
        tv_rcconn_uses(qp, region)) {
        /* remote access to it ends at once: a WRITE landing there, a READ answer */
        char msg[TV_MSG_LEN];
        snprintf(msg, sizeof msg, "MR 0x%08x was deregistered while the peer used it",
                 region->key);
        tv_rcconn_refuse_gone(qp, msg);
    }
    state = atomic_load(&qp->state);
    if (state != TV_QPS_ERR && !qp->destroyed) {
        tv_ring *rings[2] = {qp->sq, qp->rq};
        for (int r = 0; r < 2; r++) {
            tv_work *w;
            for (uint32_t i = 0; (w = tv_ring_peek(rings[r], i)) != NULL; i++) {
                if (!uses(w, region))
                    continue;
                char msg[TV_MSG_LEN];
                snprintf(msg, sizeof msg,
                         "MR 0x%08x was deregistered while work request %" PRIu64 " used it",
                         region->key, w->wr_id);
                tv_failure f = tv_failure_of(TV_ERR_PLAIN, EFAULT, msg);
                f.revoked = region;
                tv_qp_fail_with(qp, &f);
                pthread_mutex_unlock(&qp->lock);
                return;
            }
        }
    }
    pthread_mutex_unlock(&qp->lock);
}

void tv_work_check_again(tv_memtable *mem, uint64_t pd, tv_work *w, const tv_region *old) {
    for (uint32_t i = 0; i < w->nseg; i++) {
        tv_seg *seg = &w->seg[i];
        if (seg->region != old)
            continue;
        tv_region *pin = NULL;
        uint64_t addr = (uint64_t)(uintptr_t)seg->base, length = seg->length;
        int status = tv_mem_check(mem, old->key, pd, addr, length, TV_LOCAL_WRITE, &pin);
        tv_mem_unpin(mem, seg->region);
        seg->region = pin; /* NULL when refused */
        if (status != TV_MEM_OK) {
            tv_work_unpin_in(mem, w);
            w->fault = (tv_work_fault){TV_WC_LOC_PROT_ERR, (uint32_t)status, i, old->key, addr,
                                       length};
            return;
        }
    }
}

void tv_qp_reregistered(tv_qp *qp, const tv_region *old) {
    pthread_mutex_lock(&qp->lock); /* waits out a placement under way */
    int busy = 0;
    int state = atomic_load(&qp->state);
    if (state != TV_QPS_ERR && !qp->destroyed) {
        tv_work *w;
        for (uint32_t i = 0; !busy && (w = tv_ring_peek(qp->sq, i)) != NULL; i++)
            busy = uses(w, old);
        if (qp->conn.rc != NULL && !busy) {
            w = head_of(qp->rq);
            busy = tv_rcconn_uses(qp, old) ||
                   (w != NULL && tv_rcconn_placing_recv(qp) && uses(w, old));
        }
        for (uint32_t i = 0; !busy && (w = tv_ring_peek(qp->rq, i)) != NULL; i++)
            if (w->fault.status == 0 && uses(w, old))
                tv_work_check_again(&qp->engine->mem, qp->pd, w, old);
    }
    pthread_mutex_unlock(&qp->lock);
    if (busy)
        tv_qp_revoke(qp, old); /* checks again under the lock */
}

/* -- control ------------------------------------------------------------------------- */

int tv_qp_modify(tv_qp *qp, int expect, int state, const tv_params *params) {
    pthread_mutex_lock(&qp->lock);
    int ok = atomic_load(&qp->state) == expect && !qp->destroyed;
    if (ok) {
        qp->params = *params;
        atomic_store(&qp->state, state);
        if (state == TV_QPS_RTS && qp->conn.fd >= 0 && !qp->conn.closed) {
            if (qp->wire == TV_WIRE_RC) {
                tv_rcconn_entered_rts(qp);
                tv_rcconn_pump(qp);
            } else if (qp->wire == TV_WIRE_UD) {
                tv_ud_pump(qp);
            } else {
                tv_stream_pump(qp);
            }
        }
    }
    pthread_mutex_unlock(&qp->lock);
    return ok;
}

int tv_qp_attach(tv_qp *qp, int fd, const uint8_t *peer_hello, uint64_t hello_timeout_ns,
                 uint32_t tx_backlog, uint64_t zerocopy_min) {
    pthread_mutex_lock(&qp->lock);
    int state = atomic_load(&qp->state);
    int ok = (state == TV_QPS_RTR || state == TV_QPS_RTS) && qp->conn.fd < 0 &&
             !qp->destroyed && !atomic_load(&qp->engine->closing);
    if (ok) {
        tv_rcconn_free(qp); /* a connection before a RESET */
        memset(&qp->conn, 0, sizeof qp->conn);
        qp->conn.fd = fd;
        if (qp->wire == TV_WIRE_RC) {
            if (tv_rcconn_start(qp, peer_hello, hello_timeout_ns, tx_backlog, zerocopy_min) !=
                0)
                ok = -1; /* no memory for it: the QP failed, the socket is closed */
        } else if (qp->wire == TV_WIRE_UD) {
            if (tv_ud_start(qp) != 0)
                ok = -1; /* the QP failed, the socket is closed */
        } else {
            tv_stream_start(qp);
        }
        if (qp->conn.fd < 0) /* the engine could not watch it: closed, QP in ERR */
            ok = -1;
    }
    pthread_mutex_unlock(&qp->lock);
    return ok;
}

/* Drop queued work without completions (RESET, destroy). QP lock held. */
static void drop_work(tv_qp *qp) {
    tv_work *w;
    while ((w = head_of(qp->sq)) != NULL) {
        tv_work_unpin(qp, w);
        tv_ring_consume(qp->sq);
    }
    while ((w = head_of(qp->rq)) != NULL) {
        tv_work_unpin(qp, w);
        tv_ring_consume(qp->rq);
    }
}

void tv_qp_reset(tv_qp *qp) {
    pthread_mutex_lock(&qp->lock);
    close_conn(qp, 0, "");
    tv_rcconn_free(qp);
    drop_work(qp);
    qp->generation++;
    atomic_store(&qp->sq_slots, (uint64_t)qp->generation << 32);
    atomic_store(&qp->rq_slots, (uint64_t)qp->generation << 32);
    tv_cq_discard_qp(qp->scq, qp);
    if (qp->rcq != qp->scq)
        tv_cq_discard_qp(qp->rcq, qp);
    qp->has_error = 0;
    qp->setup_failed = 0;
    memset(&qp->params, 0, sizeof qp->params);
    atomic_store(&qp->state, TV_QPS_RESET);
    pthread_mutex_unlock(&qp->lock);
}

void tv_qp_destroy(tv_qp *qp) {
    pthread_mutex_lock(&qp->lock);
    if (qp->destroyed) {
        pthread_mutex_unlock(&qp->lock);
        return;
    }
    qp->destroyed = 1;
    close_conn(qp, 0, "");
    drop_work(qp);
    pthread_mutex_unlock(&qp->lock);
    tv_cq_remove_qp(qp->scq, qp);
    tv_cq_remove_qp(qp->rcq, qp);
    tv_engine_remove_qp(qp->engine, qp);
}

/* -- scheduling ----------------------------------------------------------------------- */

/* The application's progress on its own thread (QP lock held). */
static void app_progress(tv_qp *qp) {
    atomic_store(&qp->app_polled, tv_now());
    if (qp->conn.fd >= 0 && !qp->conn.closed) {
        if (qp->wire == TV_WIRE_RC)
            tv_rcconn_progress(qp);
        else if (qp->wire == TV_WIRE_UD)
            tv_ud_progress(qp);
        else
            tv_stream_progress(qp);
    }
}

void tv_qp_progress(tv_qp *qp) {
    if (pthread_mutex_trylock(&qp->lock) != 0)
        return; /* the engine thread is at it */
    app_progress(qp);
    pthread_mutex_unlock(&qp->lock);
}

void tv_qp_app_blocking(tv_qp *qp, int lazy) {
    pthread_mutex_lock(&qp->lock);
    atomic_store(&qp->app_polled, 0);
    if (lazy && tv_conn_waited_lately(qp, tv_now())) {
        /* it will likely sleep on the socket again at once; the park timer hands the
           reading to the engine thread otherwise */
    } else if (qp->conn.fd >= 0 && !qp->conn.closed && tv_conn_unpark(qp)) {
        if (qp->wire == TV_WIRE_RC) /* whatever arrived meanwhile */
            tv_rcconn_receive(qp);
        else if (qp->wire == TV_WIRE_UD)
            tv_ud_receive(qp);
        else
            tv_stream_receive(qp);
    }
    pthread_mutex_unlock(&qp->lock);
}

static int reading(const tv_qp *qp) {
    return qp->conn.fd >= 0 && !qp->conn.closed && qp->conn.watched && qp->conn.want_read;
}

int tv_qp_direct_begin(tv_qp *qp) {
    int fd = -1;
    pthread_mutex_lock(&qp->lock);
    if (reading(qp)) {
        fd = qp->conn.fd;
        qp->app_waiting++;
        tv_conn_park_for_waiter(qp);
    }
    pthread_mutex_unlock(&qp->lock);
    return fd;
}

int tv_qp_direct_ready(tv_qp *qp, int fd) {
    pthread_mutex_lock(&qp->lock);
    int keep = reading(qp) && qp->conn.fd == fd; /* not a later socket on the same number */
    if (keep) {
        app_progress(qp);
        keep = reading(qp) && qp->conn.fd == fd;
    }
    pthread_mutex_unlock(&qp->lock);
    return keep;
}

void tv_qp_direct_end(tv_qp *qp) {
    pthread_mutex_lock(&qp->lock);
    if (--qp->app_waiting == 0 && qp->conn.fd >= 0 && !qp->conn.closed)
        tv_conn_waiter_left(qp, tv_now());
    pthread_mutex_unlock(&qp->lock);
}

void tv_qp_on_events(tv_qp *qp, uint32_t events) {
    pthread_mutex_lock(&qp->lock);
    if (qp->conn.fd >= 0 && !qp->conn.closed && qp->conn.watched) {
        if (qp->wire == TV_WIRE_RC)
            tv_rcconn_on_events(qp, events);
        else if (qp->wire == TV_WIRE_UD)
            tv_ud_on_events(qp, events);
        else
            tv_stream_on_events(qp, events);
    }
    pthread_mutex_unlock(&qp->lock);
}

void tv_qp_on_timer(tv_qp *qp, uint64_t now) {
    pthread_mutex_lock(&qp->lock);
    if (qp->conn.fd >= 0 && !qp->conn.closed && qp->wire == TV_WIRE_RC)
        tv_rcconn_on_timer(qp, now);
    else if (qp->conn.fd >= 0 && !qp->conn.closed && qp->wire == TV_WIRE_UD)
        tv_ud_on_timer(qp, now);
    else if (qp->conn.fd >= 0 && !qp->conn.closed)
        tv_stream_on_timer(qp, now);
    else
        atomic_store(&qp->deadline, 0);
    pthread_mutex_unlock(&qp->lock);
}

void tv_qp_set_timer(tv_qp *qp) {
    const tv_conn *c = &qp->conn;
    uint64_t d = 0;
    const uint64_t timers[4] = {c->ack_at, c->watch_at, c->park_at, c->rc_at};
    for (int i = 0; i < 4; i++)
        if (timers[i] != 0 && (d == 0 || timers[i] < d))
            d = timers[i];
    uint64_t before = atomic_exchange(&qp->deadline, d);
    if (d != 0 && (before == 0 || d < before))
        tv_engine_timer_changed(qp->engine, d);
}
