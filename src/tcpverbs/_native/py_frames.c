/* The binding of the frame codec (frames.c): FrameDecoder and encode_header(), with the
 * interface of tcpverbs.wire.frames.  Ownership: each FrameDecoder owns its tv_decoder.
 * Locking: the GIL; decoding makes no system call, so it is never released here. */
#include <string.h>

#include "binding.h"
#include "frames.h"

typedef struct {
    PyObject_HEAD
    tv_decoder dec;
    tv_header out; /* the last header decoded (large: kept here, not on the stack) */
} FrameDecoderObject;

static int decoder_init(FrameDecoderObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_payload", NULL};
    PyObject *limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &limit))
        return -1;
    /* checked: a negative limit must not wrap into "no limit" (the defence against a
     * peer's huge lengths) */
    unsigned long long max_payload = PyLong_AsUnsignedLongLong(limit);
    if (max_payload == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "max_payload must be an int in 0..2^64-1");
        }
        return -1;
    }
    if (tv_py_load_classes() < 0)
        return -1;
    tv_decoder_init(&self->dec, max_payload);
    return 0;
}

/* The Python Header for *h: Header(opcode, flags, payload_len, imm, rkey, addr, length,
 * compare_add, swap, msn, status, timer, reason, psn) -- the dataclass's field order. */
static PyObject *make_header(const tv_header *h) {
    PyObject *op = PyObject_CallFunction(tv_py_Opcode, "i", (int)h->opcode);
    if (op == NULL)
        return NULL;
    PyObject *header = PyObject_CallFunction(
        tv_py_Header, "NIkkkKkKKkIIy#k", op, (unsigned)h->flags, (unsigned long)h->payload_len,
        (unsigned long)h->imm, (unsigned long)h->rkey, (unsigned long long)h->addr,
        (unsigned long)h->length, (unsigned long long)h->compare_add,
        (unsigned long long)h->swap, (unsigned long)h->msn, (unsigned)h->status,
        (unsigned)h->timer, (const char *)h->reason, (Py_ssize_t)h->reason_len,
        (unsigned long)h->psn);
    return header;
}

static PyObject *decoder_receive(FrameDecoderObject *self, PyObject *arg) {
    Py_buffer view;
    if (tv_py_load_classes() < 0) /* (made with __new__ alone: no __init__ ran) */
        return NULL;
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
        PyObject *exc = PyObject_CallFunction(tv_py_ProtocolError, "s", self->dec.error);
        if (exc != NULL) {
            PyErr_SetObject(tv_py_ProtocolError, exc);
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

/* An attribute of the Python tv_py_Header as an unsigned integer of `bits` bits; -1 (with the
 * exception set) if it is missing, not an int or out of range. */
static int header_field(PyObject *header, const char *name, int bits, uint64_t *out) {
    PyObject *value = PyObject_GetAttrString(header, name);
    if (value == NULL)
        return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    Py_DECREF(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (bits < 64 && v >> bits) {
        PyErr_Format(PyExc_ValueError, "Header.%s %llu does not fit %d bits", name, v, bits);
        return -1;
    }
    *out = v;
    return 0;
}

PyObject *tv_py_encode_header(PyObject *module, PyObject *header) {
    (void)module;
    static const struct { const char *name; int bits; } fields[] = {
        {"opcode", 8}, {"flags", 8}, {"payload_len", 32}, {"imm", 32}, {"rkey", 32},
        {"addr", 64}, {"length", 32}, {"compare_add", 64}, {"swap", 64}, {"msn", 32},
        {"status", 8}, {"timer", 8}, {"psn", 32},
    };
    uint64_t v[sizeof fields / sizeof fields[0]];
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (header_field(header, fields[i].name, fields[i].bits, &v[i]) < 0)
            return NULL;
    tv_header h = {
        .opcode = (uint8_t)v[0], .flags = (uint8_t)v[1], .payload_len = (uint32_t)v[2],
        .imm = (uint32_t)v[3], .rkey = (uint32_t)v[4], .addr = v[5], .length = (uint32_t)v[6],
        .compare_add = v[7], .swap = v[8], .msn = (uint32_t)v[9], .status = (uint8_t)v[10],
        .timer = (uint8_t)v[11], .psn = (uint32_t)v[12],
    };
    if (h.opcode == TV_TERMINATE) {
        PyObject *reason = PyObject_GetAttrString(header, "reason");
        if (reason == NULL)
            return NULL;
        char *bytes;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(reason, &bytes, &len) < 0) {
            Py_DECREF(reason);
            return NULL;
        }
        h.reason_len = len > TV_MAX_REASON ? TV_MAX_REASON : (uint32_t)len;
        memcpy(h.reason, bytes, h.reason_len);
        Py_DECREF(reason);
    }
    uint8_t out[TV_MAX_HEADER + TV_MAX_REASON];
    size_t n = tv_encode_header(&h, out, sizeof out);
    if (n == 0) {
        const char *name = tv_opcode_name(h.opcode);
        if (name == NULL)
            PyErr_Format(PyExc_ValueError, "unknown frame opcode 0x%02x", (unsigned)h.opcode);
        else
            PyErr_Format(PyExc_ValueError, "%s frames carry no payload", name);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)n);
}

static PyMethodDef decoder_methods[] = {
    {"receive", (PyCFunction)decoder_receive, METH_O,
     "receive(data) -> (tv_py_Header | None, consumed): bytes up to the end of one header."},
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

PyTypeObject tv_py_FrameDecoderType = {
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
