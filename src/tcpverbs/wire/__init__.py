"""Sans-IO wire protocol: bytes in, events out; events in, bytes out.

Nothing in this package imports :mod:`socket` or touches the network (a test enforces
it).  :mod:`.frames` encodes and incrementally decodes the ``rc`` framing,
:mod:`.hello` the connection hello, :mod:`.rc` the per-connection protocol state
(request sequence numbers and acknowledgements), :mod:`.ud` the UD datagram and the
GRH a UD receive reports.
"""

from .frames import FLAG_SOLICITED, FrameDecoder, Header, Opcode, encode_header
from .hello import HELLO_SIZE, PROTOCOL_VERSION, Hello, HelloDecoder, WireMode
from .rc import RcProtocol

__all__ = [
    "FLAG_SOLICITED",
    "HELLO_SIZE",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "Header",
    "Hello",
    "HelloDecoder",
    "Opcode",
    "RcProtocol",
    "WireMode",
    "encode_header",
]
