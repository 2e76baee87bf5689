/* tcpverbs.WC, compiled: the twin of the slotted dataclass in tcpverbs/cq.py.
 *
 * Why: every completion becomes a WC.  The dataclass costs about 2 800 instructions a
 * completion on the native engine -- thirteen int objects made, a generic allocation
 * and a generic deallocation that walks thirteen slots -- a sixth of a 64 B message's
 * whole cost.  This one keeps the thirteen fields as C integers, as pyverbs' WC does
 * (a struct ibv_wc), and makes a Python int only for a field that is read.
 *
 * The same behaviour as the pure twin: the constructor's parameters, order and
 * defaults; attributes read and set; == (same class, every field) and no hash; repr in
 * the dataclass's form; str from the pure module's own function; __match_args__;
 * copy and pickle.  What differs, as in pyverbs: a field holds an int from 0 to
 * 2**64 - 1 (another value raises TypeError or OverflowError), and the dataclasses
 * module's functions (fields, asdict, replace) do not apply.  tests/test_wc_twins.py
 * holds the two to this.
 *
 * Ownership: plain memory, no references held; not tracked by the garbage collector
 * (it holds no objects).  Runs with the GIL held.
 */
#include "binding.h"

#include <structmember.h>

enum { WC_FIELDS = 13 };
static const char *const field_names[WC_FIELDS] = {
    "wr_id",    "status", "opcode",     "vendor_err", "byte_len", "qp_num", "src_qp",
    "imm_data", "wc_flags", "pkey_index", "slid",     "sl",       "dlid_path_bits"};

typedef struct {
    PyObject_HEAD
    unsigned long long f[WC_FIELDS];
} WCObject;

PyObject *tv_py_wc_new(const uint64_t values[9]) {
    WCObject *wc = PyObject_New(WCObject, &tv_py_WCType);
    if (wc == NULL)
        return NULL;
    for (int i = 0; i < 9; i++)
        wc->f[i] = values[i];
    for (int i = 9; i < WC_FIELDS; i++)
        wc->f[i] = 0;
    return (PyObject *)wc;
}

/* A field's value from a constructor argument: an int in 0 .. 2**64 - 1. */
static int field_value(PyObject *v, const char *name, unsigned long long *out) {
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "WC.%s must be an int, not %.100s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = x;
    return 0;
}

static PyObject *wc_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[WC_FIELDS + 1] = {
        "wr_id",    "status",   "opcode",     "vendor_err", "byte_len", "qp_num", "src_qp",
        "imm_data", "wc_flags", "pkey_index", "slid",       "sl",       "dlid_path_bits",
        NULL};
    PyObject *given[WC_FIELDS] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOOOOOOOOOOOO:WC", kwlist, &given[0],
                                     &given[1], &given[2], &given[3], &given[4], &given[5],
                                     &given[6], &given[7], &given[8], &given[9], &given[10],
                                     &given[11], &given[12]))
        return NULL;
    WCObject *wc = (WCObject *)type->tp_alloc(type, 0);
    if (wc == NULL)
        return NULL;
    for (int i = 0; i < WC_FIELDS; i++)
        if (given[i] != NULL && field_value(given[i], field_names[i], &wc->f[i]) < 0) {
            Py_DECREF(wc);
            return NULL;
        }
    return (PyObject *)wc;
}

static void wc_dealloc(PyObject *self) { Py_TYPE(self)->tp_free(self); }

static PyObject *wc_richcompare(PyObject *a, PyObject *b, int op) {
    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(a) != Py_TYPE(b))
        Py_RETURN_NOTIMPLEMENTED; /* the dataclass compares its own class only */
    int same = memcmp(((WCObject *)a)->f, ((WCObject *)b)->f, sizeof((WCObject *)a)->f) == 0;
    return PyBool_FromLong(op == Py_EQ ? same : !same);
}

static PyObject *wc_repr(PyObject *self) {
    const unsigned long long *f = ((WCObject *)self)->f;
    char buf[WC_FIELDS * 40 + 8];
    int n = snprintf(buf, sizeof buf, "WC(");
    for (int i = 0; i < WC_FIELDS && n > 0 && (size_t)n < sizeof buf; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "%s%s=%llu", i ? ", " : "",
                      field_names[i], f[i]);
    if (n < 0 || (size_t)n >= sizeof buf - 1) {
        PyErr_SetString(PyExc_SystemError, "WC repr overflowed its buffer");
        return NULL;
    }
    buf[n] = ')';
    buf[n + 1] = '\0';
    return PyUnicode_FromString(buf);
}

/* str(): the pure module's own wording (tcpverbs.cq.describe_wc), found once. */
static PyObject *describe;

static PyObject *wc_str(PyObject *self) {
    if (describe == NULL) {
        PyObject *cq = PyImport_ImportModule("tcpverbs.cq");
        describe = cq ? PyObject_GetAttrString(cq, "describe_wc") : NULL;
        Py_XDECREF(cq);
        if (describe == NULL)
            return NULL;
    }
    return PyObject_CallOneArg(describe, self);
}

static PyObject *wc_reduce(PyObject *self, PyObject *unused) {
    (void)unused;
    const unsigned long long *f = ((WCObject *)self)->f;
    PyObject *values = PyTuple_New(WC_FIELDS);
    for (int i = 0; values != NULL && i < WC_FIELDS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(f[i]);
        if (v == NULL)
            Py_CLEAR(values);
        else
            PyTuple_SET_ITEM(values, i, v);
    }
    return values ? Py_BuildValue("(ON)", (PyObject *)Py_TYPE(self), values) : NULL;
}

#define FIELD(i, name, doc)                                                               \
    {name, T_ULONGLONG, offsetof(WCObject, f) + (i) * sizeof(unsigned long long), 0, doc}
static PyMemberDef wc_members[WC_FIELDS + 1] = {
    FIELD(0, "wr_id", "the WR's wr_id"),
    FIELD(1, "status", "ibv_wc_status"),
    FIELD(2, "opcode", "ibv_wc_opcode"),
    FIELD(3, "vendor_err", NULL),
    FIELD(4, "byte_len", "bytes received"),
    FIELD(5, "qp_num", NULL),
    FIELD(6, "src_qp", NULL),
    FIELD(7, "imm_data", NULL),
    FIELD(8, "wc_flags", "ibv_wc_flags"),
    FIELD(9, "pkey_index", NULL),
    FIELD(10, "slid", NULL),
    FIELD(11, "sl", NULL),
    FIELD(12, "dlid_path_bits", NULL),
    {NULL, 0, 0, 0, NULL},
};
#undef FIELD

static PyMethodDef wc_methods[] = {
    {"__reduce__", wc_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject tv_py_WCType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tcpverbs.WC",
    .tp_basicsize = sizeof(WCObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR("struct ibv_wc (the compiled twin of tcpverbs.cq.PyWC)"),
    .tp_new = wc_new,
    .tp_dealloc = wc_dealloc,
    .tp_richcompare = wc_richcompare,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_repr = wc_repr,
    .tp_str = wc_str,
    .tp_members = wc_members,
    .tp_methods = wc_methods,
};

int tv_py_wc_ready(PyObject *module) {
    if (PyType_Ready(&tv_py_WCType) < 0)
        return -1;
    PyObject *match = PyTuple_New(WC_FIELDS);
    for (int i = 0; match != NULL && i < WC_FIELDS; i++) {
        PyObject *name = PyUnicode_InternFromString(field_names[i]);
        if (name == NULL)
            Py_CLEAR(match);
        else
            PyTuple_SET_ITEM(match, i, name);
    }
    if (match == NULL || PyDict_SetItemString(tv_py_WCType.tp_dict, "__match_args__", match) < 0) {
        Py_XDECREF(match);
        return -1;
    }
    Py_DECREF(match);
    PyType_Modified(&tv_py_WCType);
    Py_INCREF(&tv_py_WCType);
    if (PyModule_AddObject(module, "WC", (PyObject *)&tv_py_WCType) < 0) {
        Py_DECREF(&tv_py_WCType);
        return -1;
    }
    return 0;
}
