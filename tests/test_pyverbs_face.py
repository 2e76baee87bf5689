"""The pyverbs face: ``tcpverbs run -- python prog.py`` makes ``import pyverbs`` tcpverbs,
with tcpverbs' own classes and exceptions (issue #11).

Each check runs in a child process started by ``tcpverbs run``, as a user would: the
face is never imported into the test process (it would shadow nothing here, but a test
process must not depend on it).
"""

from __future__ import annotations

import ast
import errno
import importlib.util
import subprocess
import sys
import textwrap

import pytest

from tcpverbs.face import PATH, environ

RUN = [sys.executable, "-m", "tcpverbs.cli", "run", "--", "python", "-c"]


def run_under_face(code: str) -> str:
    done = subprocess.run(
        [*RUN, textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_run_puts_the_face_first_and_keeps_the_rest_of_pythonpath() -> None:
    env = environ({"PYTHONPATH": "/somewhere"})
    assert env["PYTHONPATH"] == f"{PATH}:/somewhere"
    assert environ({})["PYTHONPATH"] == str(PATH)
    out = run_under_face(
        "import pyverbs, os; print(pyverbs.__file__); print(os.environ['PYTHONPATH'])"
    )
    first, path = out.splitlines()
    assert first.startswith(str(PATH)) and path.split(":")[0] == str(PATH)


def test_importing_tcpverbs_alone_does_not_provide_pyverbs() -> None:
    if importlib.util.find_spec("pyverbs") is not None:
        pytest.skip("a real pyverbs is installed here")
    done = subprocess.run(
        [sys.executable, "-c", "import tcpverbs; import pyverbs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "No module named 'pyverbs'" in done.stderr


def test_run_says_what_is_missing() -> None:
    for args, words in (([], "name the program"), (["no-such-program-x"], "No such file")):
        done = subprocess.run(
            [sys.executable, "-m", "tcpverbs.cli", "run", "--", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1 and words in done.stderr


def test_the_face_hands_out_tcpverbs_own_classes_and_exceptions() -> None:
    out = run_under_face(
        """
        import errno
        import tcpverbs, tcpverbs.errors as te
        import pyverbs.device as d, pyverbs.pd, pyverbs.mr, pyverbs.cq, pyverbs.qp, pyverbs.wr
        import pyverbs.addr, pyverbs.enums as e, pyverbs.libibverbs_enums as le
        import pyverbs.cm_enums as ce, pyverbs.librdmacm_enums as lce
        from pyverbs.pyverbs_error import PyverbsRDMAError, PyverbsError, PyverbsUserError
        assert d.Context is tcpverbs.Context and pyverbs.pd.PD is tcpverbs.PD
        assert pyverbs.mr.MR is tcpverbs.MR and pyverbs.cq.CQ is tcpverbs.CQ
        assert pyverbs.qp.QP is tcpverbs.QP and pyverbs.wr.SendWR is tcpverbs.SendWR
        assert pyverbs.addr.AHAttr is tcpverbs.AHAttr
        assert PyverbsRDMAError is te.PyverbsRDMAError and PyverbsUserError is te.PyverbsUserError
        assert e.IBV_QPT_RC == tcpverbs.ibv_qp_type.IBV_QPT_RC
        assert e.ibv_qp_type is tcpverbs.ibv_qp_type
        assert le.IBV_WC_EX_WITH_BYTE_LEN == 1 and e._IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE == 1
        assert ce.RDMA_PS_TCP == lce.RDMA_PS_TCP == 0x106 and ce.RAI_PASSIVE == 1
        with d.Context(name="tcpv_lo") as ctx:
            try:
                ctx.query_port(9)
            except PyverbsRDMAError as exc:  # tcpverbs' error, caught by pyverbs' name
                assert exc.error_code == errno.EINVAL and "Failed to query port" in exc.args[0]
        print("same")
        """
    )
    assert out.strip() == "same"


def test_what_a_tcp_device_has_not_refuses_with_eopnotsupp() -> None:
    """...while its attribute holders are made, so that programs reach the refusal."""
    out = run_under_face(
        """
        import errno
        from pyverbs.pyverbs_error import PyverbsRDMAError
        from pyverbs.providers.mlx5.mlx5dv import Mlx5Context, Mlx5DVContextAttr
        import pyverbs.providers.mlx5.mlx5_enums as dve
        from pyverbs.providers.efa.efadv import EfaCQ
        from pyverbs.device import DM
        from pyverbs.mr import MW
        from pyverbs.xrcd import XRCD
        from pyverbs.flow import Flow
        from pyverbs.srq import OpsWr
        codes = []
        for cls in (Mlx5Context, EfaCQ, DM, MW, XRCD, Flow, OpsWr):
            try:
                cls(None)
            except PyverbsRDMAError as exc:
                codes.append((cls.__name__, exc.error_code))
        assert dve.MLX5DV_CONTEXT_FLAGS_DEVX | dve.MLX5DV_QP_CREATE_TUNNEL_OFFLOADS == 0
        # attribute holders are plain data: made and filled in, then the object refuses
        from pyverbs.xrcd import XRCDInitAttr
        from pyverbs.pd import ParentDomainContext
        assert Mlx5DVContextAttr(flags=3).flags == 3 and XRCDInitAttr(fd=-1).fd == -1
        ParentDomainContext(None, None, None)
        print(codes)
        """
    )
    codes = dict(ast.literal_eval(out))
    assert set(codes.values()) == {errno.EOPNOTSUPP} and len(codes) == 7


def test_pyverbs_helpers() -> None:
    out = run_under_face(
        """
        import pyverbs.utils as u, pyverbs.device as d, pyverbs.enums as e
        from pyverbs.fork import fork_init, is_fork_initialized
        from pyverbs.mem_alloc import posix_memalign, free, mmap, munmap
        from pyverbs.base import inc_rkey
        fork_init()
        assert is_fork_initialized() == e.IBV_FORK_UNNEEDED
        p = posix_memalign(4096, 4096)
        assert p % 4096 == 0
        free(p)
        m = mmap(length=8192)
        munmap(m, 8192)
        assert inc_rkey(0x12345FF) == 0x1234500 and inc_rkey(0x10) == 0x11
        print(u.qp_type_to_str(e.IBV_QPT_RC), u.qp_state_to_str(e.IBV_QPS_RTS),
              d.translate_mtu(e.IBV_MTU_4096), d.translate_link_layer(e.IBV_LINK_LAYER_ETHERNET),
              d.width_to_str(1), d.speed_to_str(4), d.phys_state_to_str(5))
        """
    )
    assert out.split() == ["RC", "RTS", "4096", "Ethernet", "1X", "10.0", "Gbps", "LinkUp"]
