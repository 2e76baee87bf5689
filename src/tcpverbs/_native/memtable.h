/* The native engine's memory table: every registered region of a context, by key
 * (issue #10, "Memory table"; the Python engine's is tcpverbs/engine/py/memory.py).
 *
 * One table answers both questions a transfer asks: may a local SGE use this memory
 * (lkey: same PD, inside the range, LOCAL_WRITE where written) and may the peer reach
 * it (rkey: the target QP's PD, range, the REMOTE_* right).  Keys are looked up in O(1)
 * (open addressing).  A transfer that uses a region *pins* it while bytes move;
 * tv_mem_dereg() marks the region invalid at once (no lookup finds it afterwards) and
 * then waits until no pin is left, so once it returns nothing touches the memory.
 *
 * Ownership: the table owns its slot array (sized by the number of regions, which the
 * application decides, never by a peer); each region's memory belongs to whoever
 * registered it (the binding keeps the Py_buffer that pins it).  `owner` is an opaque
 * pointer handed back by tv_mem_dereg() for the caller to release.
 * Locking: one mutex guards the table and the pin counts; dereg waits on a condition
 * variable.  Never call tv_mem_dereg() while holding a pin yourself.
 */
#ifndef TCPVERBS_NATIVE_MEMTABLE_H
#define TCPVERBS_NATIVE_MEMTABLE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

enum tv_access { /* ibv_access_flags */
    TV_LOCAL_WRITE = 1,
    TV_REMOTE_WRITE = 2,
    TV_REMOTE_READ = 4,
    TV_REMOTE_ATOMIC = 8,
};

enum tv_mem_status {
    TV_MEM_OK = 0,
    TV_MEM_NO_KEY = 1,       /* no region with this key (never, or deregistered) */
    TV_MEM_WRONG_PD = 2,     /* a region of another PD */
    TV_MEM_NO_ACCESS = 3,    /* registered without a right the use needs */
    TV_MEM_OUT_OF_RANGE = 4, /* [addr, addr + length) is not inside it */
    TV_MEM_EXISTS = 5,       /* tv_mem_reg: the key is taken */
    TV_MEM_NOMEM = 6,        /* tv_mem_reg: no memory to grow the table */
};

/* A region: allocated by tv_mem_reg, freed by tv_mem_dereg once no pin is left. */
typedef struct tv_region {
    uint32_t key;
    uint32_t access;
    uint64_t pd;
    uint64_t addr; /* the absolute address of its first byte, as in libibverbs */
    uint64_t length;
    void *owner;   /* the registrar's handle on the memory (opaque here) */
    uint64_t pins; /* transfers using it now (guarded by the table's lock) */
} tv_region;

typedef struct tv_memtable {
    pthread_mutex_t lock;
    pthread_cond_t unpinned;
    tv_region **slots; /* capacity slots, a power of two: NULL, a tombstone or a region */
    uint32_t capacity;
    uint32_t count; /* regions */
    uint32_t tombstones;
} tv_memtable;

int tv_mem_init(tv_memtable *t); /* 0, or an errno */
void tv_mem_destroy(tv_memtable *t); /* regions left are forgotten (owners not released) */

int tv_mem_reg(tv_memtable *t, uint32_t key, uint64_t pd, uint64_t addr, uint64_t length,
               uint32_t access, void *owner);

/* Remove the region: no lookup finds it from now on; then wait until no pin is left.
 * Returns its owner (for the caller to release), or NULL if there was no such key. */
void *tv_mem_dereg(tv_memtable *t, uint32_t key);
/* The two halves of tv_mem_dereg, for an engine that must make the work holding pins
 * let go in between (it revokes queued work): take the region out of the table (NULL if
 * no such key) -- it stays allocated, and pins still refer to it -- then release it:
 * wait until no pin is left, free it, and return its owner. */
tv_region *tv_mem_take(tv_memtable *t, uint32_t key);
void *tv_mem_release(tv_memtable *t, tv_region *region);

/* Deregister some region left in the table and return its owner; NULL once none is
 * left (the table's owner releases what is left before destroying it). */
void *tv_mem_take_any(tv_memtable *t);

/* Whether some region of PD `pd` holds [addr, addr + length), whatever its key (inline
 * data: ibv_post_send ignores the lkey).  A scan of the table: the slow path only. */
int tv_mem_find(tv_memtable *t, uint64_t pd, uint64_t addr, uint64_t length);

/* May [addr, addr + length) of region `key` be used by PD `pd` with rights `need`?
 * With TV_MEM_OK and `pinned` not NULL, the region is pinned and *pinned points to it
 * (tv_mem_unpin it when the bytes have moved; it stays valid until then). */
int tv_mem_check(tv_memtable *t, uint32_t key, uint64_t pd, uint64_t addr, uint64_t length,
                 uint32_t need, tv_region **pinned);
void tv_mem_unpin(tv_memtable *t, tv_region *region);

uint32_t tv_mem_count(tv_memtable *t);

#endif
