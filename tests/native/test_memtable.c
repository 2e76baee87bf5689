/* Tests of the memory table (src/tcpverbs/_native/memtable.c), run by
 * tests/test_native_c.py under ASan + UBSan and under TSan. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "check.h"
#include "memtable.h"


static int owner_tag[4];

static void test_checks(void) {
    tv_memtable t;
    CHECK(tv_mem_init(&t) == 0);
    CHECK(tv_mem_reg(&t, 7, 1, 0x1000, 0x100, TV_LOCAL_WRITE | TV_REMOTE_READ, &owner_tag[0]) ==
          TV_MEM_OK);
    CHECK(tv_mem_reg(&t, 7, 1, 0x9000, 8, 0, NULL) == TV_MEM_EXISTS);
    CHECK(tv_mem_count(&t) == 1);
    CHECK(tv_mem_check(&t, 7, 1, 0x1000, 0x100, TV_LOCAL_WRITE, NULL) == TV_MEM_OK);
    CHECK(tv_mem_check(&t, 7, 1, 0x10ff, 1, 0, NULL) == TV_MEM_OK);
    CHECK(tv_mem_check(&t, 7, 1, 0x1100, 0, 0, NULL) == TV_MEM_OK); /* empty, at the end */
    CHECK(tv_mem_check(&t, 8, 1, 0x1000, 1, 0, NULL) == TV_MEM_NO_KEY);
    CHECK(tv_mem_check(&t, 7, 2, 0x1000, 1, 0, NULL) == TV_MEM_WRONG_PD);
    CHECK(tv_mem_check(&t, 7, 1, 0x1000, 1, TV_REMOTE_WRITE, NULL) == TV_MEM_NO_ACCESS);
    CHECK(tv_mem_check(&t, 7, 1, 0x0fff, 1, 0, NULL) == TV_MEM_OUT_OF_RANGE);
    CHECK(tv_mem_check(&t, 7, 1, 0x1000, 0x101, 0, NULL) == TV_MEM_OUT_OF_RANGE);
    CHECK(tv_mem_check(&t, 7, 1, 0x1101, 0, 0, NULL) == TV_MEM_OUT_OF_RANGE);
    /* lengths and addresses a peer could send: no wrap-around lets them in */
    CHECK(tv_mem_check(&t, 7, 1, 0x1080, UINT64_MAX, 0, NULL) == TV_MEM_OUT_OF_RANGE);
    CHECK(tv_mem_check(&t, 7, 1, UINT64_MAX, 2, 0, NULL) == TV_MEM_OUT_OF_RANGE);
    CHECK(tv_mem_dereg(&t, 7) == &owner_tag[0]);
    CHECK(tv_mem_dereg(&t, 7) == NULL);
    CHECK(tv_mem_check(&t, 7, 1, 0x1000, 1, 0, NULL) == TV_MEM_NO_KEY);
    CHECK(tv_mem_count(&t) == 0);
    tv_mem_destroy(&t);
}

enum { MANY = 20000 };

static void test_many_against_a_model(void) {
    static uint32_t keys[MANY];
    static uint8_t present[MANY];
    tv_memtable t;
    CHECK(tv_mem_init(&t) == 0);
    srand(12345);
    for (uint32_t i = 0; i < MANY; i++)
        keys[i] = (uint32_t)rand() * 2654435761u + i; /* distinct: i is in the low bits */
    uint32_t count = 0;
    for (int step = 0; step < 200000; step++) {
        uint32_t i = (uint32_t)rand() % MANY;
        int op = rand() % 3;
        if (op == 0) {
            int s = tv_mem_reg(&t, keys[i], i, (uint64_t)i << 20, 4096, TV_LOCAL_WRITE, NULL);
            CHECK(s == (present[i] ? TV_MEM_EXISTS : TV_MEM_OK));
            count += !present[i];
            present[i] = 1;
        } else if (op == 1) {
            tv_mem_dereg(&t, keys[i]);
            count -= present[i];
            present[i] = 0;
        } else {
            int s = tv_mem_check(&t, keys[i], i, ((uint64_t)i << 20) + 100, 8, 0, NULL);
            CHECK(s == (present[i] ? TV_MEM_OK : TV_MEM_NO_KEY));
        }
        CHECK(tv_mem_count(&t) == count);
    }
    tv_mem_destroy(&t);
}

static tv_memtable shared;
static atomic_int unpinned_yet;

static void *dereg_thread(void *arg) {
    (void)arg;
    CHECK(tv_mem_dereg(&shared, 42) == &owner_tag[1]);
    CHECK(atomic_load(&unpinned_yet) == 1); /* it waited for the pin */
    return NULL;
}

static void test_dereg_waits_for_pins(void) {
    CHECK(tv_mem_init(&shared) == 0);
    CHECK(tv_mem_reg(&shared, 42, 1, 0x2000, 64, 0, &owner_tag[1]) == TV_MEM_OK);
    tv_region *pinned = NULL;
    CHECK(tv_mem_check(&shared, 42, 1, 0x2000, 64, 0, &pinned) == TV_MEM_OK && pinned);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, dereg_thread, NULL) == 0);
    /* dereg has taken it out of the table (lookups fail) but waits for our pin */
    for (int i = 0; i < 1000 && tv_mem_check(&shared, 42, 1, 0x2000, 1, 0, NULL) == TV_MEM_OK;
         i++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    CHECK(tv_mem_check(&shared, 42, 1, 0x2000, 1, 0, NULL) == TV_MEM_NO_KEY);
    struct timespec pause = {0, 20000000};
    nanosleep(&pause, NULL);
    CHECK(pinned->key == 42 && pinned->pins == 1); /* still alive while pinned */
    atomic_store(&unpinned_yet, 1);
    tv_mem_unpin(&shared, pinned);
    CHECK(pthread_join(t, NULL) == 0);
    tv_mem_destroy(&shared);
}

int main(void) {
    test_checks();
    test_many_against_a_model();
    test_dereg_waits_for_pins();
    puts("memtable: all passed");
    return 0;
}
