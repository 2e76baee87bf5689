/* libFuzzer harness for a UD QP's receive path (src/tcpverbs/_native/udconn.c): what a
 * peer's datagrams reach -- the decoder, the QP and Q_Key checks, the placement behind
 * the GRH across a receive's SGEs, the length errors and the drops.
 *
 * Each input is a series of records [flags u8][length u16][bytes], each sent as one UDP
 * datagram over loopback to a native UD QP (its engine thread running, as in the
 * library) with three receives posted: one too small for any GRH, one of two SGEs, one
 * large.  Flag bit 0 writes the QP's own number into the datagram's dest_qpn and bit 1
 * its Q_Key into the qkey field (bytes 8 and 16), so that the fuzzer reaches placement
 * although the QP's number (its port) differs from run to run.  The QP reads until
 * nothing is left; then it is moved to ERR.  Checked besides the sanitizers: every
 * receive comes out of the CQ exactly once, a successful one with the GRH and payload
 * it has room for, and nothing is written outside the MR (guard bytes around it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdalign.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "engine.h"
#include "harness.h"
#include "ud.h"

enum { MR_SIZE = 8192, GUARD = 64, POSTED = 3, QKEY = 0x11223344, MTU = 4096 };

static tv_engine engine;
static tv_cq *cq;
static alignas(64) uint8_t memory[GUARD + MR_SIZE + GUARD];
#define MR (memory + GUARD)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    cq = start_engine(&engine, MR, MR_SIZE, 1);
    return 0;
}

static void post(tv_qp *qp) {
    tv_post_result res;
    const tv_sge_in small = {(uint64_t)(uintptr_t)MR, 30, 1}; /* not even a GRH */
    const tv_sge_in two[2] = {{(uint64_t)(uintptr_t)(MR + 64), 20, 1},
                              {(uint64_t)(uintptr_t)(MR + 512), 100, 1}};
    const tv_sge_in large = {(uint64_t)(uintptr_t)(MR + 1024), TV_GRH + MTU, 1};
    pthread_mutex_lock(&qp->lock);
    tv_qp_post_recv(qp, 1, &small, 1, 1, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    tv_qp_post_recv(qp, 2, two, 2, 2, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    tv_qp_post_recv(qp, 3, &large, 1, 1, &res);
    CHECK(res.fault == TV_FAULT_NONE);
    pthread_mutex_unlock(&qp->lock);
}

/* A successful receive holds the GRH and a payload it had room for. */
static void check_receive(const tv_cqe *e) {
    static const uint32_t room[POSTED + 1] = {0, 30, 120, TV_GRH + MTU};
    if (e->status == TV_WC_SUCCESS) {
        CHECK(e->byte_len >= TV_GRH && e->byte_len <= room[e->wr_id]);
        CHECK(e->wc_flags & 1); /* IBV_WC_GRH */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int rx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(rx >= 0 && tx >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    CHECK(bind(rx, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK(getsockname(rx, (struct sockaddr *)&addr, &len) == 0);
    uint32_t qp_num = (uint32_t)ntohs(addr.sin_port) << 8;
    tv_qp_spec spec = {.handle = 2, .pd = 1, .qp_num = qp_num, .max_send_wr = 4,
                       .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 2,
                       .sq_sig_all = 1, .wire = TV_WIRE_UD, .mtu = MTU};
    tv_qp *qp = tv_qp_new(&engine, &spec, cq, cq);
    CHECK(qp != NULL);
    memset(memory, 0xA5, sizeof memory);
    tv_params p = {.qkey = QKEY};
    CHECK(tv_qp_modify(qp, TV_QPS_RESET, TV_QPS_INIT, &p));
    CHECK(tv_qp_modify(qp, TV_QPS_INIT, TV_QPS_RTR, &p));
    CHECK(tv_qp_attach(qp, rx, NULL, 0, 0, 0) == 1);
    CHECK(tv_qp_modify(qp, TV_QPS_RTR, TV_QPS_RTS, &p));
    post(qp);
    static uint8_t datagram[65536];
    for (size_t off = 0; off + 3 <= size;) {
        uint8_t flags = data[off];
        size_t n = (size_t)data[off + 1] << 8 | data[off + 2];
        off += 3;
        if (n > size - off)
            n = size - off;
        memcpy(datagram, data + off, n);
        off += n;
        if ((flags & 1) && n >= 12) {
            for (int i = 0; i < 4; i++)
                datagram[8 + i] = (uint8_t)(qp_num >> (24 - 8 * i));
        }
        if ((flags & 2) && n >= 20) {
            for (int i = 0; i < 4; i++)
                datagram[16 + i] = (uint8_t)((uint32_t)QKEY >> (24 - 8 * i));
        }
        /* loopback queues it on the receiving socket before sendto returns (or drops
         * it when that socket's buffer is full: UD is allowed to) */
        (void)sendto(tx, datagram, n, 0, (struct sockaddr *)&addr, sizeof addr);
    }
    for (int i = 0; i < 64; i++) {
        pthread_mutex_lock(&qp->lock);
        tv_ud_receive(qp);
        pthread_mutex_unlock(&qp->lock);
    }
    tv_qp_fail(qp, TV_ERR_PLAIN, ECANCELED, "the input ended");
    check_outcomes(cq, POSTED, memory, GUARD, MR_SIZE, check_receive);
    tv_qp_destroy(qp);
    tv_qp_put(qp);
    close(tx);
    return 0;
}
