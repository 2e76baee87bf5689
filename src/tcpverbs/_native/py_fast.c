/* FastCall: the verbs layer's hottest calls -- CQ.poll, QP.post_send, QP.post_recv --
 * with no Python frame in between the application and the engine.
 *
 * Why: on this engine a poll that finds nothing costs about 2 200 instructions, and the
 * Python method around it (open check, argument check, the tuple) another 1 700.  A
 * spinning application pays that on every empty poll, and a round trip pays it in the
 * poll that finds the message and in the two posts that answer it.
 *
 * What: the verbs object stores a FastCall as an instance attribute shadowing its
 * method (tcpverbs/cq.py, tcpverbs/qp.py).  The FastCall does in C exactly what the
 * method does on its common path, and hands everything else to the method itself
 * (`slow`), so the behaviour has one definition, in Python:
 *  - POLL: (n) or () with an exact int 1 <= n <= INT_MAX on an open object: `call(n)`
 *    (the engine CQ's poll_wc) as (len, list); the engine's Overrun becomes
 *    `fail(exc)`'s exception, raised.
 *  - POST: (wr) or (wr, bad_wr) on an open object: `call(wr)` (the engine QP's post);
 *    None is success, and a failure goes to `fail(failure, wr, bad_wr)`, which raises.
 *  - anything else (keywords, other arguments, a closed object): `slow(*args)`.
 *
 * Ownership: a FastCall holds strong references to its owner's __dict__, call, slow and
 * fail (slow is bound to the owner); the owner holds the FastCall (a cycle, as the verbs
 * object tree has anyway; the garbage collector sees it through tp_traverse).  Locking: none of its own; it runs with the
 * GIL held, and the engine calls release it as they always do.
 */
#include "binding.h"

#include <limits.h>

enum { FAST_POLL = 0, FAST_POST = 1 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *attrs; /* the owner's __dict__, where its `_closed` is (all it needs of it) */
    PyObject *call, *slow, *fail;
    int kind;
} FastCall;

/* "_closed" and 1, made once and kept for the process; tcpverbs.engine.api.Overrun, the
 * engine binding's own (borrowed, for the process too) */
static PyObject *str_closed, *one, *Overrun;

/* 1: the owner is open; 0: closed, or no `_closed` in its __dict__ (the method decides);
 * -1: an error.  A dict lookup, not getattr: a quarter of the cost. */
static int is_open(FastCall *self) {
    PyObject *closed = PyDict_GetItemWithError(self->attrs, str_closed); /* borrowed */
    if (closed == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (closed == Py_False)
        return 1;
    int yes = PyObject_IsTrue(closed);
    return yes < 0 ? -1 : !yes;
}

static PyObject *poll(FastCall *self, PyObject *n) {
    PyObject *list = PyObject_CallOneArg(self->call, n);
    if (list == NULL) {
        if (!PyErr_ExceptionMatches(Overrun))
            return NULL;
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *err = value ? PyObject_CallOneArg(self->fail, value) : NULL;
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (err != NULL) { /* raised "from None", as the method does */
            PyException_SetCause(err, NULL); /* (which also suppresses the context) */
            PyErr_SetObject((PyObject *)Py_TYPE(err), err);
            Py_DECREF(err);
        }
        return NULL;
    }
    if (!PyList_CheckExact(list)) {
        Py_DECREF(list);
        PyErr_SetString(PyExc_TypeError, "the engine's poll_wc did not return a list");
        return NULL;
    }
    PyObject *count = PyLong_FromSsize_t(PyList_GET_SIZE(list));
    PyObject *pair = count ? PyTuple_Pack(2, count, list) : NULL;
    Py_XDECREF(count);
    Py_DECREF(list);
    return pair;
}

static PyObject *post(FastCall *self, PyObject *wr, PyObject *bad_wr) {
    PyObject *failure = PyObject_CallOneArg(self->call, wr);
    if (failure == NULL || failure == Py_None)
        return failure;
    PyObject *args[3] = {failure, wr, bad_wr};
    PyObject *raised = PyObject_Vectorcall(self->fail, args, 3, NULL);
    Py_DECREF(failure);
    return raised; /* fail raises: NULL; were it to return, its value is the answer */
}

static PyObject *fast_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
    FastCall *self = (FastCall *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int common = kwnames == NULL &&
                 (self->kind == FAST_POLL ? nargs <= 1 : nargs == 1 || nargs == 2);
    if (common && self->kind == FAST_POLL && nargs == 1) {
        int overflow = 0;
        long n = PyLong_CheckExact(args[0]) ? PyLong_AsLongAndOverflow(args[0], &overflow) : 0;
        common = !overflow && n >= 1 && n <= INT_MAX;
    }
    if (common) {
        int open = is_open(self);
        if (open < 0)
            return NULL;
        common = open;
    }
    if (!common)
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    if (self->kind == FAST_POLL)
        return poll(self, nargs ? args[0] : one);
    return post(self, args[0], nargs == 2 ? args[1] : Py_None);
}

static PyObject *fast_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"owner", "call", "slow", "fail", "kind", NULL};
    PyObject *owner, *call, *slow, *fail;
    int kind;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOi", kwlist, &owner, &call, &slow, &fail,
                                     &kind))
        return NULL;
    if (kind != FAST_POLL && kind != FAST_POST) {
        PyErr_Format(PyExc_ValueError, "kind must be %d (poll) or %d (post)", FAST_POLL,
                     FAST_POST);
        return NULL;
    }
    if (!PyCallable_Check(call) || !PyCallable_Check(slow) || !PyCallable_Check(fail)) {
        PyErr_SetString(PyExc_TypeError, "call, slow and fail must be callable");
        return NULL;
    }
    if (str_closed == NULL && (str_closed = PyUnicode_InternFromString("_closed")) == NULL)
        return NULL;
    if (one == NULL && (one = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (Overrun == NULL && (Overrun = tv_py_overrun()) == NULL)
        return NULL;
    PyObject *attrs = PyObject_GenericGetDict(owner, NULL);
    if (attrs == NULL)
        return NULL;
    FastCall *self = (FastCall *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(attrs);
        return NULL;
    }
    self->attrs = attrs;
    self->vectorcall = fast_vectorcall;
    self->call = Py_NewRef(call);
    self->slow = Py_NewRef(slow);
    self->fail = Py_NewRef(fail);
    self->kind = kind;
    return (PyObject *)self;
}

static int fast_traverse(FastCall *self, visitproc visit, void *arg) {
    Py_VISIT(self->call);
    Py_VISIT(self->slow);
    Py_VISIT(self->fail);
    Py_VISIT(self->attrs);
    return 0;
}

static int fast_clear(FastCall *self) {
    Py_CLEAR(self->call);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->fail);
    Py_CLEAR(self->attrs);
    return 0;
}

static void fast_dealloc(FastCall *self) {
    PyObject_GC_UnTrack(self);
    fast_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *fast_call(PyObject *self, PyObject *args, PyObject *kwds) {
    return PyVectorcall_Call(self, args, kwds);
}

PyTypeObject tv_py_FastCallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tcpverbs._native.FastCall",
    .tp_basicsize = sizeof(FastCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = PyDoc_STR("FastCall(owner, call, slow, fail, kind): a verbs method's common "
                        "path in C (see py_fast.c)"),
    .tp_new = fast_new,
    .tp_call = fast_call,
    .tp_vectorcall_offset = offsetof(FastCall, vectorcall),
    .tp_traverse = (traverseproc)fast_traverse,
    .tp_clear = (inquiry)fast_clear,
    .tp_dealloc = (destructor)fast_dealloc,
};
