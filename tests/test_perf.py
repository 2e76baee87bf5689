"""``tcpverbs perf``: every test runs between two processes and prints perftest's table."""

from __future__ import annotations

import errno
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from tcpverbs.cli import build_parser, main
from tcpverbs.errors import TcpverbsError
from tcpverbs.perf.cli import run_perf
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


def table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]


def run_json(tmp_path: pathlib.Path, *args: str) -> tuple[str, list[list[str]], list[Any]]:
    """Run a perf test with --out_json; return its output, the table rows and the results."""
    out = tmp_path / "r.json"
    done = perf(*args, "--loopback", "--out_json", str(out))
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    results = json.loads(out.read_text())["results"]
    assert [int(row[0]) for row in rows] == [r["size"] for r in results]
    return done.stdout, rows, results


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
    stdout, rows, (result,) = run_json(tmp_path, test, "-n", "200", "-s", size)
    assert header in stdout
    assert rows[0][0] == size and int(rows[0][1]) >= 200
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


@pytest.mark.parametrize(
    "args", [["send_lat"], ["send_bw", "-q", "2", "-b", "-s", "4096", "--wire", "stream"]]
)
def test_duration_mode(args: list[str]) -> None:
    done = perf(*args, "--loopback", "-D", "0.3")
    assert done.returncode == 0, done.stderr
    row = next(line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit())
    assert int(row[1]) > 10  # as many round trips (or messages) as fit in 0.3 s


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


@pytest.mark.parametrize("test", ["send_bw", "write_bw", "read_bw"])
def test_several_qps_add_up(test: str, tmp_path: pathlib.Path) -> None:
    _, rows, (r,) = run_json(tmp_path, test, "-q", "3", "-n", "100", "-s", "4096")
    per_qp = r["per_qp"]
    assert isinstance(per_qp, list) and len(per_qp) == 3 and r["qps"] == 3
    assert all(n >= 100 for n in per_qp)  # -n counts per QP, as in perftest
    assert r["iterations"] == sum(per_qp) == int(rows[0][1])
    assert r["bytes"] == r["iterations"] * 4096
    assert r["bw_avg"] > 0 and r["bw_peak"] >= r["bw_avg"]


@pytest.mark.parametrize(("test", "qps"), [("send_bw", "1"), ("write_bw", "2"), ("read_bw", "2")])
def test_bidirectional_reports_both_directions(test: str, qps: str, tmp_path: pathlib.Path) -> None:
    _, rows, (r,) = run_json(tmp_path, test, "-b", "-q", qps, "-n", "100", "-s", "8192")
    client, server = r["directions"]
    for part in (client, server):
        assert part["bw_avg"] > 0 and part["iterations"] >= 100 * int(qps)
        assert sum(part["per_qp"]) == part["iterations"]
        assert part["bytes"] == part["iterations"] * 8192
    assert r["iterations"] == client["iterations"] + server["iterations"] == int(rows[0][1])
    assert r["bytes"] == client["bytes"] + server["bytes"]
    assert r["bw_avg"] == pytest.approx(client["bw_avg"] + server["bw_avg"])
    assert float(rows[0][3]) == pytest.approx(r["bw_avg"], abs=0.01)


@pytest.mark.parametrize(
    "extra",
    [
        ["-s", "65536", "-n", "100"],
        ["-s", "1000", "-n", "100", "-q", "2", "-b", "-e"],
        # receives of the largest size take in several small messages at a time
        ["-a", "-n", "20"],
    ],
)
def test_send_bw_over_stream(extra: list[str], tmp_path: pathlib.Path) -> None:
    stdout, _, results = run_json(tmp_path, "send_bw", "--wire", "stream", *extra)
    assert "(stream, tcpv_lo)" in stdout and results
    for r in results:
        assert r["bw_avg"] > 0 and r["bytes"] == r["iterations"] * r["size"]


@pytest.mark.parametrize("size", ["2", "300000"])  # 300 kB arrives in several pieces
def test_send_lat_over_stream(size: str, tmp_path: pathlib.Path) -> None:
    _, rows, (r,) = run_json(tmp_path, "send_lat", "--wire", "stream", "-n", "100", "-s", size)
    assert rows[0][0] == size and r["iterations"] == 100
    assert 0 < r["t_min"] <= r["t_typical"] <= r["t_max"]


@pytest.mark.parametrize("wire", ["rc", "stream"])
@pytest.mark.parametrize("size", ["2", "300000"])
def test_send_lat_sleeping_on_events(wire: str, size: str, tmp_path: pathlib.Path) -> None:
    """-e: both sides sleep on the channel (the server watching the control CQ too)."""
    _, rows, (r,) = run_json(tmp_path, "send_lat", "--wire", wire, "-e", "-n", "100", "-s", size)
    assert rows[0][0] == size and r["iterations"] == 100
    assert 0 < r["t_min"] <= r["t_typical"] <= r["t_max"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["send_lat", "-q", "2"], errno.EINVAL, "-q > 1 and -b need a _bw test, not send_lat"),
        (["read_lat", "-b"], errno.EINVAL, "-q > 1 and -b need a _bw test, not read_lat"),
        (["send_bw", "-q", "0"], errno.EINVAL, "-q must be in 1..64"),
        (["write_bw", "-q", "65"], errno.EINVAL, "-q must be in 1..64"),
        (["write_bw", "--wire", "stream"], errno.EINVAL, "needs --wire rc"),
        (["send_lat", "--wire", "stream", "-s", "0"], errno.EINVAL, "at least 1 byte"),
        (["send_bw", "-n", "0"], errno.EINVAL, "must be positive"),
    ],
)
def test_bad_options(
    args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TcpverbsError) as info:
        run_perf(build_parser().parse_args(["perf", *args, "--loopback"]))
    assert info.value.errno == code and message in str(info.value)
    assert main(["perf", *args, "--loopback"]) == 1  # and the command line says so
    assert message in capsys.readouterr().err


def test_latency_statistics() -> None:
    r = lat_result(8, [float(x) for x in range(1, 1001)])
    assert (r.t_min, r.t_max, r.iterations) == (1.0, 1000.0, 1000)
    assert r.t_typical == 500.5 and r.p99 == 990.0 and r.p999 == 999.0


def test_bandwidth_tests_cycle_through_one_page_like_perftest() -> None:
    """Small messages take successive places in one page, larger ones share one buffer:
    the same memory footprint as perftest's and as the plain-socket peer's."""
    from tcpverbs.perf.session import PerfConfig, _bw_slots, _pool_size

    cfg = PerfConfig("send_bw", [64, 65536], tx_depth=128, rx_depth=512)
    assert _bw_slots(cfg, 64) == 64
    assert _bw_slots(cfg, 2048) == 2
    assert _bw_slots(cfg, 4096) == _bw_slots(cfg, 1 << 20) == 1
    assert _bw_slots(PerfConfig("send_bw", [8], tx_depth=4, rx_depth=4), 8) == 4  # queue-bound
    assert _pool_size(cfg) == 2 * 65536


@pytest.mark.parametrize("test", ["write_bw", "read_bw", "send_bw"])
def test_sizes_that_are_not_powers_of_two_share_one_registration(test: str) -> None:
    """The data MR is sized for every size of the run, so RDMA targets stay inside the
    peer's MR and its rkey stays valid (sizes 1000 and 1100 need 4000 and 3300 bytes)."""
    import threading

    from tcpverbs.context import Context
    from tcpverbs.perf.session import PerfConfig, _pool_size, run_client, run_server

    cfg = PerfConfig(test, [1000, 1100], iters=300, bidirectional=test != "read_bw")
    assert _pool_size(cfg) >= 4000
    ports: list[int] = []
    ready = threading.Event()
    with Context(name="tcpv_lo") as server_ctx, Context(name="tcpv_lo") as client_ctx:

        def serve() -> None:
            run_server(server_ctx, "127.0.0.1", 0, lambda p: (ports.append(p), ready.set()))

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        assert ready.wait(10)
        results = run_client(client_ctx, "127.0.0.1", ports[0], cfg)
        server.join(30)
    assert [r.size for r in results] == [1000, 1100]
    assert all(r.iterations >= 300 for r in results)
