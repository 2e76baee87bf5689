"""The ``tcpverbs`` command line (tcpverbs.cli)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tcpverbs.cli import main
from tcpverbs.device import find_device, get_device_list
from tcpverbs.engine import available_engines, default_engine

SRC = Path(__file__).resolve().parent.parent / "src"


def test_devices_lists_like_ibv_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "    device          \t   node GUID"
    assert lines[1] == "    ------          \t----------------"
    lo = find_device("tcpv_lo")
    assert f"    tcpv_lo         \t{lo.node_guid:016x}" in lines
    assert len(lines) == 2 + len(get_device_list())
    for line in lines[2:]:
        assert re.fullmatch(r"    tcpv_\S+ *\t[0-9a-f]{16}", line)


def test_devinfo_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devinfo", "-d", "tcpv_lo"]) == 0
    out = capsys.readouterr().out
    guid = f"{find_device('tcpv_lo').node_guid:016x}"
    assert out.startswith("hca_id:\ttcpv_lo\n")
    assert "\ttransport:\t\t\tInfiniBand (0)\n" in out
    assert f"\tnode_guid:\t\t\t{guid[0:4]}:{guid[4:8]}:{guid[8:12]}:{guid[12:16]}\n" in out
    assert "\tphys_port_cnt:\t\t\t1\n" in out
    assert "\t\tport:\t1\n" in out
    assert "\t\t\tstate:\t\t\tPORT_ACTIVE (4)\n" in out
    assert "\t\t\tmax_mtu:\t\t4096 (5)\n" in out
    assert "\t\t\tlink_layer:\t\tEthernet\n" in out
    assert "max_qp:" not in out and "GID[" not in out  # only with -v


def test_devinfo_verbose_has_limits_and_gids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devinfo", "-d", "tcpv_lo", "-v"]) == 0
    out = capsys.readouterr().out
    assert "\tmax_qp:\t\t\t\t16384\n" in out
    assert "\tmax_sge:\t\t\t32\n" in out
    assert "\tatomic_cap:\t\t\tATOMIC_HCA (1)\n" in out
    assert "\t\t\tGID[  0]:\t\t::ffff:127.0.0.1\n" in out
    assert "\t\t\tphys_state:\t\tLINK_UP (5)\n" in out


def test_devinfo_verbose_names_the_engine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TCPVERBS_ENGINE", raising=False)
    assert main(["devinfo", "-d", "tcpv_lo", "-v"]) == 0
    default, available = default_engine(), ", ".join(available_engines())
    assert f"\tengine:\t\t\t\t{default} (available: {available})" in capsys.readouterr().out
    monkeypatch.setenv("TCPVERBS_ENGINE", "nonsense")
    assert main(["devinfo", "-d", "tcpv_lo", "-v"]) == 0
    assert "nonsense (NOT available here" in capsys.readouterr().out


def test_devinfo_all_devices_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devinfo"]) == 0
    out = capsys.readouterr().out
    for dev in get_device_list():
        assert f"hca_id:\t{dev.name.decode()}\n" in out
    assert main(["devinfo", "-l"]) == 0
    out = capsys.readouterr().out
    assert "\ttcpv_lo\n" in out
    assert re.match(r"\d+ HCAs? found:\n", out)


def test_devinfo_unknown_device_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devinfo", "-d", "tcpv_nonexistent"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tcpverbs: no tcpverbs device named 'tcpv_nonexistent'")
    assert "Traceback" not in captured.err


def test_devinfo_bad_port_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devinfo", "-d", "tcpv_lo", "-i", "2"]) == 1
    assert capsys.readouterr().err.startswith("tcpverbs: invalid port 2")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nosuchcommand"], ["devinfo", "-i", "0"], ["demo", "--size", "x"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_demo_is_lazy_and_gets_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    def fake_main(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    fake = types.ModuleType("tcpverbs.demo")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tcpverbs.demo", fake)
    assert main(["demo"]) == 7
    assert (seen[-1].size, seen[-1].count) == (4096, 8)
    assert main(["demo", "--size", "65536", "--count", "3"]) == 7
    assert (seen[-1].size, seen[-1].count) == (65536, 3)


def test_python_dash_m_devices() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-m", "tcpverbs.cli", "devices"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "    device          \t   node GUID"
    assert "tcpv_lo" in proc.stdout
