from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import tcpverbs as v
from tcpverbs.engine import available_engines
from tcpverbs.testing import Endpoint, qp_pair

LOCAL_WRITE = v.ibv_access_flags.IBV_ACCESS_LOCAL_WRITE


@pytest.fixture(params=available_engines())
def engine(request: pytest.FixtureRequest) -> str:
    """Every engine that runs here (``TCPVERBS_ENGINE`` picks the engine of every other
    Context)."""
    return str(request.param)


# The conformance suite: every test through ``ctx`` runs on each of these.  SQ polling
# (the native engine thread sends what is posted) is a progress mode of its own.
CONTEXTS = {name: (name, {}) for name in available_engines()}
if "native" in CONTEXTS:
    CONTEXTS["native-sq_poll"] = ("native", {"sq_poll_us": 50})


@pytest.fixture(params=list(CONTEXTS))
def ctx(request: pytest.FixtureRequest) -> Iterator[v.Context]:
    engine, options = CONTEXTS[request.param]
    with v.Context(name="tcpv_lo", engine=engine, **options) as context:
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
