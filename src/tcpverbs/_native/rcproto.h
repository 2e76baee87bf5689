/* Per-connection rc protocol state: request numbering and coalesced acknowledgements --
 * the C twin of tcpverbs.wire.rc.RcProtocol (read its theory of operation there).
 *
 * Counters are 64-bit and never wrap in practice; message sequence numbers on the wire
 * are the counters modulo 2^32, as in the reference.  Sans-IO: no system call, no
 * allocation.  Ownership and locking: plain memory owned by the connection, used under
 * the connection's lock.
 */
#ifndef TCPVERBS_NATIVE_RCPROTO_H
#define TCPVERBS_NATIVE_RCPROTO_H

#include <stddef.h>
#include <stdint.h>

typedef struct tv_rcproto {
    uint64_t sent;     /* requests we have issued (requester side) */
    uint64_t acked;    /* of those, acknowledged by the peer */
    uint64_t received; /* the peer's requests we carried out (responder side) */
    uint64_t ack_sent; /* the highest `received` we told the peer about */
    int discarding;    /* responder: after an RNR NAK, until the RESYNC */
} tv_rcproto;

enum { TV_RC_ERROR_LEN = 160 };

void tv_rc_init(tv_rcproto *p);

/* Requester side. */
uint32_t tv_rc_next_request(tv_rcproto *p); /* number the next request we send */
/* How many requests ACK(msn) newly acknowledges, into *delta; -1 (why in err) if it
 * names a request never sent.  Changes nothing. */
int tv_rc_acks(const tv_rcproto *p, uint32_t msn, uint64_t *delta, char *err, size_t errlen);
int tv_rc_on_ack(tv_rcproto *p, uint32_t msn, uint64_t *delta, char *err, size_t errlen);
uint32_t tv_rc_rewind(tv_rcproto *p); /* after an RNR NAK: the MSN the RESYNC names */

/* Responder side. */
uint32_t tv_rc_next_msn(const tv_rcproto *p);
/* The next request found no receive: start discarding; 1 and *ack_msn if an ACK is owed
 * first (to be sent before the RNR NAK), else 0. */
int tv_rc_refuse(tv_rcproto *p, uint32_t *ack_msn);
int tv_rc_on_resync(tv_rcproto *p, uint32_t msn, char *err, size_t errlen);
uint32_t tv_rc_request_done(tv_rcproto *p); /* one more carried out: its MSN */
int tv_rc_ack_owed(const tv_rcproto *p);
/* The coalesced ACK owed: 1 and its MSN, or 0 if none is owed. */
int tv_rc_take_ack(tv_rcproto *p, uint32_t *ack_msn);

#endif
