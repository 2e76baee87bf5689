/* libFuzzer harness for the rc requester's window (src/tcpverbs/_native/requester.c).
 *
 * The input is a script: each step takes a byte saying what happens next -- we issue a
 * request (its opcode, length and fence from the next bytes), or the peer sends an ACK,
 * a READ or atomic response, an RNR NAK or a TERMINATE with a message number from the
 * next bytes (near the window or anything); a TERMINATE ends the script, as it ends the
 * connection.  Checked besides the sanitizers: a failed call changes nothing; every
 * issued request is in flight or came out exactly once (an RNR retry's resent requests
 * are issued again); the window and its counters stay within their bounds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "script.h"
#include "requester.h"

enum { CAP = 8 };

static tv_request win[CAP], done[CAP], snapshot_win[CAP];
static uint8_t seen[1 << 16]; /* cookie -> how many times it came out */

static void out(const tv_request *reqs, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        CHECK(reqs[i].cookie < sizeof seen);
        CHECK(seen[reqs[i].cookie] == 0); /* never twice */
        seen[reqs[i].cookie] = 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tv_rcproto proto;
    tv_requester r;
    tv_rc_init(&proto);
    uint8_t start;
    if (take(&data, &size, &start) && start & 1)
        proto.sent = proto.acked = UINT32_MAX - 2; /* MSNs wrap soon */
    tv_req_init(&r, &proto, win, CAP);
    memset(seen, 0, sizeof seen);
    uint64_t issued = 0, came_out = 0;
    uint8_t step, a, b;
    while (take(&data, &size, &step) && issued < sizeof seen) {
        tv_requester before = r;
        tv_rcproto proto_before = proto;
        memcpy(snapshot_win, win, sizeof win);
        uint32_t n = 0;
        int rc = 0;
        uint32_t head_seq = r.len ? tv_req_at(&r, 0)->seq : (uint32_t)proto.acked + 1;
        uint32_t msn = head_seq;
        if (take(&data, &size, &a))
            msn = a & 0x80 ? head_seq + (a & 7) - 2 : (uint32_t)a * 0x01010101u;
        switch (step % 6) {
        case 0: { /* we issue */
            tv_request w = {.cookie = issued, .opcode = (a % 7), .length = msn % 64,
                            .fence = (uint8_t)((step >> 3) & 1)};
            w.needs_response = w.opcode == 4 || w.opcode == 5 || w.opcode == 6;
            if (tv_req_may_issue(&r, &w, 1 + (step >> 4) % 3) && tv_req_issue(&r, &w) == 0)
                issued++;
            break;
        }
        case 1:
            rc = tv_req_on_ack(&r, msn, done, &n);
            break;
        case 2:
        case 3: {
            rc = (step % 6) == 2 ? tv_req_on_read_response(&r, msn, msn % 64, done, &n)
                                 : tv_req_on_atomic_response(&r, msn, done, &n);
            if (rc == 0) {
                out(done, n);
                came_out += n;
                tv_request answered;
                CHECK(tv_req_response_done(&r, &answered) == 0 && answered.seq == msn);
                out(&answered, 1);
                came_out++;
                n = 0;
            }
            break;
        }
        case 4: {
            tv_rnr_outcome o;
            uint8_t retry = take(&data, &size, &b) ? b % 8 : 7;
            rc = tv_req_on_rnr_nak(&r, msn, step, retry, done, &n, &o);
            if (rc == 0 && o.exhausted) {
                out(&o.refused, 1);
                came_out++;
            } else if (rc == 0) { /* the resent ones go again: forget they came out */
                CHECK(o.resend >= 1 && done[n].seq == msn && o.resync_msn == msn);
                out(done, n);
                came_out += n;
                for (uint32_t i = 0; i < o.resend; i++) { /* back in: issue them again */
                    tv_request again = done[n + i];
                    CHECK(tv_req_issue(&r, &again) == 0);
                }
                n = 0;
            }
            break;
        }
        default: { /* TERMINATE ends the connection: the last input */
            tv_request t;
            if (tv_req_on_terminate(&r, msn, &t)) {
                CHECK(t.seq == msn);
                out(&t, 1);
                came_out++;
            }
            CHECK(issued == came_out + r.len);
            return 0;
        }
        }
        if (rc < 0) { /* an error changes nothing */
            CHECK(r.error[0] != '\0');
            CHECK(before.head == r.head && before.len == r.len &&
                  before.rd_outstanding == r.rd_outstanding);
            CHECK(memcmp(&proto_before, &proto, sizeof proto) == 0);
            CHECK(memcmp(snapshot_win, win, sizeof win) == 0);
        } else {
            out(done, n);
            came_out += n;
        }
        CHECK(r.len <= CAP && r.rd_outstanding <= r.len);
        CHECK(issued == came_out + r.len); /* each one in flight or out, once */
        CHECK(proto.acked <= proto.sent);
    }
    return 0;
}
