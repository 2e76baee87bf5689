/* What the CPython binding's files share (module.c, py_frames.c, py_rc.c, py_engine.c,
 * py_srq.c, py_fast.c, py_wc.c).
 *
 * The Python classes the binding builds or raises (Header, Opcode, RnrRetry,
 * RemoteProtocolError) are looked up once, by tv_py_load_classes(), at the first object
 * made -- not at import, since tcpverbs.wire may one day import this module -- and kept
 * for the process.  Everything here runs with the GIL held.
 */
#ifndef TCPVERBS_NATIVE_BINDING_H
#define TCPVERBS_NATIVE_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "engine.h"

extern PyObject *tv_py_Header;        /* tcpverbs.wire.frames.Header */
extern PyObject *tv_py_Opcode;        /* tcpverbs.wire.frames.Opcode */
extern PyObject *tv_py_ProtocolError; /* tcpverbs.errors.RemoteProtocolError */
extern PyObject *tv_py_RnrRetry;      /* tcpverbs.wire.rc.RnrRetry */

int tv_py_load_classes(void);
/* Raise RemoteProtocolError(why); returns NULL for the caller to return. */
PyObject *tv_py_protocol_error(const char *why);
/* A message sequence number argument (a 32-bit unsigned int). */
int tv_py_msn_arg(PyObject *arg, uint32_t *msn);

/* py_frames.c */
extern PyTypeObject tv_py_FrameDecoderType;
PyObject *tv_py_encode_header(PyObject *module, PyObject *header);

/* py_ud.c */
PyObject *tv_py_decode_ud(PyObject *module, PyObject *arg);
PyObject *tv_py_encode_ud(PyObject *module, PyObject *args);
PyObject *tv_py_ud_grh(PyObject *module, PyObject *args);

/* py_rc.c */
extern PyTypeObject tv_py_RcProtocolType;
extern PyTypeObject tv_py_RequesterType;
PyObject *tv_py_terminate_status(PyObject *module, PyObject *arg);

/* py_wc.c */
extern PyTypeObject tv_py_WCType;
int tv_py_wc_ready(PyObject *module); /* readies the type and adds it to the module */
/* A WC from the first nine fields (the rest 0). */
PyObject *tv_py_wc_new(const uint64_t values[9]);

/* py_fast.c */
extern PyTypeObject tv_py_FastCallType;

/* py_engine.c */
extern PyTypeObject tv_py_EngineType;
extern PyTypeObject tv_py_ChannelType;
extern PyTypeObject tv_py_CQType;
extern PyTypeObject tv_py_QPType;
int tv_py_engine_init_names(void);
/* Where a chain of WRs goes: `post` one WR (without the GIL, `lock` held if not NULL),
 * then `done` (if not NULL) once some were posted; `depth`: the most WRs it can take. */
typedef struct tv_py_poster {
    void (*post)(void *target, const tv_send_in *in, int send, tv_post_result *res);
    void (*done)(void *target, int send); /* NULL: nothing to do after posting */
    pthread_mutex_t *lock;
    void *target;
    uint32_t depth;
    int quiet; /* post and done never block (no socket I/O; no wait but for `lock`) */
    int ud;    /* sends carry a UD destination (wr.ah, remote_qpn, remote_qkey) */
} tv_py_poster;
/* Read the chain from `first` into C -- at most depth + 1 WRs, more cannot be posted
 * anyway -- then post what was read, in order, without the GIL (a quiet poster keeps
 * it when `lock` is free at once: releasing and taking it back would cost more than
 * the post).  None, or the PostFailure of the first WR refused or unreadable; NULL
 * with an exception. */
PyObject *tv_py_post_chain(const tv_py_poster *poster, PyObject *first, int send);
/* The C engine of an Engine object (its type checked by the caller). */
tv_engine *tv_py_engine_of(PyObject *engine);
/* tcpverbs.engine.api.Overrun, looked up once with the binding's other classes
 * (borrowed, kept for the process); NULL with an exception. */
PyObject *tv_py_overrun(void);
/* An engine error as the exception tcpverbs raises (OSError with errno); NULL. */
PyObject *tv_py_raise_errno(int err, const char *what);

/* py_srq.c */
extern PyTypeObject tv_py_SRQType;
/* The C SRQ of an SRQ object; NULL with TypeError for anything else. */
tv_srq *tv_py_srq_of(PyObject *obj);

#endif
