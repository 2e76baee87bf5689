"""White-box tests of the Python engine: ``ctx`` is always a Python-engine context."""

from __future__ import annotations

import pytest


@pytest.fixture
def engine() -> str:
    return "python"
