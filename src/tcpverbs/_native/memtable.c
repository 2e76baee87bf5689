/* The native engine's memory table: see memtable.h (ownership and locking rules). */
#include "memtable.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { FIRST_CAPACITY = 16 };

static tv_region TOMBSTONE_REGION; /* marks a slot that held a region */
#define TOMBSTONE (&TOMBSTONE_REGION)

static uint32_t hash(uint32_t key) { /* keys are random already; mix anyway */
    key ^= key >> 16;
    key *= 0x7feb352du;
    key ^= key >> 15;
    return key;
}

int tv_mem_init(tv_memtable *t) {
    memset(t, 0, sizeof *t);
    t->slots = calloc(FIRST_CAPACITY, sizeof *t->slots);
    if (t->slots == NULL)
        return ENOMEM;
    t->capacity = FIRST_CAPACITY;
    int err = pthread_mutex_init(&t->lock, NULL);
    if (err == 0) {
        err = pthread_cond_init(&t->unpinned, NULL);
        if (err != 0)
            pthread_mutex_destroy(&t->lock);
    }
    if (err != 0) {
        free(t->slots);
        t->slots = NULL;
    }
    return err;
}

void tv_mem_destroy(tv_memtable *t) {
    if (t->slots == NULL)
        return;
    for (uint32_t i = 0; i < t->capacity; i++)
        if (t->slots[i] != NULL && t->slots[i] != TOMBSTONE)
            free(t->slots[i]);
    pthread_cond_destroy(&t->unpinned);
    pthread_mutex_destroy(&t->lock);
    free(t->slots);
    t->slots = NULL;
}

/* The slot index of `key`, or -1.  Called with the lock held. */
static int64_t find(const tv_memtable *t, uint32_t key) {
    uint32_t mask = t->capacity - 1;
    for (uint32_t i = hash(key) & mask, n = 0; n < t->capacity; i = (i + 1) & mask, n++) {
        const tv_region *r = t->slots[i];
        if (r == NULL)
            return -1; /* an empty slot ends the probe sequence */
        if (r != TOMBSTONE && r->key == key)
            return i;
    }
    return -1;
}

/* Rebuild with `capacity` slots, dropping tombstones.  Called with the lock held. */
static int rehash(tv_memtable *t, uint32_t capacity) {
    tv_region **fresh = calloc(capacity, sizeof *fresh);
    if (fresh == NULL)
        return TV_MEM_NOMEM;
    uint32_t mask = capacity - 1;
    for (uint32_t j = 0; j < t->capacity; j++) {
        tv_region *r = t->slots[j];
        if (r == NULL || r == TOMBSTONE)
            continue;
        uint32_t i = hash(r->key) & mask;
        while (fresh[i] != NULL)
            i = (i + 1) & mask;
        fresh[i] = r;
    }
    free(t->slots);
    t->slots = fresh;
    t->capacity = capacity;
    t->tombstones = 0;
    return TV_MEM_OK;
}

int tv_mem_reg(tv_memtable *t, uint32_t key, uint64_t pd, uint64_t addr, uint64_t length,
               uint32_t access, void *owner) {
    tv_region *region = malloc(sizeof *region);
    if (region == NULL)
        return TV_MEM_NOMEM;
    *region = (tv_region){.key = key, .access = access, .pd = pd, .addr = addr,
                          .length = length, .owner = owner, .pins = 0};
    int status = TV_MEM_OK;
    pthread_mutex_lock(&t->lock);
    if (find(t, key) >= 0) {
        status = TV_MEM_EXISTS;
    } else if ((uint64_t)(t->count + t->tombstones + 1) * 2 > t->capacity) {
        /* at most half the slots in use, tombstones counted: probes stay short */
        uint64_t capacity = t->capacity;
        while ((uint64_t)(t->count + 1) * 4 > capacity)
            capacity *= 2;
        status = capacity > (1u << 30) ? TV_MEM_NOMEM : rehash(t, (uint32_t)capacity);
    }
    if (status == TV_MEM_OK) {
        uint32_t mask = t->capacity - 1;
        uint32_t i = hash(key) & mask;
        while (t->slots[i] != NULL && t->slots[i] != TOMBSTONE)
            i = (i + 1) & mask;
        if (t->slots[i] == TOMBSTONE)
            t->tombstones--;
        t->slots[i] = region;
        t->count++;
    }
    pthread_mutex_unlock(&t->lock);
    if (status != TV_MEM_OK)
        free(region);
    return status;
}

tv_region *tv_mem_take(tv_memtable *t, uint32_t key) {
    pthread_mutex_lock(&t->lock);
    int64_t i = find(t, key);
    tv_region *region = i < 0 ? NULL : t->slots[i];
    if (region != NULL) {
        t->slots[i] = TOMBSTONE; /* no lookup finds it from here on */
        t->count--;
        t->tombstones++;
    }
    pthread_mutex_unlock(&t->lock);
    return region;
}

void *tv_mem_release(tv_memtable *t, tv_region *region) {
    pthread_mutex_lock(&t->lock);
    while (region->pins != 0) /* the region lives outside the table until then */
        pthread_cond_wait(&t->unpinned, &t->lock);
    pthread_mutex_unlock(&t->lock);
    void *owner = region->owner;
    free(region);
    return owner;
}

void *tv_mem_dereg(tv_memtable *t, uint32_t key) {
    tv_region *region = tv_mem_take(t, key);
    return region == NULL ? NULL : tv_mem_release(t, region);
}

void *tv_mem_take_any(tv_memtable *t) {
    tv_region *region = NULL;
    pthread_mutex_lock(&t->lock);
    for (uint32_t i = 0; i < t->capacity && region == NULL; i++)
        if (t->slots[i] != NULL && t->slots[i] != TOMBSTONE)
            region = t->slots[i];
    pthread_mutex_unlock(&t->lock);
    return region == NULL ? NULL : tv_mem_dereg(t, region->key);
}

int tv_mem_find(tv_memtable *t, uint64_t pd, uint64_t addr, uint64_t length) {
    int found = 0;
    pthread_mutex_lock(&t->lock);
    for (uint32_t i = 0; i < t->capacity && !found; i++) {
        const tv_region *r = t->slots[i];
        found = r != NULL && r != TOMBSTONE && r->pd == pd && addr >= r->addr &&
                addr - r->addr <= r->length && length <= r->length - (addr - r->addr);
    }
    pthread_mutex_unlock(&t->lock);
    return found;
}

int tv_mem_check(tv_memtable *t, uint32_t key, uint64_t pd, uint64_t addr, uint64_t length,
                 uint32_t need, tv_region **pinned) {
    int status = TV_MEM_OK;
    pthread_mutex_lock(&t->lock);
    int64_t i = find(t, key);
    tv_region *r = i < 0 ? NULL : t->slots[i];
    if (r == NULL)
        status = TV_MEM_NO_KEY;
    else if (r->pd != pd)
        status = TV_MEM_WRONG_PD;
    else if ((r->access & need) != need)
        status = TV_MEM_NO_ACCESS;
    /* inside, without overflow: start <= addr, and length fits what is left after it */
    else if (addr < r->addr || addr - r->addr > r->length ||
             length > r->length - (addr - r->addr))
        status = TV_MEM_OUT_OF_RANGE;
    else if (pinned != NULL) {
        r->pins++;
        *pinned = r;
    }
    pthread_mutex_unlock(&t->lock);
    return status;
}

void tv_mem_unpin(tv_memtable *t, tv_region *region) {
    pthread_mutex_lock(&t->lock);
    if (region->pins > 0 && --region->pins == 0)
        pthread_cond_broadcast(&t->unpinned); /* a dereg may be waiting for it */
    pthread_mutex_unlock(&t->lock);
}

uint32_t tv_mem_count(tv_memtable *t) {
    pthread_mutex_lock(&t->lock);
    uint32_t n = t->count;
    pthread_mutex_unlock(&t->lock);
    return n;
}
