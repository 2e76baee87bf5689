"""rdma-core's own pyverbs test suite, run against tcpverbs through its pyverbs face.

    python scripts/rdma_core_suite.py [--tests DIR] [--dev tcpv_lo] [--timeout S]
                                      [--json FILE] [--reasons] [MODULE ...]

Debian ships the suite with its Python binding (package ``python3-pyverbs``: files under
``/usr/share/doc/rdma-core/tests/``, some gzip-compressed).  Without ``--tests`` the
package is fetched with ``apt-get download`` (only the package registry is needed) and
unpacked into a temporary directory; the tests are not edited.  Each module runs on its
own, with the suite's own ``run_tests.py``, under ``tcpverbs run`` (so ``import pyverbs``
is tcpverbs) and a time limit, and the script prints a table per module and the totals;
``--reasons`` lists why each skipped test skipped.  As root, each module sees the
device's net interface under ``/sys/class/infiniband`` (``SYSFS_VIEW``), which the
suite's rdma_cm tests need to find its address.  What passes is the table's to say
(issue #11); the exit status is 1 with ``--strict`` when a module timed out or did not
load (so no test hangs, and every module's imports resolve through the face), and 3
when the suite could not be fetched (no apt here).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

PACKAGE = "python3-pyverbs"
SUITE_DIR = "usr/share/doc/rdma-core/tests"
# "test_name (tests.test_mod.Class.test_name) ... ok" -- and the outcome may come lines
# later when the test prints; unittest puts "skipped 'reason'" in place of "ok"
RESULT = re.compile(
    r"^(?P<test>\w+) \((?P<where>[\w.]+)\)(?:\n.*?)*? \.\.\. "
    r"(?P<outcome>ok|FAIL|ERROR|skipped(?: (?P<reason>.*))?|expected failure|unexpected success)$",
    re.MULTILINE,
)
IMPORT_FAILED = re.compile(r"^ERROR: (?P<test>\S+) \((?:unittest\.loader\.)?_FailedTest", re.M)
OUTCOMES = {"ok": "passed", "FAIL": "failed", "ERROR": "errors", "skipped": "skipped"}


@dataclass
class ModuleResult:
    module: str
    seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    skips: dict[str, str] = field(default_factory=dict)  # test -> reason
    problems: list[str] = field(default_factory=list)  # tests that failed or errored
    note: str = ""  # timed out, or did not load


def fetch_suite(into: pathlib.Path) -> pathlib.Path:
    """Download and unpack the Debian package; the directory of its tests."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=into, check=True, capture_output=True)
    (deb,) = into.glob(f"{PACKAGE}_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into / "root")], check=True)
    tests = into / "root" / SUITE_DIR
    for packed in tests.glob("*.gz"):
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    return tests


# rdma-core's base.py finds a device's IP address through
# /sys/class/infiniband/<dev>/device/net/, which only kernel RDMA devices have: without
# it every rdma_cm test skips ("doesn't have net interface") however well rdma_cm works.
# Where it may (root, unshare), each module runs in a private mount namespace whose
# /sys/class also shows <dev>/device/net/<interface>, the interface the device really
# is; nothing else changes, and the host's /sys is untouched.
SYSFS_VIEW = r"""
set -e
mount --make-rprivate /
base=$(mktemp -d)
mkdir "$base/orig"
mount --bind /sys/class "$base/orig"
mount -t tmpfs tcpverbs-sysfs-view /sys/class
for entry in "$base"/orig/*; do
  name=${entry##*/}
  [ "$name" = infiniband ] && continue
  mkdir "/sys/class/$name"
  mount --bind "$entry" "/sys/class/$name"
done
mkdir -p "/sys/class/infiniband/$TV_DEV/device/net/$TV_IFNAME"
exec "$@"
"""


def sysfs_view(dev: str) -> tuple[list[str], dict[str, str]] | None:
    """The command prefix and environment that show *dev* its net interface, or None
    where a mount namespace cannot be made (not root, no unshare)."""
    from tcpverbs.device import find_device

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return None
    env = {**os.environ, "TV_DEV": dev, "TV_IFNAME": find_device(dev).ifname}
    return ["unshare", "--mount", "sh", "-c", SYSFS_VIEW, "sysfs-view"], env


def run_module(
    tests: pathlib.Path,
    module: str,
    dev: str,
    timeout: float,
    view: tuple[list[str], dict[str, str]] | None = None,
) -> ModuleResult:
    result = ModuleResult(module)
    prefix, env = view if view is not None else ([], None)
    cmd = [*prefix, sys.executable, "-m", "tcpverbs.cli", "run", "--", "python", "run_tests.py"]
    cmd += ["--dev", dev, "-v", f"tests.{module}"]
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=tests, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        output = done.stderr
    except subprocess.TimeoutExpired as exc:
        raw = exc.stderr or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        result.note = f"timed out after {timeout:.0f} s"
    result.seconds = time.monotonic() - started
    for m in RESULT.finditer(output):
        kind = OUTCOMES.get(m["outcome"].split(" ")[0], m["outcome"])
        result.counts[kind] += 1
        name = f"{m['where'].rsplit('.', 1)[0]}.{m['test']}"
        if kind == "skipped":
            result.skips[name] = (m["reason"] or "").strip("'\"")
        elif kind in ("failed", "errors"):
            result.problems.append(name)
    failed_imports = IMPORT_FAILED.findall(output)
    if failed_imports:
        result.note = "did not load: " + ", ".join(failed_imports)
    if not result.counts and not result.note:
        result.note = "no results: " + (output.strip().splitlines() or ["(no output)"])[-1]
    return result


def print_table(results: list[ModuleResult], reasons: bool) -> None:
    console = Console()
    table = Table(title="rdma-core's pyverbs suite on tcpverbs")
    for col in ("module", "passed", "failed", "errors", "skipped", "s", "note"):
        table.add_column(col, justify="left" if col in ("module", "note") else "right")
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.counts)
        row = [r.module, *(str(r.counts[k]) for k in ("passed", "failed", "errors", "skipped"))]
        table.add_row(*row, f"{r.seconds:.0f}", r.note)
    cells = [str(total[k]) for k in ("passed", "failed", "errors", "skipped")]
    table.add_row("total", *cells, f"{sum(r.seconds for r in results):.0f}", "", style="bold")
    console.print(table)
    if reasons:
        for r in results:
            for test, why in sorted(r.skips.items()):
                print(f"skipped {test}: {why}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="test modules (default: every one)")
    parser.add_argument("--tests", type=pathlib.Path, help="an unpacked suite (default: fetch)")
    parser.add_argument("--dev", default="tcpv_lo")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per module")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--reasons", action="store_true", help="list every skip's reason")
    parser.add_argument(
        "--strict", action="store_true", help="fail when a module times out or does not load"
    )
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="rdma-core-suite-"))
    try:
        try:
            tests = args.tests or fetch_suite(workdir)
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            print(f"could not fetch {PACKAGE} ({exc}): the suite does not run here")
            return 3
        modules = args.modules or sorted(p.stem for p in tests.glob("test_*.py"))
        env_note = os.environ.get("TCPVERBS_ENGINE", "default engine")
        print(f"{len(modules)} modules from {tests} on {args.dev} ({env_note})", flush=True)
        view = sysfs_view(args.dev)
        print(
            f"  {args.dev}'s net interface is shown to the suite in a mount namespace"
            if view is not None
            else "  no mount namespace here (root and unshare are needed): "
            "the rdma_cm tests will skip for want of a net interface",
            flush=True,
        )
        results = []
        for module in modules:
            results.append(run_module(tests, module, args.dev, args.timeout, view))
            print(f"  {module}: {dict(results[-1].counts)} {results[-1].note}", flush=True)
        print_table(results, args.reasons)
        if args.json:
            rows = [{**vars(r), "counts": dict(r.counts)} for r in results]
            args.json.write_text(json.dumps(rows, indent=1))
        stuck = [r.module for r in results if r.note]
        if args.strict and stuck:
            print(f"timed out or did not load: {', '.join(stuck)}")
            return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
