"""The runnable examples and the demo (the README's main job) keep working."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from tcpverbs.engine import available_engines

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["examples/pingpong.py", "--loopback", "--iters", "50", "--port", "0"],
            "50 round trips of 64 B",
        ),
        pytest.param(
            [
                *("examples/pingpong.py", "--loopback", "--iters", "50", "--port", "0"),
                *("--engine", "native", "--wire", "stream"),
            ],
            "50 round trips of 64 B (native engine, stream)",
            marks=pytest.mark.skipif(
                "native" not in available_engines(), reason="the native extension is not built"
            ),
        ),
        pytest.param(
            [
                *("examples/pingpong.py", "--loopback", "--iters", "50", "--port", "0"),
                *("--engine", "native"),
            ],
            "50 round trips of 64 B (native engine, rc)",
            marks=pytest.mark.skipif(
                "native" not in available_engines(), reason="the native extension is not built"
            ),
        ),
        (["examples/stream_client.py", "--loopback"], "server answered: b'GET / HTTP/1.0"),
        (["examples/rdma_write_read.py"], "counter:       42"),
        (["examples/ud_pingpong.py", "--iters", "50"], "round trips:   50"),
        (["-m", "tcpverbs.cli", "demo", "--size", "1000", "--count", "3"], "demo OK"),
        (  # plain pyverbs, under the face
            ["-m", "tcpverbs.cli", "run", "--", "python", "examples/pyverbs_rc.py"],
            "tcpv_lo: 'sent by SEND', 'written by RDMA WRITE': OK",
        ),
        (  # plain pyverbs rdma_cm, two processes, under the face
            ["-m", "tcpverbs.cli", "run", "--", "python", "examples/pyverbs_rdmacm.py"],
            "rdma_cm: OK",
        ),
    ],
)
def test_runs(args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
