/* The binding of the UD datagram codec (ud.c): decode_ud(), encode_ud() and ud_grh(),
 * for the differential test against tcpverbs.wire.ud.  Ownership: the arguments' buffers
 * are held only for the call.  Locking: the GIL; nothing here makes a system call. */
#include "binding.h"
#include "ud.h"

PyObject *tv_py_decode_ud(PyObject *module, PyObject *arg) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    tv_ud_header h;
    char err[TV_UD_ERROR_LEN];
    int rc = tv_ud_decode(view.buf, (size_t)view.len, &h, err);
    PyBuffer_Release(&view);
    if (rc < 0) {
        if (tv_py_load_classes() < 0)
            return NULL;
        return tv_py_protocol_error(err);
    }
    return Py_BuildValue("(BIIIIB)", h.opcode, h.dest_qpn, h.src_qpn, h.qkey, h.imm, h.flags);
}

PyObject *tv_py_encode_ud(PyObject *module, PyObject *args) {
    (void)module;
    unsigned char opcode, flags;
    unsigned int dest, src, qkey, imm;
    if (!PyArg_ParseTuple(args, "bIIIIb", &opcode, &dest, &src, &qkey, &imm, &flags))
        return NULL;
    tv_ud_header h = {.opcode = opcode, .flags = flags, .dest_qpn = dest, .src_qpn = src,
                      .qkey = qkey, .imm = imm};
    uint8_t out[TV_UD_HEADER];
    if (tv_ud_encode(&h, out) < 0) {
        PyErr_SetString(PyExc_ValueError, "not a header a UD datagram may carry");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)out, TV_UD_HEADER);
}

PyObject *tv_py_ud_grh(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer src, dst;
    unsigned int length;
    if (!PyArg_ParseTuple(args, "y*y*I", &src, &dst, &length))
        return NULL;
    PyObject *result = NULL;
    if (src.len != 16 || dst.len != 16) {
        PyErr_SetString(PyExc_ValueError, "addresses are 16 bytes (IPv6 or IPv4-mapped)");
    } else {
        uint8_t out[TV_GRH];
        tv_ud_grh(src.buf, dst.buf, length, out);
        result = PyBytes_FromStringAndSize((const char *)out, TV_GRH);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}
