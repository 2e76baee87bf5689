"""pyverbs.fork: ``ibv_fork_init`` and ``ibv_is_fork_initialized``.

A tcpverbs device needs no fork protection: nothing writes into registered memory
behind the process's back (no DMA: the engine writes through the process's own mappings),
so copy-on-write after ``fork()`` never leaves it writing to a page the parent no longer
sees.  ``fork_init`` succeeds and changes nothing; ``is_fork_initialized`` says
``IBV_FORK_UNNEEDED``.  A child does not inherit working verbs objects: the engine thread
is the parent's.
"""

from tcpverbs.enums import ibv_fork_status

__all__ = ["fork_init", "is_fork_initialized"]


def fork_init() -> None:
    """Nothing to prepare (see the module's docstring)."""


def is_fork_initialized() -> ibv_fork_status:
    return ibv_fork_status.IBV_FORK_UNNEEDED
