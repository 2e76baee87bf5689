/* What the connection fuzz harnesses (responder_fuzz.c, ud_receive_fuzz.c) share: an
 * engine with its thread running, one MR and one CQ; and the check once a QP has read
 * its input and failed.  Ownership: the engine, MR and CQ live for the process. */
#ifndef TCPVERBS_FUZZ_HARNESS_H
#define TCPVERBS_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "check.h"
#include "engine.h"

enum { OUTCOMES_MAX_WRS = 16 };

/* Start *engine with `size` bytes at `mr` registered as key 1 of PD 1; its CQ. */
static inline tv_cq *start_engine(tv_engine *engine, uint8_t *mr, uint64_t size,
                                  uint32_t access) {
    CHECK(tv_engine_init(engine, 0) == 0);
    CHECK(tv_mem_reg(&engine->mem, 1, 1, (uint64_t)(uintptr_t)mr, size, access, NULL) ==
          TV_MEM_OK);
    tv_cq *cq = tv_cq_new(engine, 1, 64, NULL);
    CHECK(cq != NULL);
    return cq;
}

/* Every posted WR came out of the CQ exactly once, and nothing was written in the guard
 * bytes around the MR.  Each completion is also handed to `each` (NULL: none), for the
 * harness's own checks. */
static inline void check_outcomes(tv_cq *cq, int posted, const uint8_t *memory, size_t guard,
                                  size_t mr_size, void (*each)(const tv_cqe *)) {
    int seen[OUTCOMES_MAX_WRS + 1] = {0};
    CHECK(posted <= OUTCOMES_MAX_WRS);
    tv_cqe e[16];
    uint32_t lost = 0;
    int got;
    while ((got = tv_cq_take(cq, e, 16, &lost)) != 0) {
        CHECK(got > 0); /* no overrun: the CQ has room for all */
        for (int i = 0; i < got; i++) {
            CHECK(e[i].wr_id >= 1 && e[i].wr_id <= (uint64_t)posted);
            seen[e[i].wr_id]++;
            if (each != NULL)
                each(&e[i]);
        }
    }
    for (int id = 1; id <= posted; id++)
        CHECK(seen[id] == 1); /* every WR: exactly one outcome */
    for (size_t i = 0; i < guard; i++) /* nothing landed outside the MR */
        CHECK(memory[i] == 0xA5 && memory[guard + mr_size + i] == 0xA5);
}

#endif
