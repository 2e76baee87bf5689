"""The benchmark harness (``benchmarks/``): its peer, its runner, its verdicts.

Figures themselves are never asserted here (speed is measured by ``scripts/bench.sh``);
these tests check that every job runs as two processes, reports what the tables read,
and that a target is judged the right way round.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import time
from types import ModuleType
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare = _load("compare")


@pytest.fixture
def runner(tmp_path: pathlib.Path) -> Any:
    return compare.Runner(count_syscalls=False, workdir=tmp_path)


@pytest.mark.parametrize(
    ("mode", "size", "busy"),
    [("bw", 4096, False), ("bw", 4096, True), ("bw", 64, False), ("lat", 8, True)],
)
def test_sockets_peer_moves_every_byte(runner: Any, mode: str, size: int, busy: bool) -> None:
    job = compare.sockets_job("s", "s", mode, busy)
    outcome = runner.run(job.server(size, 300), lambda p, j: job.client(size, 300, p, j))
    raw = json.loads(outcome.stdout)
    assert raw["bytes"] == size * 300 and raw["messages"] == 300
    figures = job.read(outcome)
    assert figures["messages"] == 300  # what Bench.measure divides by
    if mode == "lat":
        assert raw["latency"]["iterations"] == 300
        assert 0 < figures["p50"] <= figures["p99"] <= figures["p999"]
    else:
        assert figures["gbps"] > 0 and figures["msg_rate"] > 0
    assert outcome.cpu > 0


def test_tcpverbs_jobs_run_as_two_processes(runner: Any) -> None:
    bench = compare.Bench(runner)
    send = compare.tcpverbs_job("rc_send", "rc SEND", "send_bw", "-t", "64")
    lat = compare.tcpverbs_job("lat", "lat", "send_lat")
    bench.measure(send, 64, 400)
    bench.measure(lat, 8, 200)
    bw = bench.median("rc_send", 64)
    assert bw["gbps"] > 0 and bw["msg_rate"] > 0
    assert math.isfinite(bw["cpu_per_gb"])  # a difference of two runs: noise may sign it
    assert "syscalls_client" not in bw  # not counted: no made-up figure
    assert bench.median("lat", 8)["p50"] > 0


def test_a_failing_client_is_reported_not_hidden(runner: Any) -> None:
    job = compare.tcpverbs_job("bad", "bad", "send_bw", "--wire", "stream")
    with pytest.raises(RuntimeError, match="at least 1 byte"):
        runner.run(job.server(0, 10), lambda p, j: job.client(0, 10, p, j))


def test_perf_stat_output_is_parsed() -> None:
    csv = "# started on ...\n\n12345,,raw_syscalls:sys_enter,1000,100.00,,\n"
    assert compare._parse_count(csv) == 12345
    assert compare._parse_count("<not counted>,,raw_syscalls:sys_enter,0,0.00,,") is None
    assert compare._parse_count("") is None


def test_targets_are_judged_the_right_way_round() -> None:
    assert compare.Target("bw", 1.2, 1.0, at_least=True).met is True
    assert compare.Target("bw", 0.8, 1.0, at_least=True).met is False
    assert compare.Target("lat", 1.3, 1.25, at_least=False).met is False
    assert compare.Target("lat", 1.0, 1.25, at_least=False).met is True
    assert compare.Target("x", None, 1.0, at_least=True).met is None


def test_every_target_is_computed_from_the_medians() -> None:
    mib, k64 = 1 << 20, 65536
    rows = {
        64: {
            "rc_send": {"msg_rate": 50.0, "syscalls_client": 0.05},
            "sockets": {"msg_rate": 100.0},
        },
        k64: {
            "rc_send": {"gbps": 30.0, "syscalls_client": 0.5, "syscalls_server": 0.1},
            "sockets": {"gbps": 20.0},
        },
        mib: {
            "rc_send": {"gbps": 40.0},
            "rc_write": {"gbps": 20.0},
            "sockets_busy": {"gbps": 40.0},
        },
    }
    lat = {
        "tcpverbs_poll": {"p50": 10.0},
        "sockets_busy": {"p50": 5.0},
        "tcpverbs_events": {"p50": 11.0},
        "sockets_blocking": {"p50": 10.0},
    }
    got = {t.name: (t.measured, t.met) for t in compare.targets(rows, lat)}
    assert got["1 MiB rc SEND / sockets busy"] == (1.0, True)
    assert got["1 MiB rc WRITE / sockets busy"] == (0.5, False)
    assert got["64 KiB rc SEND / sockets"] == (1.5, True)
    assert got["64 B rc SEND msg/s / sockets"] == (0.5, False)
    assert got["8 B latency polling / sockets busy"] == (2.0, False)
    assert got["8 B latency -e / sockets blocking"][1] is True
    assert got["64 B rc SEND syscalls/msg, sender"] == (0.05, True)
    assert got["64 KiB rc SEND syscalls/MiB, sender"] == (8.0, False)
    assert got["64 KiB rc SEND syscalls/MiB, receiver"] == (1.6, True)


def test_the_minimal_pingpong_completes_every_round_trip() -> None:
    script = str(BENCH / "minimal_pingpong.py")
    with socket.socket() as probe:  # a free port for its listener
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    server = subprocess.Popen([sys.executable, script, "serve", port, "300"], cwd=ROOT)
    try:
        for _ in range(100):  # until the listener is up
            client = subprocess.run(
                [sys.executable, script, port, "300"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if client.returncode == 0 or "ECONNREFUSED" not in client.stderr + client.stdout:
                break
            time.sleep(0.1)
        assert client.returncode == 0, client.stderr
        result = json.loads(client.stdout)
        assert result["round_trips"] == 300 and result["p50_one_way_us"] > 0
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()


def test_a_pinned_job_puts_each_side_on_its_own_cpu() -> None:
    job = compare.pinned(compare.sockets_job("sockets_busy", "sockets busy", "lat", busy=True))
    assert (job.key, job.label, job.kind) == ("sockets_busy_pinned", "sockets busy, pinned", "lat")
    server = job.server(8, 100)
    client = job.client(8, 100, "1", pathlib.Path("out.json"))
    assert server[:3] == ["taskset", "-c", "0"] and "serve" in server
    assert client[:3] == ["taskset", "-c", "1"] and "--port" in client


def test_the_pinned_latencies_get_targets_of_their_own() -> None:
    rows = {64: {"native_send": {"msg_rate": 1.0}}}
    lat = {
        "native_poll": {"p50": 20.0},
        "sockets_busy": {"p50": 10.0},
        "native_poll_pinned": {"p50": 6.0},
        "sockets_busy_pinned": {"p50": 5.0},
        "native_events_pinned": {"p50": 12.0},
        "sockets_blocking_pinned": {"p50": 10.0},
    }
    got = {t.name: (t.measured, t.met) for t in compare.targets(rows, lat)}
    assert got["8 B native latency polling / sockets busy"] == (2.0, False)
    assert got["8 B native latency polling / sockets busy, pinned"] == (pytest.approx(1.2), True)
    assert got["8 B native latency -e / sockets blocking, pinned"] == (pytest.approx(1.2), False)


def test_the_docs_tables_come_from_the_saved_run() -> None:
    """markdown() renders a saved JSON report: every job, size, latency row and verdict."""
    metrics = {"gbps": 2.0, "msg_rate": 3000.0, "cpu_per_gb": 0.5}
    bw = {
        str(size): {
            **{
                j.key: {**metrics, "syscalls_client": 0.25, "syscalls_server": 1.5}
                for j in compare.BW_JOBS
            },
            "iperf3": {"gbps": 4.0},
        }
        for size in compare.SIZES
    }
    lat = {j.key: {"p50": 10.0, "p99": 20.0, "p999": 30.0} for j in compare.LAT_JOBS}
    goal = compare.Target("64 B rc SEND msg/s / sockets", 0.5, 1.0, at_least=True)
    report = {
        "rounds": 3,
        "bandwidth": bw,
        "latency_8B": lat,
        "targets": [
            {"name": goal.name, "measured": 0.5, "limit": 1.0, "at_least": True, "unit": "x"}
        ],
    }
    text = compare.markdown(report)
    assert "median of 3 rounds" in text
    assert "| 1 MiB | 2.00 | 2.00 |" in text and "| 4.00 | 1.00x | 1.00x | 1.00x |" in text
    assert "| 64 B | 3 | 3 |" in text  # thousands of messages per second
    assert "0.25 / 1.50" in text
    assert "| tcpverbs polling | 10.00 | 20.00 | 30.00 |" in text
    assert "| 64 B rc SEND msg/s / sockets | 0.50x | >= 1x | not met |" in text


def _alive(marker: str, grace: float = 5.0) -> list[int]:
    """Processes whose command line holds *marker* (the test's own leftovers) that are
    still running after *grace* seconds: a killed grandchild may take a moment to go."""
    import psutil

    deadline = time.monotonic() + grace
    while True:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if marker in " ".join(proc.info["cmdline"] or []):
                    found.append(proc.pid)
            except psutil.Error:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def counting_runner(tmp_path: pathlib.Path) -> Any:
    """A runner that wraps both sides in ``perf stat`` where that works here: then the
    measured programs are grandchildren, the case where a plain kill would miss them."""
    return compare.Runner(compare.syscall_counter_works(), tmp_path)


def test_a_failing_client_leaves_no_server_behind(counting_runner: Any) -> None:
    job = compare.sockets_job("s", "s", "bw", busy=True)
    with pytest.raises(RuntimeError, match="raise SystemExit"):
        counting_runner.run(
            job.server(777, 10), lambda p, j: [sys.executable, "-c", "raise SystemExit(3)"]
        )
    assert _alive("serve msg 777") == [] and _alive("serve bw 777") == []


def test_a_client_past_its_time_is_killed_with_its_server(
    counting_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compare, "RUN_TIMEOUT", 2)
    job = compare.sockets_job("s", "s", "bw", busy=False)
    sleeper = "import time; time.sleep(60)  # marker-778"
    with pytest.raises(subprocess.TimeoutExpired):
        counting_runner.run(job.server(778, 10), lambda p, j: [sys.executable, "-c", sleeper])
    assert _alive("marker-778") == [] and _alive("serve bw 778") == []


def test_a_server_that_never_starts_is_reported_and_killed(
    counting_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compare, "START_TIMEOUT", 1)
    silent = [sys.executable, "-c", "import time; time.sleep(60)  # marker-779"]
    with pytest.raises(RuntimeError, match="did not start"):
        counting_runner.run(silent, lambda p, j: [sys.executable, "-c", "pass"])
    assert _alive("marker-779") == []


def test_a_failing_iperf3_leaves_an_empty_column_not_a_lost_run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "iperf3"  # a server that waits, a client that fails at once
    server = "exec sleep 29.731"  # (a duration nothing else on the machine uses)
    fake.write_text(f'#!/bin/sh\ncase "$*" in *" -s "*|"-s "*) {server} ;; *) exit 1 ;; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert compare.iperf3(4096) is None
    assert _alive("sleep 29.731") == []


def test_per_message_costs_use_the_counts_the_runs_report(tmp_path: pathlib.Path) -> None:
    """perf rounds -n up to whole post lists: the divisor is what was sent, and the short
    run's CPU and system calls are subtracted (start-up cancels out)."""
    runs = iter(
        [  # (cpu, client syscalls, server syscalls, messages actually sent)
            (5.0, 1300, 2600, 1000),
            (2.0, 1000, 2000, 400),  # asked for small_count(1000) = 250, sent 400
        ]
    )

    class FakeRunner:
        count_syscalls = True

        def run(self, server: object, client: object) -> Any:
            cpu, cs, ss, sent = next(runs)
            return compare.Outcome(json.dumps({"sent": sent}), tmp_path, cpu, cs, ss)

    job = compare.Job(
        "j",
        "j",
        "bw",
        lambda size, n: [],
        lambda size, n, port, out: [],
        lambda o: {"gbps": 1.0, "messages": json.loads(o.stdout)["sent"]},
    )
    bench = compare.Bench(FakeRunner())
    bench.measure(job, 1000, 1000)
    m = bench.median("j", 1000)
    assert m["syscalls_client"] == pytest.approx(300 / 600)
    assert m["syscalls_server"] == pytest.approx(600 / 600)
    assert m["cpu_per_gb"] == pytest.approx(3.0 / (600 * 1000 / 1e9))
    assert "messages" not in m


def test_a_negative_cpu_figure_is_shown_as_about_zero() -> None:
    """A CPU figure is the difference of two runs: a negative one (a blocking program's
    round trip once came out at -11.5 us) is noise below resolution, not a time."""
    assert compare._fmt_cpu(-11.5, ".1f") == "~0"
    assert compare._fmt_cpu(0.5) == "0.50"
    assert compare._fmt_cpu(None) == "-"


@pytest.mark.parametrize("job", [*compare.BW_JOBS, *compare.LAT_JOBS], ids=lambda j: j.key)
def test_every_job_of_the_benchmark_measures_end_to_end(runner: Any, job: Any) -> None:
    """Each configuration the tables show runs through Bench.measure (both runs, the
    subtraction) and yields its figures: the smoke test of scripts/bench.sh, in small."""
    bench = compare.Bench(runner)
    size = 4096 if job.kind == "bw" else compare.LAT_SIZE
    bench.measure(job, size, 400)
    figures = bench.median(job.key, size)
    wanted = {"gbps", "msg_rate", "cpu_per_gb"} if job.kind == "bw" else {"p50", "p99", "p999"}
    assert wanted <= set(figures) and "messages" not in figures
    assert all(figures[k] > 0 for k in wanted if k != "cpu_per_gb")


@pytest.mark.parametrize(
    "job",
    [
        j
        for j in (*compare.BW_JOBS, *compare.LAT_JOBS)
        if j.key.startswith(("rc_", "stream_", "tcpverbs_", "native_"))
    ],
    ids=lambda j: j.key,
)
def test_every_tcpverbs_job_names_its_engine(job: Any) -> None:
    """Both processes of a tcpverbs job say which engine they run: a column must not
    change engines when the default does (the Python columns once ran the native one)."""
    want = "native" if job.key.startswith("native_") else "python"
    server = job.server(64, 100)
    client = job.client(64, 100, "1", pathlib.Path("out.json"))
    for cmd in (server, client):
        assert cmd[cmd.index("--engine") + 1] == want


@pytest.mark.skipif(
    not pathlib.Path("/usr/include/liburing.h").exists(), reason="liburing-dev is not installed"
)
@pytest.mark.parametrize("mode", ["calls", "uring", "uring-defer"])
@pytest.mark.parametrize(("test", "count", "size"), [("rate", 2000, 64), ("pingpong", 200, 8)])
def test_the_io_uring_trial_moves_every_message(
    tmp_path: pathlib.Path, mode: str, test: str, count: int, size: int
) -> None:
    """The io_uring trial's program runs each way and reports what it moved (the receiver
    waits for every byte, and the run is bounded); figures: benchmarks/io_uring_trial.sh."""
    binary = tmp_path / "io_uring_trial"
    subprocess.run(
        [
            "gcc",
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(binary),
            str(BENCH / "io_uring_trial.c"),
            "-luring",
            "-lpthread",
        ],
        check=True,
    )
    out = subprocess.run(
        [str(binary), mode, test, str(count), str(size), "16"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(out.stdout)
    assert report["mode"] == mode and report["test"] == test
    assert report["messages"] == (2 * count if test == "pingpong" else count)
    # (the receiver may find everything there when it arms its receive: no call to count)
    assert report["sender_calls"] >= 1


@pytest.mark.parametrize("mode", ["recv", "ppoll", "epoll"])
def test_the_sleep_trial_checks_every_reply(tmp_path: pathlib.Path, mode: str) -> None:
    """The sleep trial's ping-pong runs each way; the client checks each echoed sequence
    number, so a zero exit means every message went both ways (figures:
    benchmarks/sleep_trial.sh)."""
    binary = tmp_path / "sleep_trial"
    cflags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    subprocess.run(["gcc", *cflags, "-o", str(binary), str(BENCH / "sleep_trial.c")], check=True)
    out = subprocess.run(
        [str(binary), mode, "300"], check=True, capture_output=True, text=True, timeout=60
    )
    report = json.loads(out.stdout)
    assert report["mode"] == mode and report["iterations"] == 300
    assert 0 < report["one_way_us"] <= report["p99_us"]
    bad = subprocess.run(
        [str(binary), "sideways", "10"], check=False, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "bad mode" in bad.stderr
