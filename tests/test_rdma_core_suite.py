"""scripts/rdma_core_suite.py reads unittest's verbose output right: run on a small
stand-in suite laid out as rdma-core's is (``run_tests.py`` beside ``test_*.py``)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "rdma_core_suite.py"

RUN_TESTS = """
import sys, unittest
module = sys.argv[-1].split(".", 1)[1]  # "tests.test_x": the suite's own naming
unittest.main(module=module, argv=[sys.argv[0], "-v"])
"""
MIXED = """
import unittest
class Mixed(unittest.TestCase):
    def test_passes(self):
        import pyverbs  # the face is on the path
    def test_fails(self):
        self.assertEqual(1, 2)
    def test_errors(self):
        raise RuntimeError("boom")
    def test_skips(self):
        raise unittest.SkipTest("a TCP device has none")
    def test_talks_then_passes(self):
        print("some output", flush=True)
"""
HANGS = """
import time, unittest
class Hangs(unittest.TestCase):
    def test_sleeps(self):
        time.sleep(60)
"""
BROKEN = "import no_such_module_anywhere\n"


def test_the_table_counts_each_outcome(tmp_path: pathlib.Path) -> None:
    for name, text in (
        ("run_tests.py", RUN_TESTS),
        ("test_mixed.py", MIXED),
        ("test_hangs.py", HANGS),
        ("test_broken.py", BROKEN),
    ):
        (tmp_path / name).write_text(textwrap.dedent(text))
    out = tmp_path / "results.json"
    args = ["--tests", str(tmp_path), "--timeout", "5", "--json", str(out), "--reasons"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--strict"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # strict: one hung, one broken
    rows = {r["module"]: r for r in json.loads(out.read_text())}
    assert rows["test_mixed"]["counts"] == {"passed": 2, "failed": 1, "errors": 1, "skipped": 1}
    assert rows["test_mixed"]["skips"] == {"test_mixed.Mixed.test_skips": "a TCP device has none"}
    assert rows["test_mixed"]["note"] == ""
    assert rows["test_hangs"]["note"] == "timed out after 5 s"
    assert rows["test_broken"]["note"].startswith(("did not load", "no results"))
    assert "skipped test_mixed.Mixed.test_skips: a TCP device has none" in done.stdout
    assert "timed out or did not load: test_broken, test_hangs" in done.stdout
