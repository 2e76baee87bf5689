/* CHECK(cond): the assertion of the C unit tests (tests/native/) and the fuzz harnesses
 * (fuzz/); aborts with where it failed, so the sanitizers print a stack too. */
#ifndef TCPVERBS_TESTS_CHECK_H
#define TCPVERBS_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#endif
