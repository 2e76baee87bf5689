"""pyverbs.utils: the words for verbs values, as pyverbs prints them."""

from __future__ import annotations

from enum import Enum

from tcpverbs.enums import (
    ibv_access_flags,
    ibv_mig_state,
    ibv_mtu,
    ibv_qp_state,
    ibv_qp_type,
    ibv_rereg_mr_err_code,
)

__all__ = [
    "access_flags_to_str",
    "gid_str",
    "gid_str_to_array",
    "mig_state_to_str",
    "mtu_to_str",
    "qp_state_to_str",
    "qp_type_to_str",
    "rereg_error_to_str",
]


def _word(cls: type[Enum], value: int, prefix: str) -> str:
    """``IBV_QPS_RTS`` -> ``"RTS"``; an unknown value is said to be one."""
    try:
        return str(cls(value).name).removeprefix(prefix)
    except ValueError:
        return f"Unknown {cls.__name__} {value}"


def qp_type_to_str(qp_type: int) -> str:
    return _word(ibv_qp_type, qp_type, "IBV_QPT_")


def qp_state_to_str(qp_state: int) -> str:
    return _word(ibv_qp_state, qp_state, "IBV_QPS_")


def mig_state_to_str(mig_state: int) -> str:
    return _word(ibv_mig_state, mig_state, "IBV_MIG_")


def mtu_to_str(mtu: int) -> str:
    try:
        return str(256 << (ibv_mtu(mtu) - 1))
    except ValueError:
        return f"Unknown MTU {mtu}"


def rereg_error_to_str(code: int) -> str:
    return _word(ibv_rereg_mr_err_code, code, "IBV_REREG_MR_ERR_")


def access_flags_to_str(flags: int) -> str:
    """The set flags' names, ``" "``-joined (``"LOCAL_WRITE REMOTE_READ"``)."""
    names = [f.name.removeprefix("IBV_ACCESS_") for f in ibv_access_flags if f & flags and f.name]
    return " ".join(names)


def gid_str(subnet_prefix: int, interface_id: int) -> str:
    """A GID's text (eight groups of four hex digits) from its two 64-bit halves."""
    raw = f"{subnet_prefix:016x}{interface_id:016x}"
    return ":".join(raw[i : i + 4] for i in range(0, 32, 4))


def gid_str_to_array(val: str) -> list[int]:
    """A GID's text -> its 16 bytes, as ints."""
    digits = val.replace(":", "")
    return [int(digits[i : i + 2], 16) for i in range(0, 32, 2)]
