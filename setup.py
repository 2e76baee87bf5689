"""The C extension of the native engine (issue #10); everything else is pyproject.toml.

C11, warnings are errors, no dependency beyond libc and CPython.  ``pip install -e .``
(which ``scripts/_env.sh`` runs) compiles it in place.
"""

from setuptools import Extension, setup

NATIVE = "src/tcpverbs/_native"

setup(
    ext_modules=[
        Extension(
            "tcpverbs._native",
            sources=[
                f"{NATIVE}/module.c",
                f"{NATIVE}/py_frames.c",
                f"{NATIVE}/py_ud.c",
                f"{NATIVE}/ud.c",
                f"{NATIVE}/py_rc.c",
                f"{NATIVE}/frames.c",
                f"{NATIVE}/ring.c",
                f"{NATIVE}/memtable.c",
                f"{NATIVE}/rcproto.c",
                f"{NATIVE}/requester.c",
                f"{NATIVE}/py_engine.c",
                f"{NATIVE}/engine.c",
                f"{NATIVE}/cq.c",
                f"{NATIVE}/wait.c",
                f"{NATIVE}/qp.c",
                f"{NATIVE}/stream.c",
                f"{NATIVE}/udconn.c",
                f"{NATIVE}/conn.c",
                f"{NATIVE}/rcconn.c",
                f"{NATIVE}/zerocopy.c",
                f"{NATIVE}/srq.c",
                f"{NATIVE}/py_srq.c",
                f"{NATIVE}/py_fast.c",
                f"{NATIVE}/py_wc.c",
            ],
            depends=[
                f"{NATIVE}/binding.h",
                f"{NATIVE}/frames.h",
                f"{NATIVE}/ud.h",
                f"{NATIVE}/ring.h",
                f"{NATIVE}/memtable.h",
                f"{NATIVE}/rcproto.h",
                f"{NATIVE}/requester.h",
                f"{NATIVE}/engine.h",
                f"{NATIVE}/zerocopy.h",
            ],
            include_dirs=[NATIVE],
            extra_compile_args=["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"],
        )
    ]
)
