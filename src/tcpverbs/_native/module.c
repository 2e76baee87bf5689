/* tcpverbs._native: the C building blocks of the native engine, seen from Python -- the
 * module, and what its binding files share (binding.h).
 *
 * For now the sans-IO pieces, each with the interface of its Python reference so that
 * the differential tests and the golden vectors can hold the C code to it: the frame
 * codec (py_frames.c: FrameDecoder, encode_header), the UD datagram codec (py_ud.c)
 * and the rc protocol state and
 * requester's window (py_rc.c: RcProtocol, Requester, terminate_status).
 *
 * Ownership: the class references below are taken once and kept for the process.
 * Locking: the GIL.
 */
#include "binding.h"

PyObject *tv_py_Header;
PyObject *tv_py_Opcode;
PyObject *tv_py_ProtocolError;
PyObject *tv_py_RnrRetry;

int tv_py_load_classes(void) {
    if (tv_py_Header != NULL)
        return 0;
    PyObject *frames = PyImport_ImportModule("tcpverbs.wire.frames");
    if (frames == NULL)
        return -1;
    PyObject *errors = PyImport_ImportModule("tcpverbs.errors");
    if (errors == NULL) {
        Py_DECREF(frames);
        return -1;
    }
    PyObject *rc = PyImport_ImportModule("tcpverbs.wire.rc");
    if (rc == NULL) {
        Py_DECREF(frames);
        Py_DECREF(errors);
        return -1;
    }
    PyObject *header = PyObject_GetAttrString(frames, "Header");
    PyObject *opcode = PyObject_GetAttrString(frames, "Opcode");
    PyObject *error = PyObject_GetAttrString(errors, "RemoteProtocolError");
    PyObject *retry = PyObject_GetAttrString(rc, "RnrRetry");
    Py_DECREF(frames);
    Py_DECREF(errors);
    Py_DECREF(rc);
    if (header == NULL || opcode == NULL || error == NULL || retry == NULL) {
        Py_XDECREF(header);
        Py_XDECREF(opcode);
        Py_XDECREF(error);
        Py_XDECREF(retry);
        return -1;
    }
    tv_py_Header = header;
    tv_py_Opcode = opcode;
    tv_py_ProtocolError = error;
    tv_py_RnrRetry = retry;
    return 0;
}

PyObject *tv_py_protocol_error(const char *why) {
    PyObject *exc = PyObject_CallFunction(tv_py_ProtocolError, "s", why);
    if (exc != NULL) {
        PyErr_SetObject(tv_py_ProtocolError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

int tv_py_msn_arg(PyObject *arg, uint32_t *msn) {
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

static PyMethodDef module_methods[] = {
    {"decode_ud", (PyCFunction)tv_py_decode_ud, METH_O,
     "decode_ud(datagram) -> (opcode, dest_qpn, src_qpn, qkey, imm, flags), as "
     "tcpverbs.wire.ud.decode_ud."},
    {"encode_ud", (PyCFunction)tv_py_encode_ud, METH_VARARGS,
     "encode_ud(opcode, dest_qpn, src_qpn, qkey, imm, flags) -> the 24 header bytes."},
    {"ud_grh", (PyCFunction)tv_py_ud_grh, METH_VARARGS,
     "ud_grh(src16, dst16, datagram_len) -> the 40-byte GRH, as tcpverbs.wire.ud.build_grh."},
    {"terminate_status", (PyCFunction)tv_py_terminate_status, METH_O,
     "terminate_status(status) -> int: as tcpverbs.wire.rc.terminate_status."},
    {"encode_header", (PyCFunction)tv_py_encode_header, METH_O,
     "encode_header(header) -> bytes: as tcpverbs.wire.frames.encode_header."},
    {NULL, NULL, 0, NULL},
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
    if (add_type(m, "FrameDecoder", &tv_py_FrameDecoderType) < 0 ||
        add_type(m, "RcProtocol", &tv_py_RcProtocolType) < 0 ||
        add_type(m, "Requester", &tv_py_RequesterType) < 0 ||
        add_type(m, "Engine", &tv_py_EngineType) < 0 ||
        add_type(m, "Channel", &tv_py_ChannelType) < 0 ||
        add_type(m, "CQ", &tv_py_CQType) < 0 || add_type(m, "QP", &tv_py_QPType) < 0 ||
        add_type(m, "SRQ", &tv_py_SRQType) < 0 ||
        add_type(m, "FastCall", &tv_py_FastCallType) < 0 || tv_py_wc_ready(m) < 0 ||
        tv_py_engine_init_names() < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
