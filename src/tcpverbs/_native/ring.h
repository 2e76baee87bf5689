/* Software queues: the rings the application and the native engine share (the founding
 * paper's "software queues"; issue #10, "What the native engine is").
 *
 * A ring is a power-of-two array of fixed-size slots with two free-running 32-bit
 * indices: `head` (next slot to consume) and `tail` (next slot to produce).  One producer
 * and one consumer, which may be different threads: the producer writes a slot, then
 * publishes it with a release store of `tail`; the consumer sees it with an acquire load
 * of `tail`, reads the slot, and gives it back with a release store of `head`.  No lock,
 * no system call.  Where several threads produce into one ring (the completions of many
 * QPs into one CQ), they hold a lock of their own from tv_ring_produce_slot() through
 * filling the slot to tv_ring_produce(): otherwise two of them get the same slot.
 *
 * Layout: the header (indices on separate cache lines, so producer and consumer do not
 * share one) is followed by the slots in one block of memory with no pointers in it, so
 * that an engine in another process could later map the same block.
 *
 * Ownership: the caller allocates the block (tv_ring_bytes() tells how big) and owns it;
 * the ring never allocates.  Sizes come from the application (queue depths), never from
 * a peer.
 */
#ifndef TCPVERBS_NATIVE_RING_H
#define TCPVERBS_NATIVE_RING_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum { TV_CACHE_LINE = 64, TV_RING_MAX_SLOTS = 1u << 20 };

typedef struct tv_ring {
    alignas(TV_CACHE_LINE) _Atomic uint32_t head; /* written by the consumer */
    alignas(TV_CACHE_LINE) _Atomic uint32_t tail; /* written by the producer */
    alignas(TV_CACHE_LINE) uint32_t mask;         /* slots - 1 */
    uint32_t slot_size;                           /* bytes per slot, a multiple of 8 */
    alignas(TV_CACHE_LINE) unsigned char slots[]; /* slots * slot_size bytes */
} tv_ring;

/* Bytes a ring of `slots` slots of `slot_size` bytes needs; 0 if the shape is invalid
 * (slots not a power of two in 1..TV_RING_MAX_SLOTS, slot_size 0, not a multiple of 8 or
 * over 64 KiB). */
size_t tv_ring_bytes(uint32_t slots, uint32_t slot_size);

/* Make `mem` (tv_ring_bytes() bytes, aligned to TV_CACHE_LINE) an empty ring; NULL if
 * the shape is invalid. */
tv_ring *tv_ring_init(void *mem, uint32_t slots, uint32_t slot_size);

/* Producer side: the slot to fill next, or NULL if the ring is full; then publish it. */
void *tv_ring_produce_slot(tv_ring *r);
void tv_ring_produce(tv_ring *r);

/* Consumer side: the oldest filled slot, or NULL if empty; then give it back. */
const void *tv_ring_consume_slot(tv_ring *r);
void tv_ring_consume(tv_ring *r);

/* Consumer side: the i-th filled slot from the oldest (0: the oldest), or NULL past the
 * newest.  The consumer may still change a slot it has not given back (an engine keeps
 * per-WR progress there). */
void *tv_ring_peek(tv_ring *r, uint32_t i);

/* Filled slots now (exact for the producer or consumer thread, a snapshot otherwise). */
uint32_t tv_ring_count(const tv_ring *r);
uint32_t tv_ring_capacity(const tv_ring *r);

#endif
