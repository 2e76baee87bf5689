/* tcpverbs._native: the C building blocks of the native engine, seen from Python.
 *
 * For now the sans-IO pieces, each with the interface of its Python reference so that
 * the differential tests and the golden vectors can hold the C code to it: the frame
 * codec (FrameDecoder as tcpverbs.wire.frames.FrameDecoder, encode_header()) and the rc
 * protocol state (RcProtocol as tcpverbs.wire.rc.RcProtocol).
 *
 * Ownership: each FrameDecoder object owns its tv_decoder.  The Header, Opcode and
 * RemoteProtocolError classes are looked up once, at the first decoder made (not at
 * import: tcpverbs.wire may one day import this module), and kept for the process.
 * Locking: the GIL; decoding makes no system call, so it is never released here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "frames.h"
#include "rcproto.h"

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

/* An attribute of the Python Header as an unsigned integer of `bits` bits; -1 (with the
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

static PyObject *encode_header(PyObject *module, PyObject *header) {
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

/* -- RcProtocol: the twin of tcpverbs.wire.rc.RcProtocol ------------------------------ */
typedef struct {
    PyObject_HEAD
    tv_rcproto p;
} RcProtocolObject;

static int rcproto_init(RcProtocolObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (load_classes() < 0)
        return -1;
    tv_rc_init(&self->p);
    return 0;
}

static int msn_arg(PyObject *arg, uint32_t *msn) {
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "MSN %llu does not fit 32 bits", v);
        return -1;
    }
    *msn = (uint32_t)v;
    return 0;
}

static PyObject *protocol_error(const char *why) {
    PyObject *exc = PyObject_CallFunction(ProtocolError, "s", why);
    if (exc != NULL) {
        PyErr_SetObject(ProtocolError, exc);
        Py_DECREF(exc);
    }
    return NULL;
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
    if (msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_rc_acks(&self->p, msn, &delta, err, sizeof err) < 0)
        return protocol_error(err);
    return PyLong_FromUnsignedLongLong(delta);
}

static PyObject *rc_on_ack(RcProtocolObject *self, PyObject *arg) {
    uint32_t msn;
    uint64_t delta;
    char err[TV_RC_ERROR_LEN];
    if (msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_rc_on_ack(&self->p, msn, &delta, err, sizeof err) < 0)
        return protocol_error(err);
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
    if (msn_arg(arg, &msn) < 0)
        return NULL;
    if (tv_rc_on_resync(&self->p, msn, err, sizeof err) < 0)
        return protocol_error(err);
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

static PyTypeObject RcProtocolType = {
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

static PyMethodDef module_methods[] = {
    {"encode_header", (PyCFunction)encode_header, METH_O,
     "encode_header(header) -> bytes: as tcpverbs.wire.frames.encode_header."},
    {NULL, NULL, 0, NULL},
};

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
    .m_methods = module_methods,
};

static int add_type(PyObject *m, const char *name, PyTypeObject *type) {
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    if (add_type(m, "FrameDecoder", &FrameDecoderType) < 0 ||
        add_type(m, "RcProtocol", &RcProtocolType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
