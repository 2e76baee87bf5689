/* The binding of the rc protocol state (rcproto.c) and the requester's window
 * (requester.c): RcProtocol and Requester, with the interfaces of tcpverbs.wire.rc.
 * Ownership: a Requester owns its window arrays and a strong reference to its
 * RcProtocol and to every work object in flight.  Locking: the GIL. */
#include "binding.h"
#include "frames.h"
#include "rcproto.h"
#include "requester.h"

/* -- RcProtocol: the twin of tcpverbs.wire.rc.RcProtocol ------------------------------ */
typedef struct {
    PyObject_HEAD
    tv_rcproto p;
} RcProtocolObject;

static int rcproto_init(RcProtocolObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (tv_py_load_classes() < 0)
        return -1;
    tv_rc_init(&self->p);
    return 0;
}



static PyObject *ack_frame(uint32_t msn) {
    tv_header h = {.opcode = TV_ACK, .msn = msn};
    uint8_t out[TV_MAX_HEADER];
    size_t n = tv_encode_header(&h, out, sizeof out);
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)n);
}

static PyObject *rc_next_request(RcProtocolObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromUnsignedLong(tv_rc_next_request(&self->p));
}

static PyObject *rc_acks(RcProtocolObject *self, PyObject *arg) {
    uint32_t msn;
    uint64_t delta;
    char err[TV_RC_ERROR_LEN];
    if (tv_py_msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_rc_acks(&self->p, msn, &delta, err, sizeof err) < 0)
        return tv_py_protocol_error(err);
    return PyLong_FromUnsignedLongLong(delta);
}

static PyObject *rc_on_ack(RcProtocolObject *self, PyObject *arg) {
    uint32_t msn;
    uint64_t delta;
    char err[TV_RC_ERROR_LEN];
    if (tv_py_msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_rc_on_ack(&self->p, msn, &delta, err, sizeof err) < 0)
        return tv_py_protocol_error(err);
    return PyLong_FromUnsignedLongLong(delta);
}

static PyObject *rc_rewind(RcProtocolObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromUnsignedLong(tv_rc_rewind(&self->p));
}

static PyObject *rc_refuse(RcProtocolObject *self, PyObject *unused) {
    (void)unused;
    uint32_t msn;
    if (tv_rc_refuse(&self->p, &msn))
        return ack_frame(msn);
    return PyBytes_FromStringAndSize("", 0);
}

static PyObject *rc_on_resync(RcProtocolObject *self, PyObject *arg) {
    uint32_t msn;
    char err[TV_RC_ERROR_LEN];
    if (tv_py_msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_rc_on_resync(&self->p, msn, err, sizeof err) < 0)
        return tv_py_protocol_error(err);
    Py_RETURN_NONE;
}

static PyObject *rc_request_done(RcProtocolObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromUnsignedLong(tv_rc_request_done(&self->p));
}

static PyObject *rc_take_ack(RcProtocolObject *self, PyObject *unused) {
    (void)unused;
    uint32_t msn;
    if (tv_rc_take_ack(&self->p, &msn))
        return ack_frame(msn);
    Py_RETURN_NONE;
}

static PyObject *rc_get_next_msn(RcProtocolObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(tv_rc_next_msn(&self->p));
}

static PyObject *rc_get_ack_owed(RcProtocolObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(tv_rc_ack_owed(&self->p));
}

static PyObject *rc_get_discarding(RcProtocolObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->p.discarding);
}

static int rc_set_discarding(RcProtocolObject *self, PyObject *value, void *closure) {
    (void)closure;
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    if (truth < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "cannot delete discarding");
        return -1;
    }
    self->p.discarding = truth;
    return 0;
}

/* the counters, by offset: read and written as Python ints (tests set them to wrap) */
static PyObject *rc_get_counter(RcProtocolObject *self, void *closure) {
    return PyLong_FromUnsignedLongLong(*(uint64_t *)((char *)&self->p + (size_t)closure));
}

static int rc_set_counter(RcProtocolObject *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot delete a counter");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *(uint64_t *)((char *)&self->p + (size_t)closure) = v;
    return 0;
}

static PyMethodDef rcproto_methods[] = {
    {"next_request", (PyCFunction)rc_next_request, METH_NOARGS, "Number the next request."},
    {"acks", (PyCFunction)rc_acks, METH_O, "Requests ACK(msn) would acknowledge."},
    {"on_ack", (PyCFunction)rc_on_ack, METH_O, "Apply a cumulative ACK."},
    {"rewind", (PyCFunction)rc_rewind, METH_NOARGS, "After an RNR NAK: the RESYNC MSN."},
    {"refuse", (PyCFunction)rc_refuse, METH_NOARGS, "Start discarding; the ACK owed."},
    {"on_resync", (PyCFunction)rc_on_resync, METH_O, "The peer resumes at msn."},
    {"request_done", (PyCFunction)rc_request_done, METH_NOARGS, "One more carried out."},
    {"take_ack", (PyCFunction)rc_take_ack, METH_NOARGS, "The coalesced ACK owed, or None."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rcproto_getset[] = {
    {"next_msn", (getter)rc_get_next_msn, NULL, "the peer's next request", NULL},
    {"ack_owed", (getter)rc_get_ack_owed, NULL, "an ACK is owed", NULL},
    {"discarding", (getter)rc_get_discarding, (setter)rc_set_discarding, "after RNR", NULL},
    {"sent", (getter)rc_get_counter, (setter)rc_set_counter, "requests issued",
     (void *)offsetof(tv_rcproto, sent)},
    {"acked", (getter)rc_get_counter, (setter)rc_set_counter, "requests acknowledged",
     (void *)offsetof(tv_rcproto, acked)},
    {"received", (getter)rc_get_counter, (setter)rc_set_counter, "peer requests done",
     (void *)offsetof(tv_rcproto, received)},
    {"_ack_sent", (getter)rc_get_counter, (setter)rc_set_counter, "last ACK taken",
     (void *)offsetof(tv_rcproto, ack_sent)},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tv_py_RcProtocolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tcpverbs._native.RcProtocol",
    .tp_doc = PyDoc_STR("rc protocol state in C (see tcpverbs.wire.rc.RcProtocol)."),
    .tp_basicsize = sizeof(RcProtocolObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rcproto_init,
    .tp_methods = rcproto_methods,
    .tp_getset = rcproto_getset,
};

/* -- Requester: the twin of tcpverbs.wire.rc.Requester --------------------------------
 * The window holds the work objects themselves (a strong reference each, in `cookie`),
 * so the interface is the reference's: issue(work), on_ack(msn) -> [work, ...], ... */
typedef struct {
    PyObject_HEAD
    RcProtocolObject *proto;
    tv_requester r;
    tv_request *win;  /* capacity entries */
    tv_request *done; /* capacity entries: what a call completes */
} RequesterObject;

#define WORK(req) ((PyObject *)(uintptr_t)(req)->cookie)

static int work_field(PyObject *work, const char *name, uint64_t *out) {
    PyObject *v = PyObject_GetAttrString(work, name);
    if (v == NULL)
        return -1;
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = x;
    return 0;
}

static int work_flag(PyObject *work, const char *name, uint8_t *out) {
    PyObject *v = PyObject_GetAttrString(work, name);
    if (v == NULL)
        return -1;
    int truth = PyObject_IsTrue(v); /* as the reference reads it */
    Py_DECREF(v);
    if (truth < 0)
        return -1;
    *out = (uint8_t)truth;
    return 0;
}

/* An unsigned argument of at most `bits` bits: ValueError (not a wrap) otherwise. */
static int unsigned_arg(PyObject *arg, const char *name, int bits, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be an int in 0..2^%d-1", name, bits);
        }
        return -1;
    }
    if (bits < 64 && v >> bits) {
        PyErr_Format(PyExc_ValueError, "%s must be an int in 0..2^%d-1", name, bits);
        return -1;
    }
    *out = v;
    return 0;
}

/* The tv_request of a Python work record (opcode, length, fence, needs_response,
 * rnr_tries). */
static int request_of(PyObject *work, tv_request *w) {
    uint64_t opcode, length, tries;
    uint8_t fence, needs;
    if (work_field(work, "opcode", &opcode) < 0 || work_field(work, "length", &length) < 0 ||
        work_flag(work, "fence", &fence) < 0 ||
        work_flag(work, "needs_response", &needs) < 0 ||
        work_field(work, "rnr_tries", &tries) < 0)
        return -1;
    if (opcode > UINT32_MAX || tries > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "opcode and rnr_tries must fit 32 bits");
        return -1;
    }
    *w = (tv_request){.cookie = (uint64_t)(uintptr_t)work, .length = length,
                      .opcode = (uint32_t)opcode, .rnr_tries = (uint32_t)tries,
                      .fence = fence, .needs_response = needs};
    return 0;
}

static int set_int(PyObject *work, const char *name, uint64_t value) {
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttrString(work, name, v);
    Py_DECREF(v);
    return rc;
}

/* A list of the work objects of done[0:n], taking over the window's references. */
static PyObject *take_list(tv_request *done, uint32_t n) {
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        for (uint32_t i = 0; i < n; i++)
            Py_DECREF(WORK(&done[i]));
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++)
        PyList_SET_ITEM(list, i, WORK(&done[i]));
    return list;
}

static int requester_init(RequesterObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"proto", "capacity", NULL};
    PyObject *proto;
    unsigned int capacity = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|I", kwlist, &tv_py_RcProtocolType, &proto,
                                     &capacity))
        return -1;
    if (capacity == 0 || capacity > (1u << 20)) {
        PyErr_SetString(PyExc_ValueError, "capacity must be in 1..2^20");
        return -1;
    }
    if (tv_py_load_classes() < 0 || self->win != NULL)
        return self->win != NULL ? (PyErr_SetString(PyExc_RuntimeError, "initialised"), -1)
                                 : -1;
    self->win = PyMem_Calloc(capacity, sizeof *self->win);
    self->done = PyMem_Calloc(capacity, sizeof *self->done);
    if (self->win == NULL || self->done == NULL) {
        PyMem_Free(self->win);
        PyMem_Free(self->done);
        self->win = self->done = NULL;
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(proto);
    self->proto = (RcProtocolObject *)proto;
    tv_req_init(&self->r, &self->proto->p, self->win, capacity);
    return 0;
}

/* The window's work objects and the protocol are this object's references: the cyclic
 * collector must see them (work -> engine -> requester cycles are possible). */
static int requester_traverse(RequesterObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->proto);
    if (self->win != NULL)
        for (uint32_t i = 0; i < self->r.len; i++)
            Py_VISIT(WORK(tv_req_at(&self->r, i)));
    return 0;
}

static int requester_clear(RequesterObject *self) {
    if (self->win != NULL) {
        while (self->r.len) { /* empty the window first, then drop the references */
            PyObject *work = WORK(tv_req_at(&self->r, self->r.len - 1));
            self->r.len--;
            Py_DECREF(work);
        }
    }
    Py_CLEAR(self->proto);
    return 0;
}

static void requester_dealloc(RequesterObject *self) {
    PyObject_GC_UnTrack(self);
    requester_clear(self);
    PyMem_Free(self->win);
    PyMem_Free(self->done);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int requester_ready(RequesterObject *self) {
    if (self->win == NULL || self->proto == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Requester.__init__ was not called");
        return -1;
    }
    return 0;
}

static PyObject *rq_may_issue(RequesterObject *self, PyObject *args) {
    PyObject *work, *limit_obj;
    uint64_t rd_limit;
    tv_request w;
    if (requester_ready(self) < 0 || !PyArg_ParseTuple(args, "OO", &work, &limit_obj) ||
        unsigned_arg(limit_obj, "rd_limit", 32, &rd_limit) < 0 || request_of(work, &w) < 0)
        return NULL;
    return PyBool_FromLong(tv_req_may_issue(&self->r, &w, (uint32_t)rd_limit));
}

static PyObject *rq_issue(RequesterObject *self, PyObject *work) {
    tv_request w;
    if (requester_ready(self) < 0 || request_of(work, &w) < 0)
        return NULL;
    if (tv_req_issue(&self->r, &w) < 0) {
        PyErr_SetString(PyExc_OverflowError, "the requester's window is full");
        return NULL;
    }
    Py_INCREF(work);
    uint32_t len = self->r.len;
    uint64_t sent = self->r.proto->sent;
    if (set_int(work, "seq", w.seq) < 0) {
        /* the reference raises before the work enters the window: take it out again,
         * unless the setter ran code that used this requester meanwhile (then the
         * window is what that code made it, and the work stays in flight) */
        if (self->r.len == len && self->r.proto->sent == sent &&
            WORK(tv_req_at(&self->r, len - 1)) == work) {
            self->r.len--;
            self->r.proto->sent--;
            if (w.needs_response)
                self->r.rd_outstanding--;
            Py_DECREF(work);
        }
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *rq_on_ack(RequesterObject *self, PyObject *arg) {
    uint32_t msn, n;
    if (requester_ready(self) < 0 || tv_py_msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_req_on_ack(&self->r, msn, self->done, &n) < 0)
        return tv_py_protocol_error(self->r.error);
    return take_list(self->done, n);
}

/* (completed, the answered work at the head) */
static PyObject *answered(RequesterObject *self, uint32_t n) {
    PyObject *done = take_list(self->done, n);
    if (done == NULL)
        return NULL;
    return Py_BuildValue("(NO)", done, WORK(tv_req_at(&self->r, 0)));
}

static PyObject *rq_on_read_response(RequesterObject *self, PyObject *args) {
    PyObject *msn_obj, *len_obj;
    uint64_t payload_len;
    uint32_t msn, n;
    if (requester_ready(self) < 0 || !PyArg_ParseTuple(args, "OO", &msn_obj, &len_obj) ||
        tv_py_msn_arg(msn_obj, &msn) < 0 ||
        unsigned_arg(len_obj, "payload_len", 64, &payload_len) < 0)
        return NULL;
    if (tv_req_on_read_response(&self->r, msn, payload_len, self->done, &n) < 0)
        return tv_py_protocol_error(self->r.error);
    return answered(self, n);
}

static PyObject *rq_on_atomic_response(RequesterObject *self, PyObject *arg) {
    uint32_t msn, n;
    if (requester_ready(self) < 0 || tv_py_msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_req_on_atomic_response(&self->r, msn, self->done, &n) < 0)
        return tv_py_protocol_error(self->r.error);
    return answered(self, n);
}

static PyObject *rq_response_done(RequesterObject *self, PyObject *work) {
    if (requester_ready(self) < 0)
        return NULL;
    tv_request *head = tv_req_at(&self->r, 0);
    if (head == NULL || WORK(head) != work) {
        PyErr_SetString(PyExc_AssertionError, "response_done for a work not at the head");
        return NULL;
    }
    tv_request out;
    if (tv_req_response_done(&self->r, &out) < 0) {
        PyErr_SetString(PyExc_ValueError, "response_done for a request that awaits no answer");
        return NULL;
    }
    Py_DECREF(WORK(&out));
    Py_RETURN_NONE;
}

static PyObject *rq_on_rnr_nak(RequesterObject *self, PyObject *args) {
    PyObject *msn_obj, *timer_obj, *retry_obj;
    uint64_t timer, rnr_retry;
    uint32_t msn, n;
    tv_rnr_outcome out;
    if (requester_ready(self) < 0 ||
        !PyArg_ParseTuple(args, "OOO", &msn_obj, &timer_obj, &retry_obj) ||
        tv_py_msn_arg(msn_obj, &msn) < 0 || unsigned_arg(timer_obj, "timer", 8, &timer) < 0 ||
        unsigned_arg(retry_obj, "rnr_retry", 32, &rnr_retry) < 0)
        return NULL;
    if (tv_req_on_rnr_nak(&self->r, msn, (uint8_t)timer, (uint32_t)rnr_retry, self->done, &n,
                          &out) < 0)
        return tv_py_protocol_error(self->r.error);
    /* Take every reference out of the shared scratch array before any Python code runs
     * (setting rnr_tries below may call back into this requester and reuse it). */
    PyObject *done = take_list(self->done, n);
    if (out.exhausted) {
        PyObject *refused = WORK(&out.refused); /* the window's reference, now ours */
        if (done == NULL || set_int(refused, "rnr_tries", out.refused.rnr_tries) < 0) {
            Py_XDECREF(done);
            Py_DECREF(refused);
            return NULL;
        }
        return Py_BuildValue("(NN)", done, refused);
    }
    uint32_t tries = self->done[n].rnr_tries; /* the refused one: the first resent */
    PyObject *resend = take_list(self->done + n, out.resend);
    if (done == NULL || resend == NULL ||
        set_int(PyList_GET_ITEM(resend, 0), "rnr_tries", tries) < 0) {
        Py_XDECREF(done);
        Py_XDECREF(resend);
        return NULL;
    }
    PyObject *retry = PyObject_CallFunction(tv_py_RnrRetry, "NId", resend,
                                            (unsigned)out.resync_msn, out.delay_ms / 1000);
    if (retry == NULL) {
        Py_DECREF(done);
        return NULL;
    }
    return Py_BuildValue("(NN)", done, retry);
}

static PyObject *rq_on_terminate(RequesterObject *self, PyObject *arg) {
    uint32_t msn;
    tv_request out;
    if (requester_ready(self) < 0 || tv_py_msn_arg(arg, &msn) < 0)
        return NULL;
    if (!tv_req_on_terminate(&self->r, msn, &out))
        Py_RETURN_NONE;
    return WORK(&out); /* the window's reference, now the caller's */
}

static PyObject *rq_get_inflight(RequesterObject *self, void *closure) {
    (void)closure;
    if (requester_ready(self) < 0)
        return NULL;
    PyObject *list = PyList_New(self->r.len);
    if (list == NULL)
        return NULL;
    for (uint32_t i = 0; i < self->r.len; i++) {
        PyObject *work = WORK(tv_req_at(&self->r, i));
        Py_INCREF(work);
        PyList_SET_ITEM(list, i, work);
    }
    return list;
}

static PyObject *rq_get_rd_outstanding(RequesterObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(self->r.rd_outstanding);
}

static PyObject *rq_get_proto(RequesterObject *self, void *closure) {
    (void)closure;
    if (self->proto == NULL)
        Py_RETURN_NONE;
    Py_INCREF(self->proto);
    return (PyObject *)self->proto;
}

static PyMethodDef requester_methods[] = {
    {"may_issue", (PyCFunction)rq_may_issue, METH_VARARGS, "may_issue(work, rd_limit)"},
    {"issue", (PyCFunction)rq_issue, METH_O, "issue(work): number it, into the window"},
    {"on_ack", (PyCFunction)rq_on_ack, METH_O, "on_ack(msn) -> completed works"},
    {"on_read_response", (PyCFunction)rq_on_read_response, METH_VARARGS,
     "on_read_response(msn, payload_len) -> (completed, answered)"},
    {"on_atomic_response", (PyCFunction)rq_on_atomic_response, METH_O,
     "on_atomic_response(msn) -> (completed, answered)"},
    {"response_done", (PyCFunction)rq_response_done, METH_O, "the head's answer is in place"},
    {"on_rnr_nak", (PyCFunction)rq_on_rnr_nak, METH_VARARGS,
     "on_rnr_nak(msn, timer, rnr_retry) -> (completed, refused work | tv_py_RnrRetry)"},
    {"on_terminate", (PyCFunction)rq_on_terminate, METH_O, "on_terminate(msn) -> work | None"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef requester_getset[] = {
    {"inflight", (getter)rq_get_inflight, NULL, "the works in flight, oldest first", NULL},
    {"rd_outstanding", (getter)rq_get_rd_outstanding, NULL, "READs/atomics unanswered", NULL},
    {"proto", (getter)rq_get_proto, NULL, "the RcProtocol", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tv_py_RequesterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tcpverbs._native.Requester",
    .tp_doc = PyDoc_STR("The rc requester's window in C (see tcpverbs.wire.rc.Requester)."),
    .tp_basicsize = sizeof(RequesterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)requester_init,
    .tp_dealloc = (destructor)requester_dealloc,
    .tp_traverse = (traverseproc)requester_traverse,
    .tp_clear = (inquiry)requester_clear,
    .tp_methods = requester_methods,
    .tp_getset = requester_getset,
};

PyObject *tv_py_terminate_status(PyObject *module, PyObject *arg) {
    (void)module;
    unsigned long long status = PyLong_AsUnsignedLongLong(arg);
    if (status == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLong(tv_terminate_status(status > UINT32_MAX ? UINT32_MAX
                                                                           : (uint32_t)status));
}
