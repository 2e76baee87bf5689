/* Software queues: see ring.h (ownership, threads and memory order). */
#include "ring.h"

#include <string.h>

size_t tv_ring_bytes(uint32_t slots, uint32_t slot_size) {
    if (slots == 0 || slots > TV_RING_MAX_SLOTS || (slots & (slots - 1)) != 0)
        return 0;
    if (slot_size == 0 || slot_size % 8 != 0 || slot_size > 65536)
        return 0;
    /* at most 2^20 * 2^16 = 2^36 bytes: fits size_t on the 64-bit targets we build for */
    return sizeof(tv_ring) + (size_t)slots * slot_size;
}

tv_ring *tv_ring_init(void *mem, uint32_t slots, uint32_t slot_size) {
    if (mem == NULL || tv_ring_bytes(slots, slot_size) == 0 ||
        (uintptr_t)mem % TV_CACHE_LINE != 0)
        return NULL;
    tv_ring *r = mem;
    memset(r, 0, sizeof *r);
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->mask = slots - 1;
    r->slot_size = slot_size;
    return r;
}

uint32_t tv_ring_capacity(const tv_ring *r) { return r->mask + 1; }

uint32_t tv_ring_count(const tv_ring *r) {
    /* head first: it never passes tail, so a tail read after it is at least as new and
     * the difference cannot go "negative" (about 2^32) for a third thread */
    uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    return tail - head; /* free-running: the difference is right across wrap-around */
}

void *tv_ring_produce_slot(tv_ring *r) {
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed); /* ours */
    uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (tail - head > r->mask)
        return NULL; /* full */
    return r->slots + (size_t)(tail & r->mask) * r->slot_size;
}

void tv_ring_produce(tv_ring *r) {
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release); /* the slot is out */
}

const void *tv_ring_consume_slot(tv_ring *r) {
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed); /* ours */
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head == tail)
        return NULL; /* empty */
    return r->slots + (size_t)(head & r->mask) * r->slot_size;
}

void tv_ring_consume(tv_ring *r) {
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    atomic_store_explicit(&r->head, head + 1, memory_order_release); /* the slot is free */
}

void *tv_ring_peek(tv_ring *r, uint32_t i) {
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed); /* ours */
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (i >= tail - head)
        return NULL;
    return r->slots + (size_t)((head + i) & r->mask) * r->slot_size;
}
