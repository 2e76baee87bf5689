"""``tcpverbs perf``: perftest-style bandwidth and latency tests.

Like perftest, a test runs between two processes: ``tcpverbs perf send_bw`` waits for a
client, ``tcpverbs perf send_bw HOST`` is the client, and ``--loopback`` starts the server
process itself.  The client drives: it sends the test parameters over a control QP,
the server follows them.  :mod:`.session` holds the measuring loops (and the connection
layout: why control and data QPs are apart), :mod:`.report` the tables.
"""

from __future__ import annotations

from .session import TESTS, PerfConfig, run_client, run_server

__all__ = ["TESTS", "PerfConfig", "run_client", "run_server"]
