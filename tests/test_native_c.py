"""The native engine's C code tested in C: each ``tests/native/test_*.c`` is built with
the sources it tests and run twice, under AddressSanitizer + UndefinedBehaviorSanitizer
and under ThreadSanitizer (a data race, a leak, an overflow or undefined behaviour fails
it).  gcc and its sanitizer runtimes are on every machine the project builds on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "src" / "tcpverbs" / "_native"
# each C test, and the sources it tests
C_TESTS = {"test_ring.c": ["ring.c"], "test_memtable.c": ["memtable.c"]}
SANITIZERS = {"asan+ubsan": "address,undefined", "tsan": "thread"}


def own_runtime() -> dict[str, str]:
    """The environment without a preloaded sanitizer runtime (scripts/asan.sh preloads
    ASan for the Python process): a binary built with its own sanitizer must run alone."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


@pytest.mark.parametrize("sanitizer", sorted(SANITIZERS))
@pytest.mark.parametrize("test", sorted(C_TESTS))
def test_c_unit_tests_pass_under_sanitizers(test: str, sanitizer: str, tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "test"
    build = subprocess.run(
        [
            cc,
            "-std=c11",
            "-g",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-fsanitize={SANITIZERS[sanitizer]}",
            "-fno-sanitize-recover=all",
            "-pthread",
            f"-I{NATIVE}",
            f"-I{ROOT / 'tests' / 'native'}",
            str(ROOT / "tests" / "native" / test),
            *(str(NATIVE / src) for src in C_TESTS[test]),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0 and "cannot find" in build.stderr and "san" in build.stderr:
        pytest.skip(f"the {sanitizer} runtime is not installed: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        [str(exe)], capture_output=True, text=True, timeout=120, check=False, env=own_runtime()
    )
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    assert "all passed" in run.stdout
