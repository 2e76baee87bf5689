/* The CPython face of the native engine: Engine, Channel, CQ and QP, the objects
 * tcpverbs/engine/native.py builds its classes on (tcpverbs.engine.api is the contract
 * they keep).  The engine itself (engine.h) never touches Python.
 *
 * GIL: held on entry, as always; released around everything that may block or make a
 * system call -- waiting, progress, posting and flushing, deregistration.  The rule that
 * keeps the GIL and the engine's locks from deadlocking: no thread ever waits for the
 * GIL while it holds a QP's lock (a QP's lock is taken with the GIL released, and let go
 * before the GIL is taken back), so a thread that holds the GIL may wait for a QP's lock.
 * No engine lock is ever held while Python code runs: a post first reads the whole WR
 * chain into C (attribute reads can run Python), then posts it without the GIL.
 *
 * Ownership: a CQ or QP object holds a reference to its Engine object (the engine's
 * memory lives as long as they do) and one on its C object; a QP object also holds its
 * CQ objects.  A registered buffer's Py_buffer is the region's owner in the memory table
 * and is released once deregistration returns.
 */
#include "binding.h"
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <structmember.h>
#include <stdlib.h>
#include <sys/socket.h>

/* Classes and names looked up once (tv_py_engine_setup). */
static PyObject *PostFailure, *PostFault, *Overrun, *find_bad_field, *SEND_WR_FIELDS,
    *RECV_WR_FIELDS, *TcpverbsError, *ConnectionBrokenError, *RemoteProtocolError;
static PyObject *s_wr_id, *s_opcode, *s_num_sge, *s_imm_data, *s_sg, *s_send_flags,
    *s_next_wr, *s_remote_addr, *s_rkey, *s_compare_add, *s_swap, *s_addr, *s_length,
    *s_lkey, *s_errno, *s_strerror;

static int learn_layouts(void);
static int learn_wc(void);

static int setup(void) {
    if (PostFailure != NULL)
        return 0;
    PyObject *api = PyImport_ImportModule("tcpverbs.engine.api");
    PyObject *errors = api ? PyImport_ImportModule("tcpverbs.errors") : NULL;
    if (errors == NULL) {
        Py_XDECREF(api);
        return -1;
    }
    PostFault = PyObject_GetAttrString(api, "PostFault");
    Overrun = PyObject_GetAttrString(api, "Overrun");
    find_bad_field = PyObject_GetAttrString(api, "find_bad_field");
    SEND_WR_FIELDS = PyObject_GetAttrString(api, "SEND_WR_FIELDS");
    RECV_WR_FIELDS = PyObject_GetAttrString(api, "RECV_WR_FIELDS");
    TcpverbsError = PyObject_GetAttrString(errors, "TcpverbsError");
    ConnectionBrokenError = PyObject_GetAttrString(errors, "ConnectionBrokenError");
    RemoteProtocolError = PyObject_GetAttrString(errors, "RemoteProtocolError");
    PyObject *failure = PyObject_GetAttrString(api, "PostFailure");
    Py_DECREF(api);
    Py_DECREF(errors);
    if (failure == NULL || PostFault == NULL || Overrun == NULL || find_bad_field == NULL ||
        SEND_WR_FIELDS == NULL || RECV_WR_FIELDS == NULL || TcpverbsError == NULL ||
        ConnectionBrokenError == NULL || RemoteProtocolError == NULL) {
        Py_XDECREF(failure);
        return -1;
    }
    if (learn_layouts() < 0 || learn_wc() < 0) {
        Py_DECREF(failure);
        return -1;
    }
    PostFailure = failure; /* set last: it says the rest is there */
    return 0;
}

int tv_py_engine_init_names(void) {
#define NAME(var, text)                                                                   \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                \
        return -1;
    NAME(s_wr_id, "wr_id");
    NAME(s_opcode, "opcode");
    NAME(s_num_sge, "num_sge");
    NAME(s_imm_data, "imm_data");
    NAME(s_sg, "sg");
    NAME(s_send_flags, "send_flags");
    NAME(s_next_wr, "next_wr");
    NAME(s_remote_addr, "remote_addr");
    NAME(s_rkey, "rkey");
    NAME(s_compare_add, "compare_add");
    NAME(s_swap, "swap");
    NAME(s_addr, "addr");
    NAME(s_length, "length");
    NAME(s_lkey, "lkey");
    NAME(s_errno, "errno");
    NAME(s_strerror, "strerror");
#undef NAME
    return 0;
}

PyObject *tv_py_raise_errno(int err, const char *what) {
    PyObject *exc = PyObject_CallFunction(TcpverbsError ? TcpverbsError : PyExc_OSError,
                                          "is", err, what);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static uint64_t timeout_ns(PyObject *timeout, int *forever) {
    *forever = timeout == Py_None;
    if (*forever)
        return 0;
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred())
        return 0;
    if (!(t > 0)) /* negative, zero or NaN: do not wait */
        return 0;
    return t > 1e9 ? (uint64_t)1e18 : (uint64_t)(t * 1e9);
}

/* -- Engine ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    tv_engine engine;
    int ready, closed;
} EngineObject;

tv_engine *tv_py_engine_of(PyObject *engine) { return &((EngineObject *)engine)->engine; }

PyObject *tv_py_overrun(void) { return setup() < 0 ? NULL : Overrun; }

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"sq_poll_ns", NULL};
    unsigned long long sq_poll_ns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$K", kwlist, &sq_poll_ns))
        return -1;
    if (self->ready)
        return 0;
    if (setup() < 0)
        return -1;
    int err = tv_engine_init(&self->engine, sq_poll_ns);
    if (err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->ready = 1;
    return 0;
}

static void engine_close(EngineObject *self) {
    if (!self->ready || self->closed)
        return;
    self->closed = 1;
    Py_BEGIN_ALLOW_THREADS
    tv_engine_close(&self->engine);
    Py_END_ALLOW_THREADS
}

static void Engine_dealloc(EngineObject *self) {
    engine_close(self);
    if (self->ready) {
        void *owner; /* regions left registered: their buffers go with the table */
        while ((owner = tv_mem_take_any(&self->engine.mem)) != NULL) {
            PyBuffer_Release((Py_buffer *)owner);
            PyMem_Free(owner);
        }
        tv_engine_free(&self->engine);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The registration's owner: a Py_buffer of `view` that pins it, checked to start at
 * `addr`; NULL with an exception set. */
static Py_buffer *pin_buffer(PyObject *view, unsigned long long addr) {
    Py_buffer *buf = PyMem_Malloc(sizeof *buf);
    if (buf == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (PyObject_GetBuffer(view, buf, PyBUF_WRITABLE) < 0) {
        PyMem_Free(buf);
        return NULL;
    }
    if ((uintptr_t)buf->buf != addr) {
        PyBuffer_Release(buf);
        PyMem_Free(buf);
        tv_py_raise_errno(EINVAL, "the address does not match the buffer");
        return NULL;
    }
    return buf;
}

static void release_buffer(void *owner) {
    if (owner != NULL) {
        PyBuffer_Release((Py_buffer *)owner);
        PyMem_Free(owner);
    }
}

/* reg_mr and rereg_mr: (key, pd, view, addr, access). */
static PyObject *register_mr(EngineObject *self, PyObject *args, int replace) {
    unsigned int key;
    unsigned long long pd, addr;
    unsigned int access;
    PyObject *view;
    if (!PyArg_ParseTuple(args, "IKOKI", &key, &pd, &view, &addr, &access))
        return NULL;
    Py_buffer *buf = pin_buffer(view, addr);
    if (buf == NULL)
        return NULL;
    int status;
    void *old_owner = NULL;
    if (replace) {
        Py_BEGIN_ALLOW_THREADS /* waits out the old region's pins */
        status = tv_engine_rereg(&self->engine, key, pd, addr, (uint64_t)buf->len, access, buf,
                                 &old_owner);
        Py_END_ALLOW_THREADS
    } else {
        status = tv_mem_reg(&self->engine.mem, key, pd, addr, (uint64_t)buf->len, access, buf);
    }
    release_buffer(old_owner);
    if (status != TV_MEM_OK) {
        release_buffer(buf);
        return status == TV_MEM_EXISTS ? tv_py_raise_errno(EEXIST, "the key is registered already")
                                       : PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_reg_mr(EngineObject *self, PyObject *args) {
    return register_mr(self, args, 0);
}

static PyObject *Engine_rereg_mr(EngineObject *self, PyObject *args) {
    return register_mr(self, args, 1);
}

static PyObject *Engine_dereg_mr(EngineObject *self, PyObject *arg) {
    unsigned long key = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    void *owner;
    Py_BEGIN_ALLOW_THREADS
    owner = tv_engine_dereg(&self->engine, (uint32_t)key);
    Py_END_ALLOW_THREADS
    release_buffer(owner);
    Py_RETURN_NONE;
}

static PyObject *Engine_fileno(EngineObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->closed)
        return tv_py_raise_errno(EBADF, "the context's engine is closed");
    return PyLong_FromLong(self->engine.epfd);
}

static PyObject *Engine_next_event(EngineObject *self, PyObject *arg) {
    int forever;
    uint64_t ns = timeout_ns(arg, &forever);
    if (PyErr_Occurred())
        return NULL;
    if (self->closed)
        Py_RETURN_NONE;
    tv_event *ev;
    Py_BEGIN_ALLOW_THREADS
    ev = tv_engine_next_event(&self->engine, forever ? -1 : (int64_t)ns);
    Py_END_ALLOW_THREADS
    if (ev == NULL)
        Py_RETURN_NONE;
    PyObject *out = Py_BuildValue("(IKs)", ev->type, (unsigned long long)ev->handle, ev->reason);
    free(ev);
    return out;
}

static PyObject *counters(const char *const *names, const uint64_t *values, int n,
                          PyObject *into) {
    for (int i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(values[i]);
        if (v == NULL || PyDict_SetItemString(into, names[i], v) < 0) {
            Py_XDECREF(v);
            return NULL;
        }
        Py_DECREF(v);
    }
    return into;
}

static PyObject *Engine_engine_statistics(EngineObject *self, PyObject *unused) {
    (void)unused;
    uint64_t v[TV_ENG_NSTATS];
    for (int i = 0; i < TV_ENG_NSTATS; i++)
        v[i] = atomic_load(&self->engine.stats[i]);
    PyObject *d = PyDict_New();
    if (d == NULL || counters(tv_engine_stat_names, v, TV_ENG_NSTATS, d) == NULL) {
        Py_XDECREF(d);
        return NULL;
    }
    return d;
}

static PyObject *Engine_close(EngineObject *self, PyObject *unused) {
    (void)unused;
    engine_close(self);
    Py_RETURN_NONE;
}

static PyMethodDef Engine_methods[] = {
    {"reg_mr", (PyCFunction)Engine_reg_mr, METH_VARARGS, NULL},
    {"dereg_mr", (PyCFunction)Engine_dereg_mr, METH_O, NULL},
    {"fileno", (PyCFunction)Engine_fileno, METH_NOARGS, NULL},
    {"rereg_mr", (PyCFunction)Engine_rereg_mr, METH_VARARGS, NULL},
    {"next_event_raw", (PyCFunction)Engine_next_event, METH_O, NULL},
    {"engine_statistics", (PyCFunction)Engine_engine_statistics, METH_NOARGS, NULL},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject tv_py_EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tcpverbs._native.Engine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_doc = "The native engine of one context (see tcpverbs.engine.native).",
};

/* -- Channel ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    tv_channel *ch;
} ChannelObject;

static int Channel_init(ChannelObject *self, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    if (self->ch != NULL)
        return 0;
    self->ch = tv_channel_new();
    if (self->ch == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static void Channel_dealloc(ChannelObject *self) {
    if (self->ch != NULL) {
        tv_channel_destroy(self->ch);
        tv_channel_put(self->ch);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Channel_get_fd(ChannelObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->ch ? self->ch->fd : -1);
}

static PyObject *Channel_get_cq_event(ChannelObject *self, PyObject *arg) {
    int forever;
    uint64_t ns = timeout_ns(arg, &forever);
    if (PyErr_Occurred())
        return NULL;
    uint64_t handle = 0;
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = tv_channel_get_event(self->ch, forever ? -1 : (int64_t)ns, &handle);
    Py_END_ALLOW_THREADS
    if (!got)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(handle);
}

static PyObject *Channel_destroy(ChannelObject *self, PyObject *unused) {
    (void)unused;
    tv_channel_destroy(self->ch);
    Py_RETURN_NONE;
}

static PyMethodDef Channel_methods[] = {
    {"get_cq_event", (PyCFunction)Channel_get_cq_event, METH_O, NULL},
    {"destroy", (PyCFunction)Channel_destroy, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Channel_getset[] = {
    {"fd", (getter)Channel_get_fd, NULL, "eventfd: readable while an event is queued", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tv_py_ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tcpverbs._native.Channel",
    .tp_basicsize = sizeof(ChannelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Channel_init,
    .tp_dealloc = (destructor)Channel_dealloc,
    .tp_methods = Channel_methods,
    .tp_getset = Channel_getset,
};

/* -- CQ ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    tv_cq *cq;
    PyObject *engine;
    PyObject *handle;
} CQObject;

enum { TAKE = 64 };

static int CQ_init(CQObject *self, PyObject *args, PyObject *kwds) {
    (void)kwds;
    PyObject *engine, *channel;
    unsigned long long handle;
    unsigned int cqe;
    if (self->cq != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "CQ initialised twice");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!KIO", &tv_py_EngineType, &engine, &handle, &cqe, &channel))
        return -1;
    if (channel != Py_None && !PyObject_TypeCheck(channel, &tv_py_ChannelType)) {
        PyErr_SetString(PyExc_TypeError, "channel must be a native Channel or None");
        return -1;
    }
    EngineObject *eng = (EngineObject *)engine;
    self->cq = tv_cq_new(&eng->engine, handle, cqe,
                         channel == Py_None ? NULL : ((ChannelObject *)channel)->ch);
    if (self->cq == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_INCREF(engine);
    self->engine = engine;
    self->handle = PyLong_FromUnsignedLongLong(handle);
    return self->handle == NULL ? -1 : 0;
}

static void CQ_dealloc(CQObject *self) {
    if (self->cq != NULL) {
        tv_cq_destroy(self->cq);
        tv_cq_put(self->cq);
    }
    Py_XDECREF(self->handle);
    Py_XDECREF(self->engine);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Completions as a list of WC-layout tuples, or the Overrun raised. */
static PyObject *records(const tv_cqe *e, int got, uint32_t lost) {
    if (got < 0) {
        PyObject *exc = PyObject_CallFunction(Overrun, "I", lost);
        if (exc != NULL) {
            PyErr_SetObject(Overrun, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    PyObject *list = PyList_New(got);
    for (int i = 0; list != NULL && i < got; i++) {
        /* built field by field: Py_BuildValue's format parsing costs more than the rest */
        const uint32_t u32[8] = {e[i].status, e[i].opcode, e[i].vendor_err, e[i].byte_len,
                                 e[i].qp_num, e[i].src_qp, e[i].imm_data, e[i].wc_flags};
        PyObject *t = PyTuple_New(9);
        if (t == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, t);
        PyObject *item = PyLong_FromUnsignedLongLong(e[i].wr_id);
        for (int k = 0; item != NULL; k++) {
            PyTuple_SET_ITEM(t, k, item);
            item = k < 8 ? PyLong_FromUnsignedLong(u32[k]) : NULL;
        }
        if (PyErr_Occurred())
            Py_CLEAR(list);
    }
    return list;
}

/* tcpverbs.WC built in C: a slotted class too, its slots filled at their offsets. */
static const char *const wc_fields[] = {"wr_id",    "status", "opcode",   "vendor_err",
                                        "byte_len", "qp_num", "src_qp",   "imm_data",
                                        "wc_flags", "pkey_index", "slid", "sl",
                                        "dlid_path_bits"};
enum { WC_FIELDS = sizeof wc_fields / sizeof wc_fields[0], WC_FROM_RECORD = 9 };
static PyTypeObject *WC_type;
static Py_ssize_t wc_offsets[WC_FIELDS];
static int wc_fast; /* every field is a plain slot, and there are no others */

static int learn_wc(void) {
    PyObject *cq = PyImport_ImportModule("tcpverbs.cq");
    PyObject *type = cq ? PyObject_GetAttrString(cq, "WC") : NULL;
    Py_XDECREF(cq);
    if (type == NULL || !PyType_Check(type)) {
        Py_XDECREF(type);
        return -1;
    }
    WC_type = (PyTypeObject *)type; /* kept for the process */
    PyObject *slots = PyObject_GetAttrString(type, "__slots__");
    wc_fast = slots != NULL && PySequence_Check(slots) && PySequence_Size(slots) == WC_FIELDS;
    Py_XDECREF(slots);
    for (int i = 0; wc_fast && i < WC_FIELDS; i++) {
        PyObject *d = PyObject_GetAttrString(type, wc_fields[i]);
        wc_fast = d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                  ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (wc_fast)
            wc_offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_XDECREF(d);
    }
    PyErr_Clear();
    return 0;
}

static PyObject *build_wc(const tv_cqe *e) {
    const uint64_t values[WC_FIELDS] = {e->wr_id,  e->status, e->opcode,   e->vendor_err,
                                        e->byte_len, e->qp_num, e->src_qp, e->imm_data,
                                        e->wc_flags, 0,         0,         0,
                                        0};
    if (WC_type == &tv_py_WCType) /* the compiled twin (py_wc.c): fields are C integers */
        return tv_py_wc_new(values);
    if (!wc_fast) /* the class changed shape: build it the ordinary way */
        return PyObject_CallFunction((PyObject *)WC_type, "KKKKKKKKK", values[0], values[1],
                                     values[2], values[3], values[4], values[5], values[6],
                                     values[7], values[8]);
    PyObject *wc = WC_type->tp_alloc(WC_type, 0);
    for (int i = 0; wc != NULL && i < WC_FIELDS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(values[i]);
        if (v == NULL)
            Py_CLEAR(wc);
        else
            *(PyObject **)((char *)wc + wc_offsets[i]) = v; /* the slot was empty */
    }
    return wc;
}

/* Take completions (progress first when there are none): their count, or -1 (lost). */
static int take(CQObject *self, tv_cqe *e, long n, uint32_t *lost) {
    tv_cq *cq = self->cq;
    int want = n < TAKE ? (int)(n > 0 ? n : 0) : TAKE;
    atomic_fetch_add(&cq->stats[TV_CQ_POLLS], 1);
    int got = want ? tv_cq_take(cq, e, want, lost) : 0;
    if (got == 0 && want) {
        Py_BEGIN_ALLOW_THREADS
        tv_cq_progress(cq);
        Py_END_ALLOW_THREADS
        got = tv_cq_take(cq, e, want, lost);
    }
    if (got == 0)
        atomic_fetch_add(&cq->stats[TV_CQ_POLLS_EMPTY], 1);
    return got; /* more than TAKE wanted: the next poll takes the rest */
}

/* What poll() and wait() took: WC-layout tuples, or tcpverbs.WC objects (*as_wc*). */
static PyObject *completions_as(const tv_cqe *e, int got, uint32_t lost, int as_wc) {
    if (got < 0 || !as_wc)
        return records(e, got, lost); /* (raises the Overrun) */
    PyObject *list = PyList_New(got);
    for (int i = 0; list != NULL && i < got; i++) {
        PyObject *wc = build_wc(&e[i]);
        if (wc == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, wc);
    }
    return list;
}

/* poll() and poll_wc() */
static PyObject *poll_as(CQObject *self, PyObject *arg, int as_wc) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    tv_cqe e[TAKE];
    uint32_t lost = 0;
    int got = take(self, e, n, &lost);
    return completions_as(e, got, lost, as_wc);
}

static PyObject *CQ_poll(CQObject *self, PyObject *arg) { return poll_as(self, arg, 0); }

static PyObject *CQ_poll_wc(CQObject *self, PyObject *arg) { return poll_as(self, arg, 1); }

/* wait() and wait_wc() */
static PyObject *wait_as(CQObject *self, PyObject *args, int as_wc) {
    long n;
    PyObject *timeout;
    long long spin_us;
    if (!PyArg_ParseTuple(args, "lOL", &n, &timeout, &spin_us))
        return NULL;
    int forever;
    uint64_t ns = timeout_ns(timeout, &forever);
    if (PyErr_Occurred())
        return NULL;
    uint64_t deadline = forever ? 0 : tv_now() + (ns ? ns : 1);
    tv_cqe e[TAKE];
    uint32_t lost = 0;
    int want = n < TAKE ? (int)(n > 0 ? n : 1) : TAKE;
    int got;
    uint64_t spin = spin_us > 0 ? (uint64_t)spin_us * 1000u : 0;
    Py_BEGIN_ALLOW_THREADS
    got = tv_cq_wait(self->cq, e, want, &lost, spin, deadline);
    Py_END_ALLOW_THREADS
    return completions_as(e, got, lost, as_wc);
}

static PyObject *CQ_wait(CQObject *self, PyObject *args) { return wait_as(self, args, 0); }

static PyObject *CQ_wait_wc(CQObject *self, PyObject *args) { return wait_as(self, args, 1); }

static PyObject *CQ_req_notify(CQObject *self, PyObject *arg) {
    int solicited = PyObject_IsTrue(arg);
    if (solicited < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    tv_cq_req_notify(self->cq, solicited);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *CQ_statistics(CQObject *self, PyObject *unused) {
    (void)unused;
    uint64_t v[TV_CQ_NSTATS];
    for (int i = 0; i < TV_CQ_NSTATS; i++)
        v[i] = atomic_load(&self->cq->stats[i]);
    PyObject *d = PyDict_New();
    if (d == NULL || counters(tv_cq_stat_names, v, TV_CQ_NSTATS, d) == NULL) {
        Py_XDECREF(d);
        return NULL;
    }
    PyObject *pending = PyLong_FromUnsignedLong(tv_cq_pending(self->cq));
    if (pending == NULL || PyDict_SetItemString(d, "pending", pending) < 0) {
        Py_XDECREF(pending);
        Py_DECREF(d);
        return NULL;
    }
    Py_DECREF(pending);
    return d;
}

static PyObject *CQ_destroy(CQObject *self, PyObject *unused) {
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    tv_cq_destroy(self->cq);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *CQ_get_pending(CQObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(tv_cq_pending(self->cq));
}

static PyObject *CQ_get_handle(CQObject *self, void *closure) {
    (void)closure;
    Py_INCREF(self->handle);
    return self->handle;
}

static PyMethodDef CQ_methods[] = {
    {"poll", (PyCFunction)CQ_poll, METH_O, NULL},
    {"poll_wc", (PyCFunction)CQ_poll_wc, METH_O, "poll(), as tcpverbs.WC objects"},
    {"wait", (PyCFunction)CQ_wait, METH_VARARGS, NULL},
    {"wait_wc", (PyCFunction)CQ_wait_wc, METH_VARARGS, "wait(), as tcpverbs.WC objects"},
    {"req_notify", (PyCFunction)CQ_req_notify, METH_O, NULL},
    {"statistics", (PyCFunction)CQ_statistics, METH_NOARGS, NULL},
    {"destroy", (PyCFunction)CQ_destroy, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef CQ_getset[] = {
    {"pending", (getter)CQ_get_pending, NULL, "completions waiting to be polled", NULL},
    {"handle", (getter)CQ_get_handle, NULL, "the verbs layer's handle", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tv_py_CQType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tcpverbs._native.CQ",
    .tp_basicsize = sizeof(CQObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CQ_init,
    .tp_dealloc = (destructor)CQ_dealloc,
    .tp_methods = CQ_methods,
    .tp_getset = CQ_getset,
};

/* -- QP ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    tv_qp *qp;
    PyObject *engine, *scq, *rcq;
} QPObject;

static int QP_init(QPObject *self, PyObject *args, PyObject *kwds) {
    (void)kwds;
    PyObject *engine, *scq, *rcq, *srq = Py_None;
    tv_qp_spec spec = {0};
    unsigned long long handle, pd;
    if (self->qp != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "QP initialised twice");
        return -1;
    }
    spec.mtu = 4096;
    if (!PyArg_ParseTuple(args, "O!KIKIIIIIpiO!O!|OI", &tv_py_EngineType, &engine, &handle,
                          &spec.qp_num, &pd, &spec.max_send_wr, &spec.max_recv_wr,
                          &spec.max_send_sge, &spec.max_recv_sge, &spec.max_inline,
                          &spec.sq_sig_all, &spec.wire, &tv_py_CQType, &scq, &tv_py_CQType,
                          &rcq, &srq, &spec.mtu))
        return -1;
    if (spec.mtu == 0 || spec.mtu > 65507) { /* a UDP datagram's payload at most */
        PyErr_Format(PyExc_ValueError, "mtu %u is not 1..65507", spec.mtu);
        return -1;
    }
    if (srq != Py_None) {
        spec.srq = tv_py_srq_of(srq);
        if (spec.srq == NULL)
            return -1;
    }
    spec.handle = handle;
    spec.pd = pd;
    self->qp = tv_qp_new(&((EngineObject *)engine)->engine, &spec, ((CQObject *)scq)->cq,
                         ((CQObject *)rcq)->cq);
    if (self->qp == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_INCREF(engine);
    Py_INCREF(scq);
    Py_INCREF(rcq);
    self->engine = engine;
    self->scq = scq;
    self->rcq = rcq;
    return 0; /* (the C QP holds its SRQ; the SRQ object need not outlive it) */
}

static void QP_dealloc(QPObject *self) {
    tv_qp *qp = self->qp;
    if (qp != NULL) {
        Py_BEGIN_ALLOW_THREADS
        tv_qp_destroy(qp);
        tv_qp_put(qp);
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(self->scq);
    Py_XDECREF(self->rcq);
    Py_XDECREF(self->engine);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Reading WR fields fast: SendWR, RecvWR and SGE are slotted classes, so for objects of
 * exactly those types a field is read at its slot's offset (found once, from the class's
 * member descriptors) instead of through the attribute protocol.  Anything else -- a
 * subclass, a duck-typed WR -- takes PyObject_GetAttr.  Fields are named by number, so
 * a read is one table lookup (this runs for every field of every WR posted). */
enum wr_field { F_WR_ID, F_OPCODE, F_NUM_SGE, F_IMM_DATA, F_SG, F_SEND_FLAGS, F_NEXT_WR,
                F_REMOTE_ADDR, F_RKEY, F_COMPARE_ADD, F_SWAP, F_ADDR, F_LENGTH, F_LKEY,
                N_FIELDS };
static PyObject **const field_names[N_FIELDS] = {
    &s_wr_id, &s_opcode, &s_num_sge, &s_imm_data, &s_sg, &s_send_flags, &s_next_wr,
    &s_remote_addr, &s_rkey, &s_compare_add, &s_swap, &s_addr, &s_length, &s_lkey};
typedef struct {
    PyTypeObject *type;
    Py_ssize_t offsets[N_FIELDS]; /* -1: not a plain slot of this class */
} slot_layout;
static slot_layout layouts[3]; /* SendWR, RecvWR, SGE */

static void learn_layout(slot_layout *l, PyObject *module, const char *cls,
                         const enum wr_field *fields, int n) {
    for (int f = 0; f < N_FIELDS; f++)
        l->offsets[f] = -1;
    PyObject *type = PyObject_GetAttrString(module, cls);
    if (type == NULL || !PyType_Check(type)) {
        Py_XDECREF(type);
        PyErr_Clear(); /* no fast path: every read takes getattr */
        return;
    }
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttr(type, *field_names[fields[i]]);
        if (d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
                l->offsets[fields[i]] = m->offset;
        }
        Py_XDECREF(d);
        PyErr_Clear();
    }
    l->type = (PyTypeObject *)type; /* kept for the process */
}

static int learn_layouts(void) {
    PyObject *wr = PyImport_ImportModule("tcpverbs.wr");
    if (wr == NULL)
        return -1;
    static const enum wr_field send[] = {F_WR_ID, F_OPCODE, F_NUM_SGE, F_IMM_DATA,
                                         F_SG, F_SEND_FLAGS, F_NEXT_WR, F_REMOTE_ADDR,
                                         F_RKEY, F_COMPARE_ADD, F_SWAP};
    static const enum wr_field recv[] = {F_WR_ID, F_NUM_SGE, F_SG, F_NEXT_WR};
    static const enum wr_field sge[] = {F_ADDR, F_LENGTH, F_LKEY};
    learn_layout(&layouts[0], wr, "SendWR", send, sizeof send / sizeof send[0]);
    learn_layout(&layouts[1], wr, "RecvWR", recv, sizeof recv / sizeof recv[0]);
    learn_layout(&layouts[2], wr, "SGE", sge, sizeof sge / sizeof sge[0]);
    Py_DECREF(wr);
    return 0;
}

/* obj.<field> read at its slot, borrowed; NULL when that needs getattr (get_field). */
static PyObject *peek_field(PyObject *obj, enum wr_field f) {
    PyTypeObject *t = Py_TYPE(obj);
    for (int k = 0; k < 3; k++)
        if (layouts[k].type == t)
            return layouts[k].offsets[f] >= 0
                       ? *(PyObject **)((char *)obj + layouts[k].offsets[f])
                       : NULL;
    return NULL;
}

/* obj.<field> as a new reference (NULL with an exception if it has none). */
static PyObject *get_field(PyObject *obj, enum wr_field f) {
    PyObject *v = peek_field(obj, f);
    /* unset, not a slot, or another class: getattr (which raises the usual error) */
    return v != NULL ? Py_NewRef(v) : PyObject_GetAttr(obj, *field_names[f]);
}

/* An unsigned field of `bits` bits: 0, or -1 (not an int, out of range, or missing). */
static int read_uint(PyObject *obj, enum wr_field f, int bits, uint64_t *out) {
    /* borrowed when read at the slot: nothing below runs Python code, so it stays put */
    PyObject *v = peek_field(obj, f), *owned = NULL;
    if (v == NULL && (v = owned = get_field(obj, f)) == NULL)
        return -1;
    int bad = !PyLong_Check(v);
    unsigned long long x = 0;
    if (!bad) {
        /* the common case, a non-negative int below 2**63, without the byte-array path
         * PyLong_AsUnsignedLongLong takes for any int of more than one digit (addresses) */
        int overflow = 0;
        long long small = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow == 0 && small >= 0) {
            x = (unsigned long long)small;
        } else {
            x = PyLong_AsUnsignedLongLong(v);
            bad = x == (unsigned long long)-1 && PyErr_Occurred();
        }
    }
    Py_XDECREF(owned);
    if (bad || (bits < 64 && x >> bits))
        return -1;
    *out = x;
    return 0;
}

/* A growing buffer of SGEs for one chain: on the stack first. */
typedef struct {
    tv_sge_in *v;
    size_t len, cap;
    tv_sge_in local[64];
} sge_buf;

static int read_sges(PyObject *wr, uint64_t num_sge, sge_buf *b, uint32_t *sg_len,
                     size_t *start) {
    PyObject *sg = get_field(wr, F_SG);
    if (sg == NULL)
        return -1;
    *start = b->len;
    *sg_len = 0;
    if (sg == Py_None) {
        Py_DECREF(sg);
        return 0;
    }
    if (!PyList_Check(sg) && !PyTuple_Check(sg)) {
        Py_DECREF(sg);
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(sg);
    *sg_len = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
    Py_ssize_t use = (Py_ssize_t)num_sge < len ? (Py_ssize_t)num_sge : len;
    for (Py_ssize_t i = 0; i < use; i++) {
        if (b->len == b->cap) {
            size_t cap = b->cap * 2;
            tv_sge_in *v = PyMem_Malloc(cap * sizeof *v);
            if (v == NULL) {
                Py_DECREF(sg);
                PyErr_NoMemory();
                return -2;
            }
            memcpy(v, b->v, b->len * sizeof *v);
            if (b->v != b->local)
                PyMem_Free(b->v);
            b->v = v;
            b->cap = cap;
        }
        PyObject *sge = PySequence_Fast_GET_ITEM(sg, i);
        Py_INCREF(sge); /* the list may change under attribute reads */
        uint64_t addr, length, lkey;
        int bad = read_uint(sge, F_ADDR, 64, &addr) || read_uint(sge, F_LENGTH, 32, &length) ||
                  read_uint(sge, F_LKEY, 32, &lkey);
        Py_DECREF(sge);
        if (bad) {
            Py_DECREF(sg);
            return -1;
        }
        b->v[b->len++] = (tv_sge_in){addr, (uint32_t)length, (uint32_t)lkey};
        if (PySequence_Fast_GET_SIZE(sg) != len) { /* resized by a property: refuse */
            Py_DECREF(sg);
            return -1;
        }
    }
    Py_DECREF(sg);
    return 0;
}

/* The failure of WR `index` as a PostFailure (a UD send's bad field by its name). */
static PyObject *post_failure(Py_ssize_t index, const tv_post_result *res) {
    PyObject *fault = PyObject_CallFunction(PostFault, "I", res->fault);
    if (fault == NULL)
        return NULL;
    PyObject *out;
    if (res->fault == TV_FAULT_BAD_FIELD) {
        const char *field = res->value == TV_FIELD_AH ? "ah" : "remote_qpn";
        PyObject *kw = Py_BuildValue("{s:K,s:s}", "limit", (unsigned long long)res->limit,
                                     "field", field);
        PyObject *pos = Py_BuildValue("(nO)", index, fault);
        out = kw != NULL && pos != NULL ? PyObject_Call(PostFailure, pos, kw) : NULL;
        Py_XDECREF(kw);
        Py_XDECREF(pos);
    } else {
        out = PyObject_CallFunction(PostFailure, "nOKK", index, fault,
                                    (unsigned long long)res->value,
                                    (unsigned long long)res->limit);
    }
    Py_DECREF(fault);
    return out;
}

/* A UD send's destination: wr.ah (an AH: its .dest.raw, 16 bytes, and .pd.handle),
 * wr.remote_qpn and wr.remote_qkey.  0, -1 (a field is not what it must be) or -2.
 * An object that is no AH leaves in->ah_ok 0 (the post refuses it, naming "ah"). */
static int read_ud(PyObject *wr, tv_send_in *in) {
    PyObject *qpn = PyObject_GetAttrString(wr, "remote_qpn");
    PyObject *qkey = qpn != NULL ? PyObject_GetAttrString(wr, "remote_qkey") : NULL;
    int bad = qkey == NULL;
    if (!bad) {
        in->remote_qpn = PyLong_Check(qpn) ? PyLong_AsUnsignedLongLong(qpn) : (uint64_t)-1;
        unsigned long long k = PyLong_Check(qkey) ? PyLong_AsUnsignedLongLong(qkey) : ~0ull;
        bad = PyErr_Occurred() != NULL || in->remote_qpn > UINT32_MAX || k > UINT32_MAX;
        in->remote_qkey = (uint32_t)k;
    }
    Py_XDECREF(qpn);
    Py_XDECREF(qkey);
    if (bad) {
        PyErr_Clear();
        return -1; /* find_bad_field names it */
    }
    in->ah_ok = 0;
    PyObject *ah = PyObject_GetAttrString(wr, "ah");
    PyObject *dest = ah != NULL ? PyObject_GetAttrString(ah, "dest") : NULL;
    PyObject *raw = dest != NULL ? PyObject_GetAttrString(dest, "raw") : NULL;
    PyObject *pd = raw != NULL ? PyObject_GetAttrString(ah, "pd") : NULL;
    PyObject *handle = pd != NULL ? PyObject_GetAttrString(pd, "handle") : NULL;
    if (handle != NULL && PyBytes_Check(raw) && PyBytes_GET_SIZE(raw) == 16 &&
        PyLong_Check(handle)) {
        in->ah_pd = PyLong_AsUnsignedLongLong(handle);
        memcpy(in->ah_gid, PyBytes_AS_STRING(raw), 16);
        in->ah_ok = !PyErr_Occurred();
    }
    PyErr_Clear(); /* no AH: refused by the post, with its name */
    Py_XDECREF(ah);
    Py_XDECREF(dest);
    Py_XDECREF(raw);
    Py_XDECREF(pd);
    Py_XDECREF(handle);
    return 0;
}

/* WR `index` could not be read: name the culprit (find_bad_field), or re-raise. */
static PyObject *bad_field(Py_ssize_t index, PyObject *wr, PyObject *fields) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *found = PyObject_CallFunctionObjArgs(find_bad_field, wr, fields, NULL);
    if (found == NULL || found == Py_None) {
        Py_XDECREF(found);
        if (found != NULL) /* not about the WR: the original error is the story */
            PyErr_Restore(type, value, tb);
        else {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "a WR could not be read");
        return NULL;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    PyObject *fault = PyObject_GetAttrString(PostFault, "BAD_FIELD");
    PyObject *path = PyTuple_Check(found) && PyTuple_GET_SIZE(found) == 2
                         ? PyTuple_GET_ITEM(found, 0) : NULL;
    PyObject *bits = path ? PyTuple_GET_ITEM(found, 1) : NULL;
    PyObject *out = NULL;
    if (fault != NULL && path != NULL) {
        PyObject *kw = Py_BuildValue("{s:O,s:O}", "limit", bits, "field", path);
        PyObject *pos = Py_BuildValue("(nO)", index, fault);
        if (kw != NULL && pos != NULL)
            out = PyObject_Call(PostFailure, pos, kw);
        Py_XDECREF(kw);
        Py_XDECREF(pos);
    }
    Py_XDECREF(fault);
    Py_DECREF(found);
    return out;
}

/* One WR of a chain, read into C (a receive uses wr_id, num_sge and the SGEs only). */
typedef struct {
    tv_send_in wr;
    size_t sge_start;
} post_item;

/* Read WR `wr` into *it: 0, -1 (a field is not what it must be) or -2 (an error). */
static int read_wr(PyObject *wr, int send, int ud, post_item *it, sge_buf *sges) {
    uint64_t wr_id, num_sge, opcode = 0, imm = 0, flags = 0, raddr = 0, rkey = 0, cadd = 0,
                              swap = 0;
    if (read_uint(wr, F_WR_ID, 64, &wr_id) ||
        (send && (read_uint(wr, F_OPCODE, 32, &opcode) ||
                  read_uint(wr, F_SEND_FLAGS, 32, &flags) ||
                  read_uint(wr, F_IMM_DATA, 32, &imm) || read_uint(wr, F_RKEY, 32, &rkey) ||
                  read_uint(wr, F_REMOTE_ADDR, 64, &raddr) ||
                  read_uint(wr, F_COMPARE_ADD, 64, &cadd) ||
                  read_uint(wr, F_SWAP, 64, &swap))) ||
        read_uint(wr, F_NUM_SGE, 31, &num_sge))
        return -1;
    uint32_t sg_len;
    int r = read_sges(wr, num_sge, sges, &sg_len, &it->sge_start);
    if (r < 0)
        return r;
    /* field by field: the UD destination is written (read_ud) and read only for a UD
     * send, so the common post does not clear it (a WR is read on every post) */
    tv_send_in *in = &it->wr;
    in->wr_id = wr_id;
    in->remote_addr = raddr;
    in->compare_add = cadd;
    in->swap = swap;
    in->opcode = (uint32_t)opcode;
    in->send_flags = (uint32_t)flags;
    in->imm = (uint32_t)imm;
    in->rkey = (uint32_t)rkey;
    in->num_sge = (uint32_t)num_sge;
    in->sg_len = sg_len;
    in->sge = NULL;
    return send && ud ? read_ud(wr, in) : 0;
}

/* Post the items read, in order, until one is refused; how many were posted.  Called
 * holding poster->lock, which it releases. */
static size_t post_items(const tv_py_poster *poster, post_item *items, size_t n,
                         const sge_buf *sges, int send, tv_post_result *res) {
    size_t posted = 0;
    for (; posted < n; posted++) {
        tv_send_in *in = &items[posted].wr;
        in->sge = sges->v + items[posted].sge_start;
        poster->post(poster->target, in, send, res);
        if (res->fault != TV_FAULT_NONE)
            break;
    }
    if (posted && poster->done != NULL) /* WRs before a refused one were posted */
        poster->done(poster->target, send);
    if (poster->lock != NULL)
        pthread_mutex_unlock(poster->lock);
    return posted;
}

PyObject *tv_py_post_chain(const tv_py_poster *poster, PyObject *first, int send) {
    uint32_t depth = poster->depth;
    post_item local[16], *items = local;
    size_t cap = 16, n = 0;
    sge_buf sges; /* (not zeroed: 2 KiB of stores per post for nothing) */
    sges.v = sges.local;
    sges.len = 0;
    sges.cap = sizeof sges.local / sizeof sges.local[0];
    PyObject *bad_wr = NULL, *result = NULL;
    int failed = 0;
    PyObject *wr = first;
    Py_INCREF(wr);
    while (wr != Py_None && n <= depth) {
        if (n == cap) {
            post_item *grown = PyMem_Malloc(cap * 2 * sizeof *grown);
            if (grown == NULL) {
                PyErr_NoMemory();
                failed = 1;
                break;
            }
            memcpy(grown, items, n * sizeof *grown);
            if (items != local)
                PyMem_Free(items);
            items = grown;
            cap *= 2;
        }
        int r = read_wr(wr, send, poster->ud, &items[n], &sges);
        if (r == -2) {
            failed = 1;
            break;
        }
        if (r < 0) {
            bad_wr = wr;
            break;
        }
        n++;
        PyObject *next = get_field(wr, F_NEXT_WR);
        Py_DECREF(wr);
        wr = next;
        if (wr == NULL) {
            failed = 1;
            break;
        }
    }
    if (failed) {
        Py_XDECREF(wr);
        goto out;
    }
    tv_post_result res = {0};
    size_t posted;
    if (poster->quiet && (poster->lock == NULL || pthread_mutex_trylock(poster->lock) == 0)) {
        posted = post_items(poster, items, n, &sges, send, &res);
    } else {
        Py_BEGIN_ALLOW_THREADS
        if (poster->lock != NULL)
            pthread_mutex_lock(poster->lock);
        posted = post_items(poster, items, n, &sges, send, &res);
        Py_END_ALLOW_THREADS
    }
    if (res.fault != TV_FAULT_NONE)
        result = post_failure((Py_ssize_t)posted, &res);
    else if (bad_wr != NULL)
        result = bad_field((Py_ssize_t)n, bad_wr, send ? SEND_WR_FIELDS : RECV_WR_FIELDS);
    else
        result = Py_NewRef(Py_None);
    Py_XDECREF(wr);
out:
    if (items != local)
        PyMem_Free(items);
    if (sges.v != sges.local)
        PyMem_Free(sges.v);
    if (failed && !PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "posting failed");
    return failed ? NULL : result;
}

static void qp_post_one(void *target, const tv_send_in *in, int send, tv_post_result *res) {
    tv_qp *qp = target;
    if (send)
        tv_qp_post_send(qp, in, res);
    else
        tv_qp_post_recv(qp, in->wr_id, in->sge, in->num_sge, in->sg_len, res);
}

static void qp_posted(void *target, int send) {
    tv_qp_posted(target, send); /* they must go out */
}

static PyObject *qp_post(QPObject *self, PyObject *first, int send) {
    tv_qp *qp = self->qp;
    /* an rc or UD receive is only queued: no socket I/O, nothing to push after it (a
     * stream receive may take bytes already waiting, and a send goes out) */
    int quiet_recv = !send && qp->wire != TV_WIRE_STREAM;
    tv_py_poster poster = {qp_post_one, quiet_recv ? NULL : qp_posted, &qp->lock, qp,
                           send ? qp->max_send_wr : qp->max_recv_wr, quiet_recv,
                           qp->wire == TV_WIRE_UD};
    return tv_py_post_chain(&poster, first, send);
}

static PyObject *QP_post_send(QPObject *self, PyObject *first) { return qp_post(self, first, 1); }

static PyObject *QP_post_recv(QPObject *self, PyObject *first) { return qp_post(self, first, 0); }

static int read_params(PyObject *p, tv_params *out) {
    static const char *const names[] = {"access_flags", "max_rd_atomic", "max_dest_rd_atomic",
                                        "rnr_retry", "min_rnr_timer", "timeout", "retry_cnt",
                                        "dest_qp_num", "rq_psn", "sq_psn", "qkey"};
    uint32_t *fields[] = {&out->access_flags, &out->max_rd_atomic, &out->max_dest_rd_atomic,
                          &out->rnr_retry, &out->min_rnr_timer, &out->timeout,
                          &out->retry_cnt, &out->dest_qp_num, &out->rq_psn, &out->sq_psn,
                          &out->qkey};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        PyObject *v = PyObject_GetAttrString(p, names[i]);
        if (v == NULL)
            return -1;
        unsigned long x = PyLong_AsUnsignedLong(v);
        Py_DECREF(v);
        if (x == (unsigned long)-1 && PyErr_Occurred())
            return -1;
        *fields[i] = (uint32_t)x;
    }
    return 0;
}

static PyObject *QP_modify(QPObject *self, PyObject *args) {
    int expect, state;
    PyObject *params;
    if (!PyArg_ParseTuple(args, "iiO", &expect, &state, &params))
        return NULL;
    tv_params p;
    if (read_params(params, &p) < 0)
        return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = tv_qp_modify(self->qp, expect, state, &p);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

static PyObject *QP_attach_fd(QPObject *self, PyObject *args) {
    int fd;
    Py_buffer hello = {0};
    double timeout;
    unsigned int backlog;
    unsigned long long zerocopy_min;
    if (!PyArg_ParseTuple(args, "iz*dIK", &fd, &hello, &timeout, &backlog, &zerocopy_min))
        return NULL;
    if (hello.buf != NULL && hello.len != TV_HELLO_SIZE) {
        PyBuffer_Release(&hello);
        PyErr_SetString(PyExc_ValueError, "a hello is 40 bytes");
        return NULL;
    }
    uint64_t ns = timeout > 0 ? (uint64_t)(timeout * 1e9) : 0;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = tv_qp_attach(self->qp, fd, hello.buf, ns, backlog, zerocopy_min);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&hello);
    return PyLong_FromLong(ok);
}

static PyObject *QP_fail(QPObject *self, PyObject *args) {
    int kind, err, setup;
    const char *msg;
    if (!PyArg_ParseTuple(args, "iisp", &kind, &err, &msg, &setup))
        return NULL;
    tv_failure f = tv_failure_of(kind, err, msg);
    f.setup = setup;
    Py_BEGIN_ALLOW_THREADS
    tv_qp_fail_with(self->qp, &f);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *QP_reset(QPObject *self, PyObject *unused) {
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    tv_qp_reset(self->qp);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *QP_destroy(QPObject *self, PyObject *unused) {
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    tv_qp_destroy(self->qp);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *QP_error_raw(QPObject *self, PyObject *unused) {
    (void)unused;
    tv_qp *qp = self->qp;
    int has, kind, err;
    char msg[TV_MSG_LEN];
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&qp->lock);
    has = qp->has_error;
    kind = qp->err_kind;
    err = qp->err_errno;
    memcpy(msg, qp->err_msg, sizeof msg);
    pthread_mutex_unlock(&qp->lock);
    Py_END_ALLOW_THREADS
    return has ? Py_BuildValue("(iis)", kind, err, msg) : Py_NewRef(Py_None);
}

static PyObject *QP_statistics(QPObject *self, PyObject *unused) {
    (void)unused;
    tv_qp *qp = self->qp;
    uint64_t v[TV_QP_NSTATS + 3];
    v[0] = tv_qp_slots_used(qp, 1);
    v[1] = tv_qp_slots_used(qp, 0);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&qp->lock);
    v[2] = qp->wire == TV_WIRE_RC   ? tv_rcconn_tx_queued(qp)
           : qp->wire == TV_WIRE_UD ? 0 /* a datagram goes whole, or waits in the SQ */
                                    : qp->conn.wire_count - qp->conn.tx_index;
    memcpy(v + 3, qp->stats, sizeof qp->stats);
    pthread_mutex_unlock(&qp->lock);
    Py_END_ALLOW_THREADS
    static const char *const outstanding[] = {"sq_outstanding", "rq_outstanding",
                                              "tx_outstanding"};
    PyObject *d = PyDict_New();
    if (d == NULL || counters(outstanding, v, 3, d) == NULL ||
        counters(tv_qp_stat_names, v + 3, TV_QP_NSTATS, d) == NULL) {
        Py_XDECREF(d);
        return NULL;
    }
    return d;
}

static PyObject *QP_get_state(QPObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(atomic_load(&self->qp->state));
}

static PyObject *QP_get_established(QPObject *self, void *closure) {
    (void)closure;
    tv_qp *qp = self->qp;
    int up;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&qp->lock);
    up = qp->conn.fd >= 0 && tv_conn_established(qp);
    pthread_mutex_unlock(&qp->lock);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(up);
}

static PyObject *QP_get_qp_num(QPObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLong(self->qp->qp_num);
}

static PyMethodDef QP_methods[] = {
    {"post_send", (PyCFunction)QP_post_send, METH_O, NULL},
    {"post_recv", (PyCFunction)QP_post_recv, METH_O, NULL},
    {"modify", (PyCFunction)QP_modify, METH_VARARGS, NULL},
    {"attach_fd", (PyCFunction)QP_attach_fd, METH_VARARGS, NULL},
    {"fail_raw", (PyCFunction)QP_fail, METH_VARARGS, NULL},
    {"reset", (PyCFunction)QP_reset, METH_NOARGS, NULL},
    {"destroy_raw", (PyCFunction)QP_destroy, METH_NOARGS, NULL},
    {"error_raw", (PyCFunction)QP_error_raw, METH_NOARGS, NULL},
    {"statistics", (PyCFunction)QP_statistics, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef QP_getset[] = {
    {"state_raw", (getter)QP_get_state, NULL, "ibv_qp_state as an int", NULL},
    {"established", (getter)QP_get_established, NULL, "the connection is up", NULL},
    {"qp_num", (getter)QP_get_qp_num, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tv_py_QPType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tcpverbs._native.QP",
    .tp_basicsize = sizeof(QPObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)QP_init,
    .tp_dealloc = (destructor)QP_dealloc,
    .tp_methods = QP_methods,
    .tp_getset = QP_getset,
};
