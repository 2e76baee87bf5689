"""``tcpverbs perf``: every test runs between two processes and prints perftest's table."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from tcpverbs.cli import main
from tcpverbs.perf.report import lat_result

ROOT = pathlib.Path(__file__).resolve().parent.parent


def perf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcpverbs.cli", "perf", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("test", "size", "header"),
    [
        ("send_bw", "4096", "BW peak[MB/sec]"),
        ("write_bw", "65536", "BW average[MB/sec]"),
        ("read_bw", "1024", "MsgRate[Mpps]"),
        ("send_lat", "64", "t_typical[usec]"),
        ("write_lat", "8", "99.9% percentile[usec]"),
        ("read_lat", "64", "t_stdev[usec]"),
        ("atomic_lat", "8", "t_min[usec]"),
    ],
)
def test_each_test_over_loopback(test: str, size: str, header: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "r.json"
    done = perf(test, "--loopback", "-n", "200", "-s", size, "--out_json", str(out))
    assert done.returncode == 0, done.stderr
    assert header in done.stdout
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 1 and rows[0][0] == size and int(rows[0][1]) >= 200
    result = json.loads(out.read_text())["results"][0]
    assert result["size"] == int(size)
    if test.endswith("_bw"):
        assert result["bw_avg"] > 0 and result["bw_peak"] >= result["bw_avg"]
    else:
        assert 0 < result["t_min"] <= result["t_typical"] <= result["t_max"]


def test_all_sizes_events_and_gbits() -> None:
    done = perf("send_bw", "--loopback", "-a", "-n", "20", "-e", "--report_gbits")
    assert done.returncode == 0, done.stderr
    sizes = [
        int(line.split()[0]) for line in done.stdout.splitlines() if line.strip()[:1].isdigit()
    ]
    assert sizes == [1 << k for k in range(1, 24)]
    assert "Gb/sec" in done.stdout


def test_duration_mode() -> None:
    done = perf("send_lat", "--loopback", "-D", "0.3")
    assert done.returncode == 0, done.stderr
    row = next(line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit())
    assert int(row[1]) > 10  # as many round trips as fit in 0.3 s


def test_client_and_server_as_two_commands() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tcpverbs.cli", "perf", "read_lat", "--print-port", "-p", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        done = perf("read_lat", "127.0.0.1", "-p", port, "-n", "50")
        assert done.returncode == 0, done.stderr
        assert server.wait(30) == 0
    finally:
        server.kill()
        server.wait()
        if server.stdout:
            server.stdout.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send_bw", "--loopback", "-q", "2"], "not supported yet"),
        (["write_bw", "--loopback", "--wire", "stream"], "needs --wire rc"),
        (["send_bw", "--loopback", "-n", "0"], "must be positive"),
    ],
)
def test_bad_options(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["perf", *args]) == 1
    assert message in capsys.readouterr().err


def test_latency_statistics() -> None:
    r = lat_result(8, [float(x) for x in range(1, 1001)])
    assert (r.t_min, r.t_max, r.iterations) == (1.0, 1000.0, 1000)
    assert r.t_typical == 500.5 and r.p99 == 990.0 and r.p999 == 999.0
