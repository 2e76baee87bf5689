/* The native engine's objects: the context (tv_engine), completion queues and channels
 * (tv_cq, tv_channel) and queue pairs (tv_qp) -- the C twin of tcpverbs/engine/py, behind
 * the same contract (tcpverbs/engine/api.py says what crosses it; this header says how
 * the C side is put together).
 *
 * Files, one concern each: engine.c (the context: memory table, engine thread, epoll,
 * timers, SQ polling, the event queue), cq.c (completions, channels), wait.c (how
 * application threads sleep), qp.c
 * (queues, the checks at post time, outcomes, the error flush, revocation), conn.c (what
 * both wires share), stream.c (the stream wire mode), rcconn.c (the rc wire mode),
 * zerocopy.c (MSG_ZEROCOPY bookkeeping), srq.c (shared receive queues).  py_engine.c and
 * py_srq.c are the CPython binding; nothing here touches Python.
 *
 * Threads.  Application threads call in through the binding (post, poll, wait, control);
 * one engine thread per context (started at the first attach) runs without the GIL:
 * epoll on the connected sockets, the timers, and whatever progress the application is
 * not calling in for.  No engine code ever needs the GIL, so the binding may release it
 * around anything here.
 *
 * Locks, outermost first: a CQ's `qps_lock` (its list of QPs, for inline progress), a
 * QP's `lock`, an SRQ's `lock` (a QP takes a receive from it), the engine's `lock` (the
 * watch list) and `events_lock`, a CQ's `lock`
 * (its entries), a channel's `lock`, the memory table's lock.  Never the other way round:
 * the engine thread takes the engine lock only to read the watch list and lets go before
 * it takes a QP lock; poll collects completions under the CQ lock and gives their queue
 * slots back under the QP lock after letting go of it.
 *
 * Lifetime.  QPs, CQs and channels are reference counted (`refs`, atomic): the binding's
 * object holds one, a QP holds its CQs, a CQ its channel, every unpolled completion its
 * QP, the engine's watch list each watched QP.  A watched QP leaving the list goes to the
 * `retired` list first, and the engine thread drops those references between two batches
 * of epoll events -- so a pointer it got from epoll_wait stays valid for the whole batch.
 * Memory: every segment of queued work pins its region (memtable.h) until the WR
 * completes; deregistration revokes the work that holds pins (qp.c) before it waits.
 */
#ifndef TCPVERBS_NATIVE_ENGINE_H
#define TCPVERBS_NATIVE_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/uio.h>

#include "memtable.h"
#include "ring.h"

/* -- the verbs numbers the engine uses (libibverbs' enums) ----------------------------- */
enum tv_qp_state { TV_QPS_RESET = 0, TV_QPS_INIT = 1, TV_QPS_RTR = 2, TV_QPS_RTS = 3,
                   TV_QPS_ERR = 6 };
enum tv_wc_status { TV_WC_SUCCESS = 0, TV_WC_LOC_LEN_ERR = 1, TV_WC_LOC_QP_OP_ERR = 2,
                    TV_WC_LOC_PROT_ERR = 4, TV_WC_WR_FLUSH_ERR = 5, TV_WC_RETRY_EXC_ERR = 12,
                    TV_WC_GENERAL_ERR = 21 };
enum tv_wc_opcode { TV_WC_SEND = 0, TV_WC_RDMA_WRITE = 1, TV_WC_RDMA_READ = 2,
                    TV_WC_COMP_SWAP = 3, TV_WC_FETCH_ADD = 4, TV_WC_RECV = 128 };
enum tv_wr_opcode { TV_WR_RDMA_WRITE = 0, TV_WR_RDMA_WRITE_WITH_IMM = 1, TV_WR_SEND = 2,
                    TV_WR_SEND_WITH_IMM = 3, TV_WR_RDMA_READ = 4,
                    TV_WR_ATOMIC_CMP_AND_SWP = 5, TV_WR_ATOMIC_FETCH_AND_ADD = 6 };
enum tv_send_flags { TV_SEND_FENCE = 1, TV_SEND_SIGNALED = 2, TV_SEND_SOLICITED = 4,
                     TV_SEND_INLINE = 8 };
enum tv_event_type { TV_EVENT_CQ_ERR = 0, TV_EVENT_QP_FATAL = 1,
                     TV_EVENT_SRQ_LIMIT_REACHED = 15, TV_EVENT_QP_LAST_WQE_REACHED = 16 };

/* tcpverbs.engine.api.PostFault */
enum tv_post_fault { TV_FAULT_NONE = 0, TV_FAULT_SETUP_FAILED = 1, TV_FAULT_BAD_STATE = 2,
                     TV_FAULT_BAD_OPCODE = 3, TV_FAULT_TOO_MANY_SGE = 4,
                     TV_FAULT_SGE_COUNT = 5, TV_FAULT_INLINE_TOO_LONG = 6,
                     TV_FAULT_NOT_INLINABLE = 7, TV_FAULT_ATOMIC_SHAPE = 8,
                     TV_FAULT_QUEUE_FULL = 9, TV_FAULT_BAD_FIELD = 10 };
/* TV_FAULT_BAD_FIELD's value: which field of a UD send (its limit: the field's bits) */
enum tv_bad_field { TV_FIELD_AH = 1, TV_FIELD_REMOTE_QPN = 2 };

/* Which Python exception a QP's error is (tcpverbs.errors). */
enum tv_error_kind { TV_ERR_PLAIN = 0, TV_ERR_BROKEN = 1, TV_ERR_PROTOCOL = 2 };

enum tv_wire { TV_WIRE_STREAM = 1, TV_WIRE_RC = 2, TV_WIRE_UD = 3 };

enum { TV_MAX_SGE = 32, TV_MSG_LEN = 256, TV_MAX_MSG_SZ = 1u << 31, TV_CHANNEL_CQS = 4 };

/* Counters (statistics()): names in the *_stat_names arrays, same order. */
enum tv_cq_stat { TV_CQ_POLLS, TV_CQ_POLLS_EMPTY, TV_CQ_YIELDS, TV_CQ_COMPLETIONS,
                  TV_CQ_OVERRUNS, TV_CQ_SLEEPS, TV_CQ_EVENT_WRITES, TV_CQ_NSTATS };
enum tv_qp_stat { TV_QP_WRS_SENT, TV_QP_WRS_RECEIVED, TV_QP_BYTES_SENT,
                  TV_QP_BYTES_RECEIVED, TV_QP_SENDMSG_CALLS, TV_QP_RECV_CALLS,
                  TV_QP_RECV_EMPTY, TV_QP_ACK_CHECKS, TV_QP_FRAMES_SENT,
                  TV_QP_FRAMES_RECEIVED, TV_QP_RNR_NAKS_SENT, TV_QP_RNR_NAKS_RECEIVED,
                  TV_QP_REMOTE_OPS, TV_QP_ZC_SENDS, TV_QP_ZC_RELEASED, TV_QP_ZC_COPIED,
                  TV_QP_ZC_DISABLED, TV_QP_UD_DROPPED, TV_QP_QKEY_VIOLATIONS,
                  TV_QP_UD_SEND_ERRORS, TV_QP_NSTATS };
enum tv_engine_stat { TV_ENG_WAKEUPS, TV_ENG_EPOLL_CTL, TV_ENG_WAKE_WRITES, TV_ENG_TIMERS,
                      TV_ENG_SQ_PUSHES, TV_ENG_NSTATS };

typedef struct tv_engine tv_engine;
typedef struct tv_cq tv_cq;
typedef struct tv_channel tv_channel;
typedef struct tv_qp tv_qp;
typedef struct tv_srq tv_srq;

/* -- work, as queued in a QP's rings ------------------------------------------------- */

/* A local segment: resolved memory, pinned (region NULL: the slot's own inline copy). */
typedef struct tv_seg {
    unsigned char *base;
    uint64_t length;
    tv_region *region;
} tv_seg;

/* Why a WR's memory did not check out at post time: its completion says LOC_PROT_ERR
 * (LOC_LEN_ERR for a message over max_msg_sz) and the QP's error words it. */
typedef struct tv_work_fault {
    uint32_t status;  /* 0: none */
    uint32_t mem;     /* enum tv_mem_status */
    uint32_t sge;     /* which SGE */
    uint32_t lkey;
    uint64_t addr;
    uint64_t length;
} tv_work_fault;

/* One slot of the send or receive ring; `seg` has the QP's max SGE entries, and a send
 * slot is followed by max_inline_data bytes for an inline copy. */
typedef struct tv_work {
    uint64_t wr_id;
    uint64_t length;   /* bytes of the message */
    uint64_t seq;      /* stream: offset in the stream just past this WR */
    uint32_t opcode;   /* ibv_wr_opcode (send) */
    uint32_t wc_opcode;
    uint32_t imm;
    uint32_t rkey;
    uint64_t remote_addr;
    uint64_t compare_add;
    uint64_t swap;
    uint8_t signaled;
    uint8_t solicited;
    uint8_t fence;
    uint8_t needs_response;  /* READ or atomic: completes on its answer */
    uint32_t nseg;
    uint32_t rnr_tries;      /* rc: RNR NAKs it drew so far */
    uint32_t tx_refs;        /* rc: pieces of its frames still on the transmit queue */
    uint32_t done_status;    /* rc: its outcome, while it waits for zerocopy releases */
    uint64_t zc_mark;        /* rc: it may complete once this many zerocopy calls are
                                released (0: none carried its bytes) */
    uint32_t override;       /* rc: the status a peer's TERMINATE gave it (flushes use it) */
    uint32_t hdr_len;        /* rc: its request header, encoded when it is issued */
    uint8_t hdr[40];
    tv_work_fault fault;
    /* ud: the destination (an IPv6 or IPv4-mapped address), QP number and Q_Key; set by a
     * UD send's post and read by udconn.c only (posts clear the slot up to here) */
    uint8_t ud_gid[16];
    uint32_t ud_qpn, ud_qkey;
    tv_seg seg[];
} tv_work;

/* -- completions ---------------------------------------------------------------------- */

/* The first nine fields are tcpverbs.WC's, in order; the rest say whose slot to free. */
typedef struct tv_cqe {
    uint64_t wr_id;
    uint32_t status;
    uint32_t opcode;
    uint32_t vendor_err;
    uint32_t byte_len;
    uint32_t qp_num;
    uint32_t src_qp;
    uint32_t imm_data;
    uint32_t wc_flags;
    tv_qp *qp;          /* holds a reference until polled */
    uint32_t generation;
    uint32_t is_send;
} tv_cqe;

struct tv_channel {
    _Atomic int refs;
    pthread_mutex_t lock;
    int fd;              /* eventfd: readable while an event is queued */
    uint64_t *events;    /* CQ handles, oldest first (a growing circular array) */
    uint32_t head, len, cap;
    int closed;
    int signalled;       /* the eventfd was written and not read since */
    /* its CQs (weak: a CQ leaves in tv_cq_destroy), for a sleeper that reads their QPs'
     * sockets itself (wait.c); past TV_CHANNEL_CQS only counted, and sleepers sleep on
     * the eventfd alone */
    tv_cq *cqs[TV_CHANNEL_CQS];
    uint32_t ncqs, untracked;
};

struct tv_cq {
    _Atomic int refs;
    tv_engine *engine;
    uint64_t handle;
    uint32_t cqe;
    pthread_mutex_t lock;    /* entries, arming, sleepers */
    pthread_cond_t wakeup;
    tv_ring *ring;           /* of tv_cqe */
    void *ring_mem;
    _Atomic uint32_t lost;   /* completions that did not fit, not yet reported */
    _Atomic int closed;
    int armed, solicited_only, sleepers;
    /* threads of CQ.wait sleeping on its QPs' sockets (wait.c): a push writes `wake_fd`
     * (an eventfd made on first use, -1 before) unless `wake_signalled` says it did */
    int socket_sleepers, wake_fd, wake_signalled;
    tv_channel *channel;
    pthread_mutex_t qps_lock;
    tv_qp **qps;             /* the QPs completing here (inline progress); weak */
    uint32_t nqps, capqps;
    _Atomic uint64_t stats[TV_CQ_NSTATS];
};
extern const char *const tv_cq_stat_names[TV_CQ_NSTATS];

/* -- queue pairs ---------------------------------------------------------------------- */

typedef struct tv_params { /* tcpverbs.engine.api.QPParams: what an engine uses */
    uint32_t access_flags, max_rd_atomic, max_dest_rd_atomic, rnr_retry, min_rnr_timer;
    uint32_t timeout, retry_cnt, dest_qp_num, rq_psn, sq_psn;
    uint32_t qkey; /* ud */
} tv_params;

/* A QP's connection (stream wire mode), alive from attach until ERR or RESET. */
typedef struct tv_conn {
    int fd;                 /* -1: none */
    int closed;
    int watched;            /* in the engine's epoll set (a held stream is not) */
    int want_read, want_write, reads_parked;
    uint32_t events;        /* what epoll has for it */
    int pending_error;      /* errno of a failed socket whose data is still read */
    int ended;              /* the peer's EOF: the receive side is over */
    uint32_t wire_count;    /* send WRs handed to the wire (oldest at the ring's head) */
    uint32_t tx_index;      /* the WR holding the next byte to write, from the head */
    uint64_t tx_off;        /* ... and how much of it is written */
    uint64_t queued;        /* stream offset just past the last WR handed to the wire */
    uint64_t sent;          /* bytes written to this connection */
    uint64_t looked;        /* ns of the last look at acknowledgements (SIOCOUTQ) */
    uint32_t recv_batch;    /* receives the next recvmsg fills at most (grows while full) */
    uint64_t ack_at, ack_delay, watch_at, busy_since, park_at, park_wait; /* ns */
    uint64_t rc_at;         /* rc: its next timer (hello, RNR wait, resume, drain) */
    struct tv_rcconn *rc;       /* rc: the protocol's state (rc.c); NULL for stream */
    uint8_t *ud_scratch;        /* ud: one datagram, header and MTU (udconn.c) */
    int ud_family;              /* ud: the socket's address family */
} tv_conn;

struct tv_qp {
    _Atomic int refs;
    pthread_mutex_t lock;
    tv_engine *engine;
    uint64_t handle;
    uint32_t qp_num;
    uint64_t pd;
    uint32_t max_send_wr, max_recv_wr, max_send_sge, max_recv_sge, max_inline;
    int sq_sig_all;
    int wire;
    uint32_t mtu; /* ud: the largest message */
    tv_cq *scq, *rcq;
    tv_srq *srq;                 /* where its receives come from (a reference), or NULL */
    _Atomic int state;
    tv_params params;
    tv_ring *sq, *rq;
    void *sq_mem, *rq_mem;
    /* queue slots taken until the completion is polled: (generation << 32) | count, so
     * that a poll gives slots back without the QP's lock and a RESET (which bumps the
     * generation under the lock) makes later give-backs of older completions no-ops */
    _Atomic uint64_t sq_slots, rq_slots;
    uint32_t generation;         /* bumped by RESET (the same as in the slot words) */
    int destroyed, setup_failed;
    int has_error, err_kind, err_errno;
    char err_msg[TV_MSG_LEN];
    tv_conn conn;
    _Atomic uint64_t deadline;   /* the conn's next timer (ns), 0: none; read unlocked */
    _Atomic uint64_t app_polled; /* ns of the application's last empty poll, 0: blocking */
    _Atomic int sq_kicked;       /* SQ polling: sends posted for the engine thread to push */
    _Atomic int ack_deferred;    /* rc: an ACK waits for the application's next move */
    int app_waiting;             /* threads sleeping on its socket themselves (wait.c);
                                    under `lock` */
    uint64_t waited_at;          /* ns the last of them left (under `lock`) */
    uint64_t stats[TV_QP_NSTATS]; /* guarded by `lock` */
};
extern const char *const tv_qp_stat_names[TV_QP_NSTATS];

/* -- the context ---------------------------------------------------------------------- */

typedef struct tv_event {
    struct tv_event *next;
    uint32_t type;
    uint64_t handle;
    char reason[TV_MSG_LEN];
} tv_event;

struct tv_engine {
    pthread_mutex_t lock;      /* the lists below */
    tv_memtable mem;
    int epfd, doorbell;        /* epoll set; eventfd that wakes the engine thread */
    pthread_t thread;
    int thread_started;
    _Atomic int closing;
    _Atomic uint64_t sleep_until; /* ns the engine thread sleeps until (0: awake) */
    /* SQ polling (0: off): posted sends are pushed by the engine thread, which spins this
     * long after its last push before it sleeps; `sq_kicks` counts the posts it serves */
    uint64_t sq_poll_ns;
    _Atomic uint64_t sq_kicks;
    _Atomic int acks_deferred;  /* some watched QP may hold a deferred ACK (a hint) */
    tv_qp **watch;             /* QPs with a live connection (a reference each) */
    uint32_t nwatch, capwatch;
    tv_qp **retired;           /* references the engine thread drops between batches */
    uint32_t nretired, capretired;
    tv_qp **qps;               /* every QP not destroyed (weak): dereg revokes from them */
    tv_srq **srqs;             /* every SRQ not destroyed (weak): and from them */
    uint32_t nsrqs, capsrqs;
    struct tv_drainer *drainers; /* closing sockets read until the peer's FIN */
    uint32_t nqps, capqps;
    pthread_mutex_t events_lock;
    pthread_cond_t events_cond;
    tv_event *events_head, *events_tail;
    _Atomic uint64_t stats[TV_ENG_NSTATS];
    uint64_t retired_qp_stats[TV_QP_NSTATS]; /* counters of destroyed QPs and CQs */
    uint64_t retired_cq_stats[TV_CQ_NSTATS];
};
extern const char *const tv_engine_stat_names[TV_ENG_NSTATS];

uint64_t tv_now(void); /* CLOCK_MONOTONIC in ns */
void tv_cond_init_monotonic(pthread_cond_t *cond); /* timed waits on tv_now's clock */
/* A growing array of QP pointers (engine and CQ lists; the caller's lock): append (0 or
 * ENOMEM), and remove without keeping the order (1 if it was there). */
int tv_qps_push(tv_qp ***arr, uint32_t *n, uint32_t *cap, tv_qp *qp);
int tv_qps_drop(tv_qp **arr, uint32_t *n, const tv_qp *qp);

/* engine.c */
int tv_engine_init(tv_engine *e, uint64_t sq_poll_ns); /* 0 or an errno */
void tv_engine_close(tv_engine *e);       /* stops and joins the thread */
void tv_engine_free(tv_engine *e);        /* after close, once nothing uses it */
int tv_engine_watch(tv_engine *e, tv_qp *qp, uint32_t events); /* QP lock held */
int tv_engine_rewatch(tv_engine *e, tv_qp *qp, uint32_t events);
void tv_engine_unwatch(tv_engine *e, tv_qp *qp);
void tv_engine_timer_changed(tv_engine *e, uint64_t deadline);
/* SQ polling: `qp` has posted sends for the engine thread (rings the doorbell if it sleeps) */
void tv_engine_kick(tv_engine *e, tv_qp *qp);
/* An application's empty poll of `polled`: the ACKs rc QPs of other CQs deferred go now
 * (they waited for the application's next move, and this is it; the polled CQ's own QPs
 * send theirs as they read).  No lock held. */
void tv_engine_send_deferred_acks(tv_engine *e, const tv_cq *polled);
void tv_engine_event(tv_engine *e, uint32_t type, uint64_t handle, const char *reason);
/* Take a half-closed socket: read and discard until the peer's FIN (or TV_DRAIN_NS),
 * then close it.  Without the engine thread, or memory, it is closed at once. */
void tv_engine_drain(tv_engine *e, int fd);
/* The oldest event (caller frees it), waiting up to timeout_ns (<0: for ever). */
tv_event *tv_engine_next_event(tv_engine *e, int64_t timeout_ns);
int tv_engine_add_qp(tv_engine *e, tv_qp *qp);
void tv_engine_remove_qp(tv_engine *e, tv_qp *qp);
/* Deregister `key`: revoke the work using it, then wait out pins; its owner or NULL. */
void *tv_engine_dereg(tv_engine *e, uint32_t key);
/* Register `key` anew in place of what it was (ibv_rereg_mr): TV_MEM_OK or why not (the
 * key is then deregistered).  Receive WRs not yet started that used the old region are
 * checked against the new one (tv_qp_reregistered); the old region's owner, once no pin
 * is left, goes to *old_owner (NULL if the key was not registered). */
int tv_engine_rereg(tv_engine *e, uint32_t key, uint64_t pd, uint64_t addr, uint64_t length,
                    uint32_t access, void *owner, void **old_owner);

/* cq.c */
tv_channel *tv_channel_new(void);          /* NULL with errno set */
void tv_channel_put(tv_channel *ch);
void tv_channel_destroy(tv_channel *ch);
/* The oldest queued event's CQ handle into *handle: 1, or 0 when none is queued; -1
 * once destroyed.  Does not block. */
int tv_channel_take_event(tv_channel *ch, uint64_t *handle);
/* The channel or CQ whose sleeper this thread is, while that sleeper reads (wait.c):
 * what it queues there goes without a signal, as it takes it itself right after. */
extern _Thread_local const void *tv_serving_sleeper;

tv_cq *tv_cq_new(tv_engine *e, uint64_t handle, uint32_t cqe, tv_channel *ch);
void tv_cq_put(tv_cq *cq);
void tv_cq_destroy(tv_cq *cq);
/* Queue a completion (the entry's QP lock held); 1 if it was not queued (an overrun, or
 * the CQ is destroyed): its WR's slot is then the caller's to give back. */
int tv_cq_push(tv_cq *cq, const tv_cqe *entry, int solicited);
/* Up to n completions into out (their slots given back); -1 with *lost set on an
 * overrun (reported once).  Does no progress. */
int tv_cq_take(tv_cq *cq, tv_cqe *out, int n, uint32_t *lost);
/* Progress of the CQ's QPs in this thread (an empty poll); may make system calls. */
void tv_cq_progress(tv_cq *cq);
void tv_cq_app_blocking(tv_cq *cq, int lazy); /* tv_qp_app_blocking for each QP */
void tv_cq_req_notify(tv_cq *cq, int solicited_only);
uint32_t tv_cq_pending(tv_cq *cq);
int tv_cq_add_qp(tv_cq *cq, tv_qp *qp);
void tv_cq_remove_qp(tv_cq *cq, tv_qp *qp);
void tv_cq_discard_qp(tv_cq *cq, tv_qp *qp); /* RESET: its unpolled completions go */

/* wait.c: how application threads sleep.  Both block: call without the GIL. */
/* Spin up to spin_ns, then sleep until a completion or deadline_ns (0: none); returns
 * like tv_cq_take (0: timed out or destroyed). */
int tv_cq_wait(tv_cq *cq, tv_cqe *out, int n, uint32_t *lost, uint64_t spin_ns,
               uint64_t deadline_ns);
/* 1 and *handle when an event was queued, 0 after timeout_ns (<0: for ever) or once
 * destroyed. */
int tv_channel_get_event(tv_channel *ch, int64_t timeout_ns, uint64_t *handle);

/* qp.c */
typedef struct tv_qp_spec {
    uint64_t handle, pd;
    uint32_t qp_num, max_send_wr, max_recv_wr, max_send_sge, max_recv_sge, max_inline;
    int sq_sig_all, wire;
    uint32_t mtu; /* ud */
    tv_srq *srq; /* NULL, or its receives' SRQ (then max_recv_wr/_sge are not used) */
} tv_qp_spec;

/* What the binding reads out of one WR before posting it (sge[] has num_sge entries). */
typedef struct tv_sge_in {
    uint64_t addr;
    uint32_t length, lkey;
} tv_sge_in;
typedef struct tv_send_in {
    uint64_t wr_id, remote_addr, compare_add, swap;
    uint32_t opcode, send_flags, imm, rkey, num_sge, sg_len;
    const tv_sge_in *sge;
    /* ud: the AH's destination and PD (ah_ok 0: no AH of a PD), remote QPN and Q_Key */
    int ah_ok;
    uint64_t ah_pd;
    uint8_t ah_gid[16];
    uint64_t remote_qpn;
    uint32_t remote_qkey;
} tv_send_in;
typedef struct tv_post_result {
    uint32_t fault; /* enum tv_post_fault */
    uint64_t value, limit;
} tv_post_result;

tv_qp *tv_qp_new(tv_engine *e, const tv_qp_spec *spec, tv_cq *scq, tv_cq *rcq);
/* A ring of at least `depth` slots (a power of two) of `slot_size` bytes, in new memory
 * (*mem, for free()); NULL without memory. */
tv_ring *tv_new_ring(uint32_t depth, uint32_t slot_size, void **mem);
uint32_t tv_recv_slot_size(uint32_t max_sge); /* bytes of a receive slot */
void tv_qp_get(tv_qp *qp);
void tv_qp_put(tv_qp *qp);
/* QP lock held for the posts: one WR each (the binding walks the chain). */
void tv_qp_post_send(tv_qp *qp, const tv_send_in *wr, tv_post_result *res);
void tv_qp_post_recv(tv_qp *qp, uint64_t wr_id, const tv_sge_in *sge, uint32_t num_sge,
                     uint32_t sg_len, tv_post_result *res);
void tv_qp_posted(tv_qp *qp, int send); /* after a chain: start what was posted */
void tv_qp_push_kicked(tv_qp *qp);        /* engine thread, SQ polling: push what was */
void tv_qp_send_deferred_ack(tv_qp *qp);  /* try-lock: its deferred rc ACK goes now */
int tv_qp_modify(tv_qp *qp, int expect, int state, const tv_params *params);
/* Take the connected socket `fd` (rc: with the peer's hello when the connection manager
 * read it already, the time to wait for it otherwise, and the smallest payload segment
 * sent with MSG_ZEROCOPY, 0: never): 1 taken, -1 taken but the QP failed at once, 0
 * refused (the fd stays the caller's). */
int tv_qp_attach(tv_qp *qp, int fd, const uint8_t *peer_hello, uint64_t hello_timeout_ns,
                 uint32_t tx_backlog, uint64_t zerocopy_min);
void tv_qp_fail(tv_qp *qp, int kind, int err, const char *msg); /* with a goodbye */
void tv_qp_reset(tv_qp *qp);
void tv_qp_destroy(tv_qp *qp);
/* Give back the slots of `count` polled (or lost) completions; lock-free, any thread. */
void tv_qp_slot_freed(tv_qp *qp, int is_send, uint32_t generation, uint32_t count);
uint32_t tv_qp_slots_used(tv_qp *qp, int is_send);
void tv_qp_revoke(tv_qp *qp, const tv_region *region);
/* `old` was re-registered under its key (the new region is in the table): receive WRs
 * that used it and have not started are checked again -- re-pinned, or left with the
 * LOC_PROT_ERR fault for their turn; work moving data with it, and send WRs using it,
 * are revoked as by tv_qp_revoke. */
void tv_qp_reregistered(tv_qp *qp, const tv_region *old);
void tv_qp_progress(tv_qp *qp);          /* try-lock: an application's empty poll */
/* The application is about to sleep: the engine thread reads from now on -- unless a
 * thread slept on the socket itself just before (wait.c) and `lazy` allows waiting for
 * the park timer, as it will likely do so again at once. */
void tv_qp_app_blocking(tv_qp *qp, int lazy);
/* A thread sleeps on the QP's socket itself (wait.c): begin gives the fd to poll (-1:
 * nothing to read there, no end owed) and parks the engine thread's reads; ready reads
 * what poll found (0: stop polling that fd, the QP is done with it); end hands the
 * reading back to the engine thread. */
int tv_qp_direct_begin(tv_qp *qp);
int tv_qp_direct_ready(tv_qp *qp, int fd);
void tv_qp_direct_end(tv_qp *qp);
void tv_qp_on_events(tv_qp *qp, uint32_t events); /* engine thread */
void tv_qp_on_timer(tv_qp *qp, uint64_t now);     /* engine thread */
/* Outcomes, QP lock held (the transports report through these). */
void tv_qp_complete_send(tv_qp *qp, tv_work *w, uint32_t status);
/* ... with a vendor_err (ud: the errno of a send the kernel refused) */
void tv_qp_complete_send_vendor(tv_qp *qp, tv_work *w, uint32_t status, uint32_t vendor_err);
void tv_qp_complete_recv(tv_qp *qp, tv_work *w, uint32_t status, uint32_t byte_len);
/* src_qp: ud, the sender's QP number (0 for a connected QP's receive) */
void tv_qp_complete_recv_full(tv_qp *qp, tv_work *w, uint32_t status, uint32_t byte_len,
                              uint32_t opcode, uint32_t imm, uint32_t wc_flags, int solicited,
                              uint32_t src_qp);
void tv_qp_set_timer(tv_qp *qp); /* recompute `deadline` from the conn's timers */
void tv_work_unpin(tv_qp *qp, tv_work *w);
void tv_work_unpin_in(tv_memtable *mem, tv_work *w);
void tv_work_fault_text(const tv_work *w, char *out, size_t cap);
/* Resolve and pin the SGEs of w for PD `pd` (nseg set); a fault goes to w->fault, with
 * no pin left.  `inline_buf` (send: room for max_inline bytes) receives an inline copy. */
void tv_work_resolve(tv_memtable *mem, uint64_t pd, tv_work *w, const tv_sge_in *sge,
                     uint32_t n, uint32_t need, unsigned char *inline_buf);
/* A receive WR in slot `w`: its memory resolved and pinned for PD `pd` (a fault is
 * recorded in it, for its turn), its capacity the sum of its SGEs. */
void tv_work_init_recv(tv_memtable *mem, uint64_t pd, tv_work *w, uint64_t wr_id,
                       const tv_sge_in *sge, uint32_t num_sge);
/* w's segments in the re-registered `old`, checked against the key's new region for PD
 * `pd`: re-pinned there, or no pin left and the LOC_PROT_ERR fault recorded. */
void tv_work_check_again(tv_memtable *mem, uint64_t pd, tv_work *w, const tv_region *old);
/* The receive WR the next message lands in (QP lock held): the head of the QP's own
 * ring, else one taken from its SRQ into that ring, else NULL. */
tv_work *tv_qp_next_recv(tv_qp *qp);

/* srq.c: a shared receive queue.  Its ring holds checked, pinned receive WRs; a QP takes
 * the oldest into its own receive ring (tv_qp_next_recv), and from then on it is that
 * QP's.  Ownership: the binding's object holds a reference, and so does each QP using
 * it; the engine lists it (weakly) for deregistration.  Locking: `lock` guards the ring,
 * `max_wr` and `limit`; a QP's lock may be held when it is taken, never the reverse. */
struct tv_srq {
    _Atomic int refs;
    pthread_mutex_t lock;
    tv_engine *engine;
    uint64_t handle, pd;
    uint32_t max_wr, max_sge, limit;
    uint32_t slot_size;
    tv_ring *ring;
    void *ring_mem;
    int destroyed;
};
tv_srq *tv_srq_new(tv_engine *e, uint64_t handle, uint64_t pd, uint32_t max_wr,
                   uint32_t max_sge); /* NULL with errno set */
void tv_srq_get(tv_srq *srq);
void tv_srq_put(tv_srq *srq);
void tv_srq_post_recv(tv_srq *srq, uint64_t wr_id, const tv_sge_in *sge, uint32_t num_sge,
                      uint32_t sg_len, tv_post_result *res);
/* Move the oldest WR into `slot` (a receive slot of `slot_size` bytes, room for
 * TV_MAX_SGE segments): 1, or 0 when it is empty.  Queues the limit event when it leaves
 * fewer than `limit`. */
int tv_srq_take(tv_srq *srq, tv_work *slot, uint32_t slot_size);
/* New max_wr and max_sge (if set_max) and / or limit (if set_limit): 0, EINVAL (max_wr
 * below the WRs it holds, max_sge below what it was) or ENOMEM. */
int tv_srq_modify(tv_srq *srq, int set_max, uint32_t max_wr, uint32_t max_sge, int set_limit,
                  uint32_t limit);
uint32_t tv_srq_count(tv_srq *srq);
void tv_srq_revoke(tv_srq *srq, const tv_region *region);
void tv_srq_reregistered(tv_srq *srq, const tv_region *old);
void tv_srq_destroy(tv_srq *srq); /* its WRs are dropped, without completions */
/* The engine's list of SRQs (for deregistration): 0 or ENOMEM; remove is idempotent. */
int tv_engine_add_srq(tv_engine *e, tv_srq *srq);
void tv_engine_remove_srq(tv_engine *e, tv_srq *srq);

/* How a QP fails (tv_qp_fail_with): tv_failure_of() fills the usual defaults. */
typedef struct tv_failure {
    int kind, err;
    const char *msg;
    uint32_t first_status;     /* the oldest outstanding send WR's status (then flushes) */
    uint32_t first_recv_status; /* the oldest receive's, if not 0 (a fault of its own) */
    const tv_region *revoked;  /* WRs using it complete LOC_PROT_ERR */
    int goodbye;               /* rc: tell the peer (TERMINATE) and close gracefully */
    int setup;                 /* the connection never came up: later posts are refused */
    uint32_t event;            /* ibv_event_type queued */
} tv_failure;
tv_failure tv_failure_of(int kind, int err, const char *msg);
void tv_qp_fail_with(tv_qp *qp, const tv_failure *f);

/* conn.c: what both wire modes share (QP lock held for all). */
enum { TV_RECV_EOF = -1, TV_RECV_FAILED = -2 };
void tv_conn_fail_errno(tv_qp *qp, int err, const char *doing);
void tv_conn_broken(tv_qp *qp, int err, const char *doing); /* unless closed already */
int tv_conn_ioctl(int fd, unsigned long request, int *value); /* 0 or errno */
void tv_conn_set_interest(tv_qp *qp);
int tv_conn_watch(tv_qp *qp);   /* 0, or an errno (the QP failed) */
void tv_conn_unwatch(tv_qp *qp);
void tv_conn_close(tv_qp *qp);
int tv_conn_established(const tv_qp *qp);
uint64_t tv_requester_timeout(const tv_params *p); /* ns; 0: for ever */
void tv_conn_requester_busy(tv_qp *qp);
void tv_conn_watchdog(tv_qp *qp, uint64_t now, int awaiting_peer);
int tv_conn_park_reads(tv_qp *qp, uint64_t now); /* 1: parked, leave the reading */
int tv_conn_park_check(tv_qp *qp, uint64_t now); /* 1: unparked, read now */
int tv_conn_unpark(tv_qp *qp);                   /* 1: it was parked */
void tv_conn_park_for_waiter(tv_qp *qp);         /* a thread reads it itself (wait.c) */
void tv_conn_waiter_left(tv_qp *qp, uint64_t now); /* ... and the last one left */
int tv_conn_waited_lately(const tv_qp *qp, uint64_t now); /* one left within the grace */
/* One sendmsg of iov[0..n) with `flags` added (MSG_ZEROCOPY, or 0): bytes (0 for nothing
 * to send), TV_SEND_FULL (the socket is full: epoll is asked for room), TV_SEND_NOBUFS (a
 * zerocopy call over the pinned-page budget: nothing sent, copy instead), or
 * TV_SEND_FAILED (the QP failed). */
enum { TV_SEND_FULL = -1, TV_SEND_FAILED = -2, TV_SEND_NOBUFS = -3 };
int64_t tv_conn_send(tv_qp *qp, struct iovec *iov, int n_iov, int flags);
/* One recvmsg: bytes, 0 (would block), TV_RECV_EOF, or TV_RECV_FAILED (QP failed). */
int64_t tv_conn_recv(tv_qp *qp, struct iovec *iov, int n_iov);
int tv_conn_readable(tv_qp *qp); /* FIONREAD */
int tv_conn_socket_error(tv_qp *qp);

/* stream.c: the stream wire mode (QP lock held for all). */
void tv_stream_start(tv_qp *qp);
void tv_stream_pump(tv_qp *qp);            /* new sends posted (in RTS) */
void tv_stream_receive(tv_qp *qp);         /* new receives posted, or readable */
void tv_stream_progress(tv_qp *qp);        /* receive, and look at acknowledgements */
void tv_stream_on_events(tv_qp *qp, uint32_t events);
void tv_stream_on_timer(tv_qp *qp, uint64_t now);
void tv_stream_settle(tv_qp *qp);          /* before a flush: complete what TCP acked */

/* udconn.c: UD QPs, one UDP datagram per message (QP lock held, as for stream.c) */
int tv_ud_start(tv_qp *qp);                /* -1: no memory (the QP failed) */
void tv_ud_pump(tv_qp *qp);                /* new sends posted (in RTS) */
void tv_ud_receive(tv_qp *qp);             /* readable, or the application polls */
void tv_ud_progress(tv_qp *qp);
void tv_ud_on_events(tv_qp *qp, uint32_t events);
void tv_ud_on_timer(tv_qp *qp, uint64_t now);
void tv_ud_close(tv_qp *qp);

/* rcconn.c: the rc wire mode on a connection (QP lock held for all). */
int tv_rcconn_start(tv_qp *qp, const uint8_t *peer_hello, uint64_t hello_timeout_ns,
                    uint32_t tx_backlog, uint64_t zerocopy_min);
/* WRs held for zerocopy releases complete now, in order (the connection is gone: the
 * kernel lets go of the pages with it).  Before a failure's flush. */
void tv_rcconn_complete_held(tv_qp *qp);
void tv_rcconn_send_deferred_ack(tv_qp *qp); /* QP lock held */
uint32_t tv_rcconn_tx_queued(const tv_qp *qp); /* pieces waiting to be written */
/* Where in the protocol the connection is, for error messages ("" when nothing to say). */
const char *tv_rcconn_where(const tv_qp *qp);
void tv_rcconn_entered_rts(tv_qp *qp);
void tv_rcconn_pump(tv_qp *qp);
void tv_rcconn_progress(tv_qp *qp);
void tv_rcconn_receive(tv_qp *qp);
void tv_rcconn_on_events(tv_qp *qp, uint32_t events);
void tv_rcconn_on_timer(tv_qp *qp, uint64_t now);
int tv_rcconn_established(const tv_qp *qp);
/* Close: with `goodbye`, the owed ACK and a TERMINATE (why) first, then a graceful
 * close the engine drains; without, at once.  The rc state stays allocated -- the code
 * that failed the QP may be the rc code itself, still on the stack -- until
 * tv_rcconn_free (RESET, destroy, the next attach, the QP's end). */
void tv_rcconn_close(tv_qp *qp, int goodbye, const char *why);
void tv_rcconn_free(tv_qp *qp);
/* Whether the connection itself holds a pin on `region` (a WRITE landing in it, a READ
 * answer not yet written). */
int tv_rcconn_uses(const tv_qp *qp, const tv_region *region);
/* Whether a payload is landing in the head receive WR now, part of it still to come. */
int tv_rcconn_placing_recv(const tv_qp *qp);
/* `region` was deregistered while the connection used it: the peer's access ends (a
 * TERMINATE MR_GONE), the QP fails. */
void tv_rcconn_refuse_gone(tv_qp *qp, const char *why);
enum { TV_HELLO_SIZE = 40 };

#endif
