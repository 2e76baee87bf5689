/* Tests of the software queues (src/tcpverbs/_native/ring.c), built and run by
 * tests/test_native_c.py under AddressSanitizer + UndefinedBehaviorSanitizer and again
 * under ThreadSanitizer.  Exit status 0: all passed; a failure prints where and aborts. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ring.h"


typedef struct {
    uint64_t seq;
    uint64_t check; /* seq scrambled: a torn or stale slot shows */
} slot_t;

static uint64_t scramble(uint64_t x) { return x * 0x9E3779B97F4A7C15u ^ 0xA5A5A5A5u; }

static tv_ring *new_ring(uint32_t slots, uint32_t slot_size) {
    size_t bytes = tv_ring_bytes(slots, slot_size);
    CHECK(bytes != 0);
    void *mem = aligned_alloc(TV_CACHE_LINE, (bytes + TV_CACHE_LINE - 1) / TV_CACHE_LINE * TV_CACHE_LINE);
    CHECK(mem != NULL);
    tv_ring *r = tv_ring_init(mem, slots, slot_size);
    CHECK(r == mem);
    return r;
}

static void test_shapes(void) {
    CHECK(tv_ring_bytes(0, 16) == 0);
    CHECK(tv_ring_bytes(3, 16) == 0);               /* not a power of two */
    CHECK(tv_ring_bytes(1u << 21, 16) == 0);        /* too many */
    CHECK(tv_ring_bytes(4, 0) == 0);
    CHECK(tv_ring_bytes(4, 12) == 0);               /* not a multiple of 8 */
    CHECK(tv_ring_bytes(4, 65544) == 0);            /* too big a slot */
    CHECK(tv_ring_bytes(1, 8) == sizeof(tv_ring) + 8);
    CHECK(tv_ring_init(NULL, 4, 16) == NULL);
    static _Alignas(TV_CACHE_LINE) unsigned char mem[4096];
    CHECK(tv_ring_init(mem + 8, 4, 16) == NULL);     /* misaligned */
    CHECK(tv_ring_init(mem, 5, 16) == NULL);
    CHECK(offsetof(tv_ring, tail) - offsetof(tv_ring, head) >= TV_CACHE_LINE);
}

static void test_full_and_empty(void) {
    tv_ring *r = new_ring(4, sizeof(slot_t));
    CHECK(tv_ring_capacity(r) == 4 && tv_ring_count(r) == 0);
    CHECK(tv_ring_consume_slot(r) == NULL);
    for (uint64_t i = 0; i < 4; i++) {
        slot_t *s = tv_ring_produce_slot(r);
        CHECK(s != NULL);
        s->seq = i;
        tv_ring_produce(r);
    }
    CHECK(tv_ring_produce_slot(r) == NULL && tv_ring_count(r) == 4);
    for (uint64_t i = 0; i < 4; i++) {
        const slot_t *s = tv_ring_consume_slot(r);
        CHECK(s != NULL && s->seq == i);
        tv_ring_consume(r);
    }
    CHECK(tv_ring_consume_slot(r) == NULL && tv_ring_count(r) == 0);
    free(r);
}

static void test_indices_wrap_around(void) {
    tv_ring *r = new_ring(8, sizeof(slot_t));
    /* as if 2^32 - 3 slots had gone through: the free-running indices overflow next */
    atomic_store(&r->head, UINT32_MAX - 2);
    atomic_store(&r->tail, UINT32_MAX - 2);
    for (uint64_t round = 0; round < 4; round++) {
        for (uint64_t i = 0; i < 8; i++) {
            slot_t *s = tv_ring_produce_slot(r);
            CHECK(s != NULL);
            s->seq = round * 8 + i;
            tv_ring_produce(r);
        }
        CHECK(tv_ring_produce_slot(r) == NULL && tv_ring_count(r) == 8);
        for (uint64_t i = 0; i < 8; i++) {
            const slot_t *s = tv_ring_consume_slot(r);
            CHECK(s != NULL && s->seq == round * 8 + i);
            tv_ring_consume(r);
        }
        CHECK(tv_ring_count(r) == 0);
    }
    free(r);
}

enum { STRESS_COUNT = 500000 };

static void *producer(void *arg) {
    tv_ring *r = arg;
    for (uint64_t i = 0; i < STRESS_COUNT;) {
        slot_t *s = tv_ring_produce_slot(r);
        if (s == NULL)
            continue; /* full: spin */
        s->seq = i;
        s->check = scramble(i);
        tv_ring_produce(r);
        i++;
    }
    return NULL;
}

static void test_two_threads(void) {
    tv_ring *r = new_ring(64, sizeof(slot_t));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, producer, r) == 0);
    for (uint64_t want = 0; want < STRESS_COUNT;) {
        const slot_t *s = tv_ring_consume_slot(r);
        if (s == NULL)
            continue; /* empty: spin */
        CHECK(s->seq == want && s->check == scramble(want)); /* in order, whole */
        tv_ring_consume(r);
        want++;
    }
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(tv_ring_count(r) == 0);
    free(r);
}

int main(void) {
    test_shapes();
    test_full_and_empty();
    test_indices_wrap_around();
    test_two_threads();
    puts("ring: all passed");
    return 0;
}
