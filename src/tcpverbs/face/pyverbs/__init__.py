"""pyverbs, served by tcpverbs: the face :mod:`tcpverbs.face` puts on the path.

Each module hands out tcpverbs' objects under the names rdma-core's pyverbs gives them.
"""

__version__ = "tcpverbs"
