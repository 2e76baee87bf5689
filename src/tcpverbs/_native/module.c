/* tcpverbs._native: the C building blocks of the native engine, seen from Python.
 *
 * For now one type, FrameDecoder, with the interface of tcpverbs.wire.frames.FrameDecoder
 * (receive / payload_consumed / payload_remaining / at_boundary / in_payload), so that
 * the differential test and the golden vectors can hold the C decoder to the Python one.
 *
 * Ownership: each FrameDecoder object owns its tv_decoder.  The Header, Opcode and
 * RemoteProtocolError classes are looked up once, at the first decoder made (not at
 * import: tcpverbs.wire may one day import this module), and kept for the process.
 * Locking: the GIL; decoding makes no system call, so it is never released here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "frames.h"

static PyObject *Header;  /* tcpverbs.wire.frames.Header */
static PyObject *Opcode;  /* tcpverbs.wire.frames.Opcode */
static PyObject *ProtocolError; /* tcpverbs.errors.RemoteProtocolError */

static int load_classes(void) {
    if (Header != NULL)
        return 0;
    PyObject *frames = PyImport_ImportModule("tcpverbs.wire.frames");
    if (frames == NULL)
        return -1;
    PyObject *errors = PyImport_ImportModule("tcpverbs.errors");
    if (errors == NULL) {
        Py_DECREF(frames);
        return -1;
    }
    PyObject *header = PyObject_GetAttrString(frames, "Header");
    PyObject *opcode = PyObject_GetAttrString(frames, "Opcode");
    PyObject *error = PyObject_GetAttrString(errors, "RemoteProtocolError");
    Py_DECREF(frames);
    Py_DECREF(errors);
    if (header == NULL || opcode == NULL || error == NULL) {
        Py_XDECREF(header);
        Py_XDECREF(opcode);
        Py_XDECREF(error);
        return -1;
    }
    Header = header;
    Opcode = opcode;
    ProtocolError = error;
    return 0;
}

typedef struct {
    PyObject_HEAD
    tv_decoder dec;
    tv_header out; /* the last header decoded (large: kept here, not on the stack) */
} FrameDecoderObject;

static int decoder_init(FrameDecoderObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_payload", NULL};
    unsigned long long max_payload;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "K", kwlist, &max_payload))
        return -1;
    if (load_classes() < 0)
        return -1;
    tv_decoder_init(&self->dec, max_payload);
    return 0;
}

/* The Python Header for *h: Header(opcode, flags, payload_len, imm, rkey, addr, length,
 * compare_add, swap, msn, status, timer, reason, psn) -- the dataclass's field order. */
static PyObject *make_header(const tv_header *h) {
    PyObject *op = PyObject_CallFunction(Opcode, "i", (int)h->opcode);
    if (op == NULL)
        return NULL;
    PyObject *header = PyObject_CallFunction(
        Header, "NIkkkKkKKkIIy#k", op, (unsigned)h->flags, (unsigned long)h->payload_len,
        (unsigned long)h->imm, (unsigned long)h->rkey, (unsigned long long)h->addr,
        (unsigned long)h->length, (unsigned long long)h->compare_add,
        (unsigned long long)h->swap, (unsigned long)h->msn, (unsigned)h->status,
        (unsigned)h->timer, (const char *)h->reason, (Py_ssize_t)h->reason_len,
        (unsigned long)h->psn);
    return header;
}

static PyObject *decoder_receive(FrameDecoderObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t used = 0;
    int result = tv_decode(&self->dec, view.buf, (size_t)view.len, &self->out, &used);
    PyBuffer_Release(&view);
    switch (result) {
    case TV_NEED_MORE:
        return Py_BuildValue("(On)", Py_None, (Py_ssize_t)used);
    case TV_HEADER: {
        PyObject *header = make_header(&self->out);
        if (header == NULL)
            return NULL;
        return Py_BuildValue("(Nn)", header, (Py_ssize_t)used);
    }
    case TV_MISUSE:
        PyErr_SetString(PyExc_ValueError,
                        "decoder is in the payload state; call payload_consumed()");
        return NULL;
    default: {
        PyObject *exc = PyObject_CallFunction(ProtocolError, "s", self->dec.error);
        if (exc != NULL) {
            PyErr_SetObject(ProtocolError, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    }
}

static PyObject *decoder_payload_consumed(FrameDecoderObject *self, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || tv_payload_consumed(&self->dec, (uint64_t)n) < 0) {
        PyErr_Format(PyExc_ValueError, "consumed %lld payload bytes, %llu expected", n,
                     (unsigned long long)self->dec.payload_remaining);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *get_payload_remaining(FrameDecoderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->dec.payload_remaining);
}

static PyObject *get_max_payload(FrameDecoderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->dec.max_payload);
}

static PyObject *get_at_boundary(FrameDecoderObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(tv_at_boundary(&self->dec));
}

static PyObject *get_in_payload(FrameDecoderObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->dec.payload_remaining > 0);
}

static PyMethodDef decoder_methods[] = {
    {"receive", (PyCFunction)decoder_receive, METH_O,
     "receive(data) -> (Header | None, consumed): bytes up to the end of one header."},
    {"payload_consumed", (PyCFunction)decoder_payload_consumed, METH_O,
     "payload_consumed(n): n payload bytes of the last header were placed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef decoder_getset[] = {
    {"payload_remaining", (getter)get_payload_remaining, NULL, "payload bytes to come", NULL},
    {"max_payload", (getter)get_max_payload, NULL, "the payload limit", NULL},
    {"at_boundary", (getter)get_at_boundary, NULL, "between frames", NULL},
    {"in_payload", (getter)get_in_payload, NULL, "payload bytes are due", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FrameDecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tcpverbs._native.FrameDecoder",
    .tp_doc = PyDoc_STR("The rc frame decoder in C (see tcpverbs.wire.frames.FrameDecoder)."),
    .tp_basicsize = sizeof(FrameDecoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)decoder_init,
    .tp_methods = decoder_methods,
    .tp_getset = decoder_getset,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tcpverbs._native",
    .m_doc = PyDoc_STR("C building blocks of the native engine."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&FrameDecoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FrameDecoderType);
    if (PyModule_AddObject(m, "FrameDecoder", (PyObject *)&FrameDecoderType) < 0) {
        Py_DECREF(&FrameDecoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
