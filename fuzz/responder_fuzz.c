/* libFuzzer harness for the rc connection (src/tcpverbs/_native/rcconn.c): what a
 * peer's bytes reach once the hello is done -- the frame loop, the responder (placement
 * into receives and the MR, READ answers, atomics, RNR, RESYNC), the requester's side
 * of answers (ACKs, READ and atomic responses, RNR NAKs, TERMINATE) and the failures.
 *
 * Each input is what the peer sends after its hello, over a real socket pair, to a QP
 * of the native engine (its engine thread running, as in the library) that has two
 * receives and three requests outstanding (a SEND, a READ, a FETCH_AND_ADD) against one
 * registered MR.  The QP reads until the input is used up or it fails; then it is moved
 * to ERR.  Checked besides the sanitizers: every posted WR comes out of the CQ exactly
 * once, and nothing is written outside the MR (guard bytes around it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdalign.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "engine.h"
#include "harness.h"

enum { MR_SIZE = 4096, GUARD = 64, POSTED = 5, ALL_ACCESS = 15 };

static tv_engine engine;
static tv_cq *cq;
static tv_qp *qp;
static alignas(64) uint8_t memory[GUARD + MR_SIZE + GUARD];
#define MR (memory + GUARD)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    cq = start_engine(&engine, MR, MR_SIZE, ALL_ACCESS);
    tv_qp_spec spec = {.handle = 2, .pd = 1, .qp_num = 7, .max_send_wr = 8, .max_recv_wr = 8,
                       .max_send_sge = 2, .max_recv_sge = 2, .max_inline = 64,
                       .sq_sig_all = 1, .wire = TV_WIRE_RC};
    qp = tv_qp_new(&engine, &spec, cq, cq);
    CHECK(qp != NULL);
    return 0;
}

static void peer_hello(uint8_t *h) {
    memset(h, 0, TV_HELLO_SIZE);
    memcpy(h, "TCPVERBS", 8);
    h[9] = 2;  /* version */
    h[10] = 1; /* rc */
    h[15] = 9; /* its QP number */
    h[22] = h[26] = 1; /* max_send_wr, max_recv_wr: 256 */
    h[28] = 0x80;      /* max_msg_sz 2^31 */
    h[32] = h[33] = 4; /* max_rd_atomic, max_dest_rd_atomic */
}

static void post(void) {
    tv_post_result res;
    const tv_sge_in small = {(uint64_t)(uintptr_t)MR, 8, 1};
    const tv_sge_in big[2] = {{(uint64_t)(uintptr_t)(MR + 64), 100, 1},
                              {(uint64_t)(uintptr_t)(MR + 512), 200, 1}};
    pthread_mutex_lock(&qp->lock);
    tv_qp_post_recv(qp, 1, &small, 1, 1, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    tv_qp_post_recv(qp, 2, big, 2, 2, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    const tv_sge_in payload = {(uint64_t)(uintptr_t)(MR + 1024), 16, 1};
    const tv_sge_in landing = {(uint64_t)(uintptr_t)(MR + 2048), 8, 1};
    tv_send_in send = {.wr_id = 3, .opcode = TV_WR_SEND, .num_sge = 1, .sg_len = 1,
                       .sge = &payload};
    tv_send_in read = {.wr_id = 4, .opcode = TV_WR_RDMA_READ, .num_sge = 1, .sg_len = 1,
                       .rkey = 5, .remote_addr = 0x1000, .sge = &landing};
    tv_send_in add = {.wr_id = 5, .opcode = TV_WR_ATOMIC_FETCH_AND_ADD, .num_sge = 1,
                      .sg_len = 1, .rkey = 5, .remote_addr = 0x2000, .compare_add = 1,
                      .sge = &landing};
    tv_qp_post_send(qp, &send, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    tv_qp_post_send(qp, &read, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    tv_qp_post_send(qp, &add, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    tv_qp_posted(qp, 1);
    pthread_mutex_unlock(&qp->lock);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fds[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    memset(memory, 0xA5, sizeof memory);
    tv_params p = {.access_flags = ALL_ACCESS, .max_rd_atomic = 4, .max_dest_rd_atomic = 4,
                   .rnr_retry = 1, .min_rnr_timer = 1};
    tv_qp_reset(qp);
    CHECK(tv_qp_modify(qp, TV_QPS_RESET, TV_QPS_INIT, &p));
    CHECK(tv_qp_modify(qp, TV_QPS_INIT, TV_QPS_RTR, &p));
    uint8_t hello[TV_HELLO_SIZE];
    peer_hello(hello);
    CHECK(tv_qp_attach(qp, fds[0], hello, 1000000000u, 64, 0) == 1); /* no zerocopy */
    CHECK(tv_qp_modify(qp, TV_QPS_RTR, TV_QPS_RTS, &p));
    post();
    /* the input, then the end of the stream (a reset would race the reading) */
    for (size_t off = 0; off < size;) {
        ssize_t n = write(fds[1], data + off, size - off);
        CHECK(n > 0); /* the socket buffer holds far more than -max_len */
        off += (size_t)n;
    }
    shutdown(fds[1], SHUT_WR);
    for (int i = 0; i < 64 && atomic_load(&qp->state) != TV_QPS_ERR; i++) {
        pthread_mutex_lock(&qp->lock);
        tv_rcconn_receive(qp);
        pthread_mutex_unlock(&qp->lock);
    }
    tv_qp_fail(qp, TV_ERR_PLAIN, ECANCELED, "the input ended");
    check_outcomes(cq, POSTED, memory, GUARD, MR_SIZE, NULL);
    close(fds[1]);
    return 0;
}
