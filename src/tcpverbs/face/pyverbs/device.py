"""pyverbs.device: devices, the context, and the words for their attributes."""

from __future__ import annotations

from tcpverbs.context import Context
from tcpverbs.device import Device, DeviceAttr, PortAttr, get_device_list
from tcpverbs.enums import ibv_link_layer, ibv_mtu
from tcpverbs.words import LINK_LAYER_WORDS, SPEED_WORDS

from ._unsupported import holder, unsupported

__all__ = [
    "DM",
    "AllocDmAttr",
    "Context",
    "Device",
    "DeviceAttr",
    "PortAttr",
    "get_device_list",
    "phys_state_to_str",
    "speed_to_str",
    "translate_link_layer",
    "translate_mtu",
    "width_to_str",
]

_NO_DM = "a tcpverbs device has no device memory"
DM = unsupported("DM", _NO_DM)
AllocDmAttr = holder("AllocDmAttr")

_PHYS_STATES = {
    1: "Sleep",
    2: "Polling",
    3: "Disabled",
    4: "PortConfigurationTraining",
    5: "LinkUp",
    6: "LinkErrorRecovery",
    7: "Phytest",
}
_WIDTHS = {1: "1X", 2: "4X", 4: "8X", 8: "12X", 16: "2X"}


def phys_state_to_str(phys_state: int) -> str:
    """The name of a port's physical state (``phys_state`` of ``query_port``)."""
    return _PHYS_STATES.get(phys_state, "Invalid")


def width_to_str(width: int) -> str:
    """The name of a port's ``active_width``."""
    return _WIDTHS.get(width, "Invalid width")


def speed_to_str(active_speed: int, active_speed_ex: int = 0) -> str:
    """The lane speed a port's ``active_speed`` names."""
    return SPEED_WORDS.get(active_speed, "Invalid speed")


def translate_mtu(mtu: int) -> str:
    """``IBV_MTU_1024`` -> ``"1024"``."""
    try:
        return str(256 << (ibv_mtu(mtu) - 1))
    except ValueError:
        return "Invalid MTU"


def translate_link_layer(link_layer: int) -> str:
    """``IBV_LINK_LAYER_ETHERNET`` -> ``"Ethernet"``."""
    try:
        return LINK_LAYER_WORDS[ibv_link_layer(link_layer)]
    except ValueError:
        return "Invalid link layer"
