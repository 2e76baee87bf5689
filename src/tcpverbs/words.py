"""The words for device and port attributes, as rdma-core's tools and pyverbs print them
(``tcpverbs devinfo`` and the pyverbs face share them)."""

from __future__ import annotations

from .enums import ibv_link_layer

__all__ = ["LINK_LAYER_WORDS", "SPEED_WORDS"]

LINK_LAYER_WORDS = {
    ibv_link_layer.IBV_LINK_LAYER_UNSPECIFIED: "Unspecified",
    ibv_link_layer.IBV_LINK_LAYER_INFINIBAND: "InfiniBand",
    ibv_link_layer.IBV_LINK_LAYER_ETHERNET: "Ethernet",
}
SPEED_WORDS = {  # a port's active_speed -> one lane's rate
    1: "2.5 Gbps",
    2: "5.0 Gbps",
    4: "10.0 Gbps",
    8: "10.0 Gbps",
    16: "14.0 Gbps",
    32: "25.0 Gbps",
    64: "50.0 Gbps",
    128: "100.0 Gbps",
    256: "200.0 Gbps",
}
