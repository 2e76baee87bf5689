/* Reading a fuzz harness's input as a script, a byte at a time (the fuzz harnesses). */
#ifndef TCPVERBS_FUZZ_SCRIPT_H
#define TCPVERBS_FUZZ_SCRIPT_H

#include <stddef.h>
#include <stdint.h>

/* The next byte into *out and 1, or 0 at the end of the input. */
static inline int take(const uint8_t **data, size_t *size, uint8_t *out) {
    if (*size == 0)
        return 0;
    *out = **data;
    (*data)++;
    (*size)--;
    return 1;
}

#endif
