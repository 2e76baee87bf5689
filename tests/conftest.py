from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import tcpverbs as v
from tcpverbs.engine import available_engines
from tcpverbs.testing import Endpoint, qp_pair

LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


@pytest.fixture(params=available_engines())
def engine(request: pytest.FixtureRequest) -> str:
    """Every engine that runs here: the tests through ``ctx`` are the conformance suite
    each engine must pass (``TCPVERBS_ENGINE`` picks the engine of every other Context)."""
    return str(request.param)


@pytest.fixture
def ctx(engine: str) -> Iterator[v.Context]:
    with v.Context(name="tcpv_lo", engine=engine) as context:
        assert context.engine == engine
        yield context


PairFactory = Callable[..., tuple[Endpoint, Endpoint]]


@pytest.fixture
def pair(ctx: v.Context) -> PairFactory:
    """``pair(wire="rc", cap=QPCap(...), sq_sig_all=1)`` -> two connected endpoints."""

    def make(wire: str = "rc", **kwargs: object) -> tuple[Endpoint, Endpoint]:
        return qp_pair(ctx, wire, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(params=["rc", "stream"])
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)
