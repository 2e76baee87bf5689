/* libFuzzer harness for the zerocopy bookkeeping (src/tcpverbs/_native/zerocopy.c): what
 * the kernel's error queue may say, in any order, against a model written the other way.
 *
 * The input is a script: each step takes a byte saying what happens -- a zerocopy call
 * goes out (when the window has room, as tv_zc_wanted allows), or the kernel reports a
 * range [lo, hi] of its 32-bit call numbers (near the outstanding calls, or anything).
 * The model keeps the set of released calls and accepts a range only when every number
 * it names is an outstanding call not released yet; `done` is then the first call not
 * released.  Checked besides the sanitizers: the C bookkeeping agrees with the model
 * after every step, and done <= issued <= done + TV_ZC_WINDOW.
 */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "script.h"
#include "zerocopy.h"

enum { MAX_CALLS = 4096 };

static uint8_t released[MAX_CALLS]; /* the model: call n released */

static uint32_t take32(const uint8_t **data, size_t *size) {
    uint32_t v = 0;
    uint8_t b;
    for (int i = 0; i < 4 && take(data, size, &b); i++)
        v = v << 8 | b;
    return v;
}

/* The model's answer to a report: 1 if accepted (and recorded). */
static int model_release(uint64_t done, uint64_t issued, uint32_t lo, uint32_t hi) {
    uint64_t named = (uint64_t)(uint32_t)(hi - lo) + 1, found = 0;
    for (uint64_t n = done; n < issued; n++)
        if ((uint32_t)((uint32_t)n - lo) <= (uint32_t)(hi - lo) && !released[n])
            found++;
    if (found != named)
        return 0;
    for (uint64_t n = done; n < issued; n++)
        if ((uint32_t)((uint32_t)n - lo) <= (uint32_t)(hi - lo))
            released[n] = 1;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tv_zc z;
    memset(&z, 0, sizeof z);
    z.threshold = 1;
    memset(released, 0, sizeof released);
    uint64_t model_done = 0;
    uint8_t op;
    while (take(&data, &size, &op)) {
        if ((op & 3) != 3) { /* a call goes out */
            if (!tv_zc_wanted(&z, 1) || z.issued == MAX_CALLS)
                continue;
            CHECK(tv_zc_sent(&z) == z.issued);
        } else { /* a report */
            uint8_t near, span;
            if (!take(&data, &size, &near) || !take(&data, &size, &span))
                break;
            uint32_t lo = (op & 4) ? take32(&data, &size) : (uint32_t)(z.done + near % 8);
            uint32_t hi = (op & 8) ? take32(&data, &size) : lo + span % 8;
            uint64_t released_before = z.released;
            int accepted = model_release(model_done, z.issued, lo, hi);
            tv_zc_release(&z, lo, hi, op & 16);
            CHECK((z.released != released_before) == accepted);
            while (model_done < z.issued && released[model_done])
                model_done++;
        }
        CHECK(z.done == model_done);
        CHECK(z.done <= z.issued && z.issued <= z.done + TV_ZC_WINDOW);
    }
    return 0;
}
