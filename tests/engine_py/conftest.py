"""White-box tests of the Python engine: ``ctx`` is always a Python-engine context."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tcpverbs as v


@pytest.fixture
def engine() -> str:
    return "python"


@pytest.fixture
def ctx() -> Iterator[v.Context]:
    with v.Context(name="tcpv_lo", engine="python") as context:
        yield context
