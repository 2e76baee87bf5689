/* The CPython face of the native engine's shared receive queues (srq.c): the SRQ class
 * tcpverbs/engine/native.py builds NativeSRQ on (tcpverbs.engine.api.SRQEngine).
 *
 * GIL: held on entry; released around posting and anything that takes the SRQ's lock
 * (a QP may hold it briefly while the engine thread places a message).
 * Ownership: the object holds its Engine object (the memory table lives as long as it)
 * and one reference on the C SRQ; each QP using it holds another (engine.h).
 */
#include "binding.h"

#include <errno.h>

typedef struct {
    PyObject_HEAD
    tv_srq *srq;
    PyObject *engine;
} SRQObject;

static int SRQ_init(SRQObject *self, PyObject *args, PyObject *kwds) {
    (void)kwds;
    PyObject *engine;
    unsigned long long handle, pd;
    unsigned int max_wr, max_sge;
    if (self->srq != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SRQ initialised twice");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!KKII", &tv_py_EngineType, &engine, &handle, &pd, &max_wr,
                          &max_sge))
        return -1;
    self->srq = tv_srq_new(tv_py_engine_of(engine), handle, pd, max_wr, max_sge);
    if (self->srq == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_INCREF(engine);
    self->engine = engine;
    return 0;
}

static void SRQ_dealloc(SRQObject *self) {
    tv_srq *srq = self->srq;
    if (srq != NULL) {
        Py_BEGIN_ALLOW_THREADS
        tv_srq_destroy(srq);
        tv_srq_put(srq);
        Py_END_ALLOW_THREADS
    }
    Py_XDECREF(self->engine);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

tv_srq *tv_py_srq_of(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &tv_py_SRQType)) {
        PyErr_SetString(PyExc_TypeError, "an SRQ of the native engine is needed");
        return NULL;
    }
    return ((SRQObject *)obj)->srq;
}

static void srq_post_one(void *target, const tv_send_in *in, int send, tv_post_result *res) {
    (void)send; /* receives only */
    tv_srq_post_recv(target, in->wr_id, in->sge, in->num_sge, in->sg_len, res);
}

static PyObject *SRQ_post_recv(SRQObject *self, PyObject *first) {
    tv_srq *srq = self->srq;
    tv_py_poster poster = {srq_post_one, NULL, NULL, srq, srq->max_wr, 0, 0};
    return tv_py_post_chain(&poster, first, 0);
}

/* An optional count argument: None, or an int 0..2**32-1 in *out (set = 1). */
static int count_arg(PyObject *arg, int *set, uint32_t *out) {
    *set = arg != Py_None;
    if (!*set)
        return 0;
    unsigned long v = PyLong_AsUnsignedLong(arg);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "more than 32 bits");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static PyObject *SRQ_modify(SRQObject *self, PyObject *args) {
    PyObject *max_wr_arg, *max_sge_arg, *limit_arg;
    if (!PyArg_ParseTuple(args, "OOO", &max_wr_arg, &max_sge_arg, &limit_arg))
        return NULL;
    int set_max, set_sge, set_limit;
    uint32_t max_wr = 0, max_sge = 0, limit = 0;
    if (count_arg(max_wr_arg, &set_max, &max_wr) < 0 ||
        count_arg(max_sge_arg, &set_sge, &max_sge) < 0 ||
        count_arg(limit_arg, &set_limit, &limit) < 0)
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->srq->lock); /* what is not given stays */
    if (!set_max)
        max_wr = self->srq->max_wr;
    if (!set_sge)
        max_sge = self->srq->max_sge;
    pthread_mutex_unlock(&self->srq->lock);
    err = tv_srq_modify(self->srq, set_max || set_sge, max_wr, max_sge, set_limit, limit);
    Py_END_ALLOW_THREADS
    if (err == EINVAL)
        return tv_py_raise_errno(err, "Failed to modify SRQ: max_wr below the WRs it holds, "
                                      "or max_sge below what it was");
    if (err != 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *SRQ_destroy(SRQObject *self, PyObject *unused) {
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    tv_srq_destroy(self->srq);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The fields read under the SRQ's lock (a QP may change them meanwhile). */
static PyObject *locked_field(SRQObject *self, const uint32_t *field) {
    uint32_t v;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->srq->lock);
    v = *field;
    pthread_mutex_unlock(&self->srq->lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(v);
}

static PyObject *SRQ_get_max_wr(SRQObject *self, void *closure) {
    (void)closure;
    return locked_field(self, &self->srq->max_wr);
}

static PyObject *SRQ_get_limit(SRQObject *self, void *closure) {
    (void)closure;
    return locked_field(self, &self->srq->limit);
}

static PyObject *SRQ_get_max_sge(SRQObject *self, void *closure) {
    (void)closure;
    return locked_field(self, &self->srq->max_sge);
}

static PyObject *SRQ_get_count(SRQObject *self, void *closure) {
    (void)closure;
    uint32_t n;
    Py_BEGIN_ALLOW_THREADS
    n = tv_srq_count(self->srq);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(n);
}

static PyMethodDef SRQ_methods[] = {
    {"post_recv", (PyCFunction)SRQ_post_recv, METH_O, NULL},
    {"modify", (PyCFunction)SRQ_modify, METH_VARARGS, NULL},
    {"destroy", (PyCFunction)SRQ_destroy, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SRQ_getset[] = {
    {"max_wr", (getter)SRQ_get_max_wr, NULL, NULL, NULL},
    {"max_sge", (getter)SRQ_get_max_sge, NULL, NULL, NULL},
    {"limit", (getter)SRQ_get_limit, NULL, NULL, NULL},
    {"count", (getter)SRQ_get_count, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tv_py_SRQType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tcpverbs._native.SRQ",
    .tp_basicsize = sizeof(SRQObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SRQ_init,
    .tp_dealloc = (destructor)SRQ_dealloc,
    .tp_methods = SRQ_methods,
    .tp_getset = SRQ_getset,
};
