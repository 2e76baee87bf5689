"""The pyverbs face's modules, imported into this process (and taken out again after
each test): the stand-ins, the provider finder, the helpers.  ``test_pyverbs_face.py``
runs them as a user does, under ``tcpverbs run``; this measures them where coverage sees."""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

import tcpverbs as v
from tcpverbs.cm import rdmacm
from tcpverbs.errors import PyverbsRDMAError
from tcpverbs.face import PATH

Importer = Callable[[str], ModuleType]


@pytest.fixture
def face() -> Iterator[Importer]:
    if "pyverbs" in sys.modules:
        pytest.skip("a pyverbs is imported in this process already")
    sys.path.insert(0, str(PATH))
    meta_path = list(sys.meta_path)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(PATH))
        sys.meta_path[:] = meta_path  # the provider finder goes with the face
        for name in [n for n in sys.modules if n == "pyverbs" or n.startswith("pyverbs.")]:
            del sys.modules[name]


def test_the_modules_are_tcpverbs_own_names(face: Importer) -> None:
    assert face("pyverbs.device").Context is v.Context
    assert face("pyverbs.cq").CQEX is v.CQEX and face("pyverbs.qp").QPEx is v.QPEx
    assert face("pyverbs.addr").AH is v.AH and face("pyverbs.wr").SGE is v.SGE
    e = face("pyverbs.enums")
    assert e.IBV_WR_SEND is v.ibv_wr_opcode.IBV_WR_SEND and e._IBV_ALLOCATOR_USE_DEFAULT
    assert face("pyverbs.srq").SRQ is v.SRQ and face("pyverbs.srq").SrqAttr is v.SrqAttr
    cmid = face("pyverbs.cmid")
    assert cmid.CMID is rdmacm.CMID and cmid.CMEventChannel is rdmacm.CMEventChannel
    assert cmid.AddrInfo is rdmacm.AddrInfo and cmid.ConnParam is rdmacm.ConnParam
    ce = face("pyverbs.cm_enums")
    assert ce.RDMA_CM_EVENT_ESTABLISHED == 9 and ce.RDMA_OPTION_ID_ACK_TIMEOUT == 3
    base = face("pyverbs.base")
    assert base.PyverbsObject is v.Context.__mro__[1]
    assert base.PyverbsRDMAErrno("x").error_code == -1 and base.inc_rkey(0xFF) == 0x00


def test_providers_are_made_on_demand_and_refuse(face: Importer) -> None:
    dv = face("pyverbs.providers.mlx5.mlx5dv")
    anything = face("pyverbs.providers.somevendor.anything")
    attr = dv.Mlx5DVContextAttr(7, flags=1)
    assert attr.args == (7,) and attr.flags == 1
    assert int(anything.SOME_FLAG) == 0 and "no such provider" in repr(anything.SOME_FLAG)
    with pytest.raises(AttributeError):
        dv.__wrapped__  # noqa: B018 (dunders are not stand-ins)
    with pytest.raises(PyverbsRDMAError) as info:
        dv.Mlx5Context(attr, name="tcpv_lo")
    assert info.value.error_code == errno.EOPNOTSUPP and "mlx5 provider" in str(info.value)


@pytest.mark.parametrize(
    ("module", "name", "err"),
    [
        ("pyverbs.srq", "OpsWr", errno.EOPNOTSUPP),
        ("pyverbs.cmid", "JoinMCAttrEx", errno.EOPNOTSUPP),
        ("pyverbs.pd", "ParentDomain", errno.EOPNOTSUPP),
        ("pyverbs.mr", "DmaBufMR", errno.EOPNOTSUPP),
        ("pyverbs.wq", "WQ", errno.EOPNOTSUPP),
        ("pyverbs.spec", "EthSpec", errno.EOPNOTSUPP),
        ("pyverbs.dmabuf", "DmaBuf", errno.EOPNOTSUPP),
        ("pyverbs.dma_util", "dma_mmio_write", errno.EOPNOTSUPP),
    ],
)
def test_stand_ins_refuse_with_the_right_errno(
    face: Importer, module: str, name: str, err: int
) -> None:
    with pytest.raises(PyverbsRDMAError) as info:
        getattr(face(module), name)()
    assert info.value.error_code == err


def test_attribute_holders_are_made(face: Importer) -> None:
    flow = face("pyverbs.flow")
    assert flow.FlowAttr(num_of_specs=2).num_of_specs == 2
    assert face("pyverbs.device").AllocDmAttr(length=64).length == 64


def test_the_words_for_verbs_values(face: Importer) -> None:
    u, d = face("pyverbs.utils"), face("pyverbs.device")
    assert u.qp_type_to_str(99).startswith("Unknown") and u.mig_state_to_str(0) == "MIGRATED"
    assert u.mtu_to_str(5) == "4096" and u.mtu_to_str(9).startswith("Unknown")
    assert u.rereg_error_to_str(-1) == "INPUT"
    assert u.gid_str_to_array(u.gid_str(1, 2))[-1] == 2
    assert d.phys_state_to_str(99) == "Invalid" and d.width_to_str(3) == "Invalid width"
    assert d.speed_to_str(3) == "Invalid speed" and d.translate_mtu(0) == "Invalid MTU"
    assert d.translate_link_layer(7) == "Invalid link layer"


def test_raw_memory_helpers_refuse_what_libc_refuses(face: Importer) -> None:
    mem = face("pyverbs.mem_alloc")
    with pytest.raises(PyverbsRDMAError) as align:
        mem.posix_memalign(64, 3)  # not a power of two
    assert align.value.error_code == errno.EINVAL
    with pytest.raises(PyverbsRDMAError):
        mem.mmap(length=0)  # mmap(2) of nothing is EINVAL
    with pytest.raises(PyverbsRDMAError):
        mem.munmap(1, 4096)  # not page-aligned
