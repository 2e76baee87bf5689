"""tcpverbs against plain Python sockets (and iperf3), back to back on loopback, in one run.

    python benchmarks/compare.py [--quick] [--rounds N] [--json FILE] [--png DIR]
    python benchmarks/compare.py --replot FILE [--png DIR]    (the PNGs of a saved run)

For 64 B, 4 KiB, 64 KiB and 1 MiB it runs, as two processes each:

- ``tcpverbs perf``: rc SEND (busy polling, and with ``-e``: sleeping on completion
  events), rc WRITE and stream SEND bandwidth (post lists of 100 WRs with the last one
  signaled, as perftest does), and 8 B SEND latency, polling and with ``-e``;
- ``sockets_peer.py``: the same jobs done the plain way — ``sendall``/``recv_into`` for
  bulk, one ``send()`` per message for 64 B, with a blocking and with a busy-polling
  receiver; ping-pong blocking and busy-polling;
- ``zmq_peer.py``: pyzmq PUSH/PULL (bandwidth and message rate), when pyzmq is
  installed: what a Python user picks for fast messaging, with a native engine too;
- iperf3 (one process, its own client and server) when it is installed.

Every configuration runs ``--rounds`` times (3; 1 with ``--quick``), the rounds
interleaved so that a noisy minute hurts every column alike, and the tables show medians.
System calls are counted per process with ``perf stat -e raw_syscalls:sys_enter`` (when
``perf`` works here) and reported per message for each side; start-up and set-up are
cancelled out by subtracting a short run of the same job.  CPU is user + sys of both
processes, set-up subtracted the same way.  The last table holds the targets of issue
#10 (the native engine) against what was measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from tcpverbs.engine import available_engines

HERE = pathlib.Path(__file__).resolve().parent
SIZES = (64, 4096, 65536, 1 << 20)
LAT_SIZE = 8
RUN_TIMEOUT = 600  # seconds one process may take
START_TIMEOUT = 60  # seconds a server may take to print its port
Metrics = dict[str, float]


# -- running one job as two processes --------------------------------------------------
def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def syscall_counter_works() -> bool:
    """``perf stat`` can count the raw_syscalls tracepoint here (root, tracefs, perf)."""
    if shutil.which("perf") is None:
        return False
    done = subprocess.run(
        ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and _parse_count(done.stderr) is not None


def _parse_count(perf_csv: str) -> int | None:
    for line in perf_csv.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == "raw_syscalls:sys_enter":
            return int(fields[0]) if fields[0].isdigit() else None
    return None


@dataclass
class Outcome:
    """One run of a job: the client's output, CPU of both sides, syscalls of each."""

    stdout: str
    json_path: pathlib.Path
    cpu: float
    syscalls_client: int | None
    syscalls_server: int | None


class Runner:
    def __init__(self, count_syscalls: bool, workdir: pathlib.Path) -> None:
        self.count_syscalls = count_syscalls
        self.workdir = workdir
        self._seq = 0

    def _wrap(self, argv: list[str], counts: pathlib.Path) -> list[str]:
        if not self.count_syscalls:
            return argv
        return [
            "perf",
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter",
            "-o",
            str(counts),
            "--",
            *argv,
        ]

    def run(self, server: list[str], client: Callable[[str, pathlib.Path], list[str]]) -> Outcome:
        """Start *server* (it prints its port first), then ``client(port, json_path)``.

        Each side runs in a session of its own, and whatever goes wrong (a failure, a
        time-out) kills both whole sessions: under ``perf stat`` killing the direct child
        would only kill perf and leave the measured program spinning on a core.
        """
        self._seq += 1
        base = self.workdir / f"run{self._seq}"
        srv_counts, cli_counts = base.with_suffix(".srv"), base.with_suffix(".cli")
        out_json = base.with_suffix(".json")
        before = _children_cpu()
        # stderr goes to files: a pipe nobody reads could fill and stall a process
        with (
            base.with_suffix(".err").open("w+") as srv_err,
            base.with_suffix(".cerr").open("w+") as cli_err,
            _session(self._wrap(server, srv_counts), stdout=subprocess.PIPE, stderr=srv_err) as srv,
        ):
            cli: subprocess.Popen[str] | None = None
            try:
                port = _first_line(srv, START_TIMEOUT)
                if not port.isdigit():
                    srv_err.seek(0)
                    raise RuntimeError(
                        f"{' '.join(server)} did not start: {port!r} {srv_err.read()[-500:]}"
                    )
                argv = client(port, out_json)
                cli = _session(self._wrap(argv, cli_counts), stdout=subprocess.PIPE, stderr=cli_err)
                stdout, _ = cli.communicate(timeout=RUN_TIMEOUT)
                if cli.returncode != 0:
                    cli_err.seek(0)
                    raise RuntimeError(f"{' '.join(argv)}: {cli_err.read()[-800:]}")
                srv.wait(RUN_TIMEOUT)
            finally:
                for proc in (cli, srv):
                    if proc is not None and proc.poll() is None:
                        _kill_session(proc)
        cpu = _children_cpu() - before

        def counted(path: pathlib.Path) -> int | None:
            return _parse_count(path.read_text()) if path.exists() else None

        return Outcome(stdout, out_json, cpu, counted(cli_counts), counted(srv_counts))


def _session(argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, text=True, start_new_session=True, **kwargs)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line *proc* prints, or "" if it prints none within *timeout* seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


# -- the jobs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    key: str  # name in the JSON
    label: str  # column heading
    kind: str  # "bw" or "lat"
    server: Callable[[int, int], list[str]]  # (size, count) -> argv
    client: Callable[[int, int, str, pathlib.Path], list[str]]  # (size, count, port, json)
    read: Callable[[Outcome], Metrics]  # the client's figures


def _perf(test: str, *extra: str) -> tuple[Callable[..., list[str]], Callable[..., list[str]]]:
    cli = [sys.executable, "-m", "tcpverbs.cli", "perf", test]
    engine = [*extra[extra.index("--engine") :][:2]] if "--engine" in extra else []

    def server(size: int, count: int) -> list[str]:
        return [*cli, "--print-port", "-p", "0", *engine]

    def client(size: int, count: int, port: str, out: pathlib.Path) -> list[str]:
        args = [*cli, "127.0.0.1", "-p", port, "-s", str(size), "-n", str(count)]
        return [*args, "--report_gbits", "--out_json", str(out), *extra]

    return server, client


def _read_perf_bw(o: Outcome) -> Metrics:
    r = json.loads(o.json_path.read_text())["results"][0]
    return {"gbps": r["bw_avg"], "msg_rate": r["msg_rate_mpps"] * 1e6, "messages": r["iterations"]}


def _read_lat(latency: dict[str, float]) -> Metrics:
    return {
        "p50": latency["t_typical"],
        "p99": latency["p99"],
        "p999": latency["p999"],
        "messages": latency["iterations"],
    }


def tcpverbs_job(key: str, label: str, test: str, *extra: str) -> Job:
    server, client = _perf(test, *extra)
    if test.endswith("_bw"):
        return Job(key, label, "bw", server, client, _read_perf_bw)
    return Job(
        key,
        label,
        "lat",
        server,
        client,
        lambda o: _read_lat(json.loads(o.json_path.read_text())["results"][0]),
    )


def sockets_job(key: str, label: str, mode: str, busy: bool) -> Job:
    peer = [sys.executable, str(HERE / "sockets_peer.py")]
    flags = ["--busy"] if busy else []

    def pick(size: int) -> str:
        return "msg" if mode == "bw" and size <= 64 else mode  # 64 B: one send() per message

    def server(size: int, count: int) -> list[str]:
        return [*peer, "serve", pick(size), str(size), str(count), *flags]

    def client(size: int, count: int, port: str, out: pathlib.Path) -> list[str]:
        return [*peer, pick(size), str(size), str(count), "--port", port, *flags]

    def read(o: Outcome) -> Metrics:
        d = json.loads(o.stdout)
        if mode == "lat":
            return _read_lat(d["latency"])
        return {
            "gbps": d["bytes"] * 8 / d["seconds"] / 1e9,
            "msg_rate": d["messages"] / d["seconds"],
            "messages": d["messages"],
        }

    return Job(key, label, "lat" if mode == "lat" else "bw", server, client, read)


def zmq_job(key: str, label: str) -> Job:
    peer = [sys.executable, str(HERE / "zmq_peer.py")]

    def server(size: int, count: int) -> list[str]:
        return [*peer, "serve", str(size), str(count)]

    def client(size: int, count: int, port: str, out: pathlib.Path) -> list[str]:
        return [*peer, str(size), str(count), "--port", port]

    def read(o: Outcome) -> Metrics:
        d = json.loads(o.stdout)
        return {
            "gbps": d["bytes"] * 8 / d["seconds"] / 1e9,
            "msg_rate": d["messages"] / d["seconds"],
            "messages": d["messages"],
        }

    return Job(key, label, "bw", server, client, read)


HAVE_PYZMQ = importlib.util.find_spec("zmq") is not None
HAVE_NATIVE = "native" in available_engines()
NATIVE = ("--engine", "native")
PYTHON = ("--engine", "python")  # named: the default engine is the native one
BW_JOBS = (
    tcpverbs_job("rc_send", "rc SEND", "send_bw", *PYTHON, "-t", "256"),
    tcpverbs_job("rc_send_events", "rc SEND -e", "send_bw", *PYTHON, "-t", "256", "-e"),
    tcpverbs_job("rc_write", "rc WRITE", "write_bw", *PYTHON, "-t", "256"),
    tcpverbs_job("stream_send", "stream SEND", "send_bw", *PYTHON, "-t", "256", "--wire", "stream"),
    *(
        [
            tcpverbs_job("native_send", "native rc SEND", "send_bw", *NATIVE, "-t", "256"),
            tcpverbs_job(
                "native_send_events", "native rc SEND -e", "send_bw", *NATIVE, "-t", "256", "-e"
            ),
            tcpverbs_job("native_write", "native rc WRITE", "write_bw", *NATIVE, "-t", "256"),
            tcpverbs_job(
                "native_stream_send",
                "native stream SEND",
                "send_bw",
                *NATIVE,
                *("-t", "256", "--wire", "stream"),
            ),
        ]
        if HAVE_NATIVE
        else []
    ),
    sockets_job("sockets", "sockets", "bw", busy=False),
    sockets_job("sockets_busy", "sockets busy", "bw", busy=True),
    *([zmq_job("pyzmq", "pyzmq PUSH/PULL")] if HAVE_PYZMQ else []),
)


def pinned(job: Job) -> Job:
    """*job* with its server on CPU 0 and its client on CPU 1 (``taskset``), as latency
    benchmarks are usually run: unpinned, this 2-vCPU VM gives every program a bimodal
    latency from one run to the next (docs/benchmarks.md), and the draw decides a ratio."""

    def server(size: int, count: int) -> list[str]:
        return ["taskset", "-c", "0", *job.server(size, count)]

    def client(size: int, count: int, port: str, out: pathlib.Path) -> list[str]:
        return ["taskset", "-c", "1", *job.client(size, count, port, out)]

    return Job(f"{job.key}_pinned", f"{job.label}, pinned", job.kind, server, client, job.read)


CAN_PIN = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
_NATIVE_LAT = (
    [
        tcpverbs_job("native_poll", "native polling", "send_lat", *NATIVE),
        tcpverbs_job("native_events", "native -e (events)", "send_lat", *NATIVE, "-e"),
    ]
    if HAVE_NATIVE
    else []
)
_SOCKETS_LAT = [
    sockets_job("sockets_busy", "sockets busy-polling", "lat", busy=True),
    sockets_job("sockets_blocking", "sockets blocking", "lat", busy=False),
]
LAT_JOBS = (
    tcpverbs_job("tcpverbs_poll", "tcpverbs polling", "send_lat", *PYTHON),
    tcpverbs_job("tcpverbs_events", "tcpverbs -e (events)", "send_lat", *PYTHON, "-e"),
    *_NATIVE_LAT,
    *_SOCKETS_LAT,
    *([pinned(j) for j in (*_NATIVE_LAT, *_SOCKETS_LAT)] if CAN_PIN else []),
)


def bw_count(size: int, quick: bool) -> int:
    budget = (256 << 20) if quick else (1 << 30)  # bytes per bandwidth point
    return max(500 if quick else 2000, min(200_000, budget // size))


def small_count(count: int) -> int:
    """The short run whose system calls are subtracted (start-up, connection set-up)."""
    return max(100, count // 4)


# -- measuring ---------------------------------------------------------------------------
class Bench:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.samples: dict[tuple[str, int], list[Metrics]] = {}

    def measure(self, job: Job, size: int, count: int) -> None:
        """One run of *job*, and a short run of it, every round: what the two differ by
        is the cost of the messages of the difference alone — interpreter start-up and
        connection set-up cancel out, and the median over rounds tames what spinning adds
        to either.  Message counts are those the runs report (perf rounds ``-n`` up to
        whole post lists)."""
        o = self._run(job, size, count)
        s = self._run(job, size, small_count(count))
        m, short = job.read(o), job.read(s)
        extra = m.pop("messages") - short["messages"]
        cpu = o.cpu - s.cpu  # noise may sign it: _fmt_cpu shows a negative one as ~0
        if job.kind == "bw":
            m["cpu_per_gb"] = cpu / (size * extra / 1e9)
        else:
            m["cpu_per_msg_us"] = cpu / extra * 1e6
        for side, full, less in (
            ("client", o.syscalls_client, s.syscalls_client),
            ("server", o.syscalls_server, s.syscalls_server),
        ):
            if full is not None and less is not None:
                m[f"syscalls_{side}"] = (full - less) / extra
        self.samples.setdefault((job.key, size), []).append(m)

    def _run(self, job: Job, size: int, count: int) -> Outcome:
        return self.runner.run(job.server(size, count), lambda p, j: job.client(size, count, p, j))

    def median(self, key: str, size: int) -> Metrics:
        runs = self.samples.get((key, size), [])
        if not runs:
            return {}
        keys = {k for r in runs for k in r}  # a figure missing in one round is not lost
        return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def iperf3(size: int) -> float | None:
    """iperf3's Gbit/s with *size*-byte writes (2 s); None without iperf3 or if it fails."""
    if shutil.which("iperf3") is None:
        return None
    server = _session(
        ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "5299"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        done = subprocess.run(
            ["iperf3", "-c", "127.0.0.1", "-p", "5299", "-t", "2", "-l", str(size), "-J"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            return None
        return float(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        return None  # a column left empty, not a run lost
    finally:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:  # the client never reached it
            _kill_session(server)


# -- targets (issue #10; issue #4 set the first ones) ----------------------------------------
@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    limit: float
    at_least: bool  # True: measured >= limit is met; False: measured <= limit
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(rows: dict[int, dict[str, Metrics]], lat: dict[str, Metrics]) -> list[Target]:
    """The targets, for the Python engine's jobs and (when measured) the native ones'."""
    out = _targets_of(rows, lat, "", ("rc_send", "rc_write", "tcpverbs_poll", "tcpverbs_events"))
    if rows.get(64, {}).get("native_send") is not None:
        keys = ("native_send", "native_write", "native_poll", "native_events")
        out += _targets_of(rows, lat, "native ", keys)
        if lat.get("native_poll_pinned") is not None:
            out += _latency_targets(lat, "native ", "native_poll", "native_events", "_pinned")
    return out


def _latency_targets(
    lat: dict[str, Metrics], engine: str, poll: str, events: str, variant: str = ""
) -> list[Target]:
    def p50(key: str) -> float | None:
        return lat.get(key + variant, {}).get("p50")

    how = ", pinned" if variant else ""
    return [
        Target(
            f"8 B {engine}latency polling / sockets busy{how}",
            _ratio(p50(poll), p50("sockets_busy")),
            1.2,
            False,
        ),
        Target(
            f"8 B {engine}latency -e / sockets blocking{how}",
            _ratio(p50(events), p50("sockets_blocking")),
            1.1,
            False,
        ),
    ]


def _targets_of(
    rows: dict[int, dict[str, Metrics]],
    lat: dict[str, Metrics],
    engine: str,
    keys: tuple[str, str, str, str],
) -> list[Target]:
    send, write, poll, events = keys

    def bw(size: int, key: str, metric: str = "gbps") -> float | None:
        return rows.get(size, {}).get(key, {}).get(metric)

    mib, k64 = 1 << 20, 65536
    out = [
        Target(
            f"1 MiB {engine}rc SEND / sockets busy",
            _ratio(bw(mib, send), bw(mib, "sockets_busy")),
            1.0,
            True,
        ),
        Target(
            f"1 MiB {engine}rc WRITE / sockets busy",
            _ratio(bw(mib, write), bw(mib, "sockets_busy")),
            1.0,
            True,
        ),
        Target(
            f"64 KiB {engine}rc SEND / sockets",
            _ratio(bw(k64, send), bw(k64, "sockets")),
            1.5,
            True,
        ),
        Target(
            f"4 KiB {engine}rc SEND / sockets",
            _ratio(bw(4096, send), bw(4096, "sockets")),
            1.0,
            True,
        ),
        Target(
            f"64 B {engine}rc SEND msg/s / sockets",
            _ratio(bw(64, send, "msg_rate"), bw(64, "sockets", "msg_rate")),
            2.0,
            True,
        ),
        Target(
            f"64 B {engine}rc SEND msg/s / pyzmq",
            _ratio(bw(64, send, "msg_rate"), bw(64, "pyzmq", "msg_rate")),
            1.0,
            True,
        ),
        *_latency_targets(lat, engine, poll, events),
        Target(
            f"64 B {engine}rc SEND syscalls/msg, sender",
            bw(64, send, "syscalls_client"),
            0.1,
            False,
            "",
        ),
    ]
    for side in ("client", "server"):
        per_msg = bw(k64, send, f"syscalls_{side}")
        who = "sender" if side == "client" else "receiver"
        out.append(
            Target(
                f"64 KiB {engine}rc SEND syscalls/MiB, {who}",
                per_msg * 16 if per_msg is not None else None,
                4.0,
                False,
                "",
            )
        )
    return out


# -- output ------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _fmt_cpu(value: float | None, spec: str = ".2f") -> str:
    """A CPU figure is a difference of two runs: a negative one (the short run used more)
    is below what it resolves, shown as ~0 rather than as a negative time."""
    return "~0" if value is not None and value < 0 else _fmt(value, spec)


def _size(size: int) -> str:
    return (
        f"{size >> 20} MiB"
        if size >= 1 << 20
        else f"{size >> 10} KiB"
        if size >= 1024
        else f"{size} B"
    )


def print_tables(
    console: Console,
    rows: dict[int, dict[str, Metrics]],
    iperf: dict[int, float | None],
    lat: dict[str, Metrics],
    goals: list[Target],
    rounds: int,
) -> None:
    def get(size: int, key: str, metric: str) -> float | None:
        return rows[size].get(key, {}).get(metric)

    t = Table(title=f"Throughput, Gbit/s (median of {rounds})")
    for head in (
        "size",
        *(j.label for j in BW_JOBS),
        "iperf3",
        "SEND/sockets",
        "WRITE/sockets",
        "SEND/busy",
    ):
        t.add_column(head, justify="right")
    for size in rows:
        send, sock, busy = (
            get(size, "rc_send", "gbps"),
            get(size, "sockets", "gbps"),
            get(size, "sockets_busy", "gbps"),
        )
        t.add_row(
            _size(size),
            *(_fmt(get(size, j.key, "gbps")) for j in BW_JOBS),
            _fmt(iperf.get(size)),
            _fmt(_ratio(send, sock), suffix="x"),
            _fmt(_ratio(get(size, "rc_write", "gbps"), sock), suffix="x"),
            _fmt(_ratio(send, busy), suffix="x"),
        )
    console.print(t)

    t = Table(title="Messages per second (thousands); CPU seconds (both sides) per GB moved")
    t.add_column("size", justify="right")
    for j in BW_JOBS:
        t.add_column(f"k msg/s {j.label}", justify="right")
    for j in BW_JOBS:
        t.add_column(f"CPU/GB {j.label}", justify="right")
    for size in rows:
        rates = [_fmt(_scaled(get(size, j.key, "msg_rate"), 1e-3), ".0f") for j in BW_JOBS]
        t.add_row(_size(size), *rates, *(_fmt_cpu(get(size, j.key, "cpu_per_gb")) for j in BW_JOBS))
    console.print(t)

    t = Table(title="System calls per message: sender / receiver (perf stat, set-up subtracted)")
    t.add_column("size", justify="right")
    for j in BW_JOBS:
        t.add_column(j.label, justify="right")
    for size, row in rows.items():
        t.add_row(
            _size(size),
            *(_pair(row.get(j.key, {})) for j in BW_JOBS),
        )
    console.print(t)

    t = Table(title=f"{LAT_SIZE} B one-way latency, us (round trip / 2, median of {rounds})")
    for head in (
        "",
        "p50",
        "p99",
        "p99.9",
        "syscalls/round trip (client / server)",
        "CPU us/round trip",
    ):
        t.add_column(head, justify="right")
    for job in LAT_JOBS:
        m = lat.get(job.key, {})
        t.add_row(
            job.label,
            _fmt(m.get("p50")),
            _fmt(m.get("p99")),
            _fmt(m.get("p999")),
            _pair(m),
            _fmt_cpu(m.get("cpu_per_msg_us"), ".1f"),
        )
    console.print(t)

    t = Table(title="Targets of issue #10")
    for head in ("target", "measured", "goal", "met"):
        t.add_column(head, justify="right")
    for g in goals:
        verdict = {None: "not measured", True: "[green]met[/]", False: "[red]NOT met[/]"}[g.met]
        t.add_row(
            g.name,
            _fmt(g.measured, ".2f", g.unit),
            f"{'>=' if g.at_least else '<='} {g.limit:g}{g.unit}",
            verdict,
        )
    console.print(t)


def _pair(m: Metrics) -> str:
    """System calls per message of the client (sender) and the server (receiver)."""
    return f"{_fmt(m.get('syscalls_client'))} / {_fmt(m.get('syscalls_server'))}"


def _md_table(title: str, heads: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """A Markdown table under *title*; the first *left* columns are left-aligned."""
    align = ["---"] * left + ["---:"] * (len(heads) - left)
    lines = [title, "", "| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def markdown(report: dict[str, Any]) -> str:
    """The tables of a saved run (the JSON this script writes) as Markdown, for the docs."""
    bw: dict[str, dict[str, Metrics]] = report["bandwidth"]
    lat: dict[str, Metrics] = report["latency_8B"]
    labels = [j.label for j in BW_JOBS]

    def per_job(metric: str, spec: str, scale: float = 1.0) -> list[list[str]]:
        fmt = _fmt_cpu if metric.startswith("cpu") else _fmt
        return [
            [
                _size(int(size)),
                *(fmt(_scaled(row.get(j.key, {}).get(metric), scale), spec) for j in BW_JOBS),
            ]
            for size, row in bw.items()
        ]

    def ratios(row: dict[str, Metrics]) -> list[str]:
        gbps = {k: m.get("gbps") for k, m in row.items()}
        pairs = (("rc_send", "sockets"), ("rc_write", "sockets"), ("rc_send", "sockets_busy"))
        return [_fmt(_ratio(gbps.get(a), gbps.get(b)), ".2f", "x") for a, b in pairs]

    out = _md_table(
        f"Throughput, Gbit/s (median of {report['rounds']} rounds):",
        ["size", *labels, "iperf3", "SEND/sockets", "WRITE/sockets", "SEND/busy"],
        [
            [*cells, _fmt(bw[size]["iperf3"].get("gbps")), *ratios(bw[size])]
            for (size, cells) in zip(bw, per_job("gbps", ".2f"), strict=True)
        ],
    )
    out += _md_table(
        "Thousands of messages per second:", ["size", *labels], per_job("msg_rate", ".0f", 1e-3)
    )
    out += _md_table(
        "CPU seconds (user + sys, both processes) per GB moved:",
        ["size", *labels],
        per_job("cpu_per_gb", ".2f"),
    )
    out += _md_table(
        "System calls per message, sender / receiver (`perf stat`):",
        ["size", *labels],
        [
            [_size(int(size)), *(_pair(row.get(j.key, {})) for j in BW_JOBS)]
            for size, row in bw.items()
        ],
    )
    out += _md_table(
        f"{LAT_SIZE} B one-way latency, us (round trip / 2):",
        [
            "",
            "p50",
            "p99",
            "p99.9",
            "syscalls per round trip, client / server",
            "CPU us per round trip",
        ],
        [
            [
                j.label,
                *(_fmt(lat.get(j.key, {}).get(q)) for q in ("p50", "p99", "p999")),
                _pair(lat.get(j.key, {})),
                _fmt_cpu(lat.get(j.key, {}).get("cpu_per_msg_us"), ".1f"),
            ]
            for j in LAT_JOBS
        ],
    )
    goals = [
        Target(t["name"], t["measured"], t["limit"], t["at_least"], t["unit"])
        for t in report["targets"]
    ]
    out += _md_table(
        "Targets of issue #10:",
        ["target", "measured", "goal", "met"],
        [
            [
                g.name,
                _fmt(g.measured, ".2f", g.unit),
                f"{'>=' if g.at_least else '<='} {g.limit:g}{g.unit}",
                {None: "not measured", True: "**met**", False: "not met"}[g.met],
            ]
            for g in goals
        ],
    )
    return "\n".join(out)


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def draw(
    rows: dict[int, dict[str, Metrics]], lat: dict[str, Metrics], outdir: pathlib.Path
) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = list(rows)
    for job in BW_JOBS:
        ax.plot(
            sizes,
            [rows[s].get(job.key, {}).get("gbps", float("nan")) for s in sizes],
            marker="o",
            label=job.label,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("Gbit/s")
    ax.set_title("Throughput on loopback: tcpverbs and plain Python sockets")
    ax.legend()
    throughput = outdir / "throughput.png"
    fig.savefig(throughput, dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    quantiles = (("p50", "median"), ("p99", "99%"), ("p999", "99.9%"))
    width = 0.8 / len(quantiles)
    for i, (key, name) in enumerate(quantiles):
        xs = [n + (i - 1) * width for n in range(len(LAT_JOBS))]
        ax.bar(xs, [lat.get(j.key, {}).get(key, 0.0) for j in LAT_JOBS], width, label=name)
    ax.set_xticks(range(len(LAT_JOBS)), [j.label for j in LAT_JOBS], rotation=10)
    ax.set_yscale("log")
    ax.set_ylabel("one-way latency, us")
    ax.set_title(f"{LAT_SIZE} B ping-pong latency percentiles on loopback")
    ax.legend()
    latency = outdir / "latency.png"
    fig.savefig(latency, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [throughput, latency]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller runs, one round (a smoke test)"
    )
    parser.add_argument("--rounds", type=int, help="runs of every configuration (default 3)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--png", default=str(HERE / "results"))
    parser.add_argument(
        "--replot", metavar="JSON", help="only draw the PNGs again, from a saved report"
    )
    args = parser.parse_args()
    if args.replot:
        saved = json.loads(pathlib.Path(args.replot).read_text())
        rows = {
            int(size): {k: m for k, m in jobs.items() if k != "iperf3"}
            for size, jobs in saved["bandwidth"].items()
        }
        for png in draw(rows, saved["latency_8B"], pathlib.Path(args.png)):
            print(f"wrote {png}")
        return
    rounds = args.rounds or (1 if args.quick else 3)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    console = Console(width=None if sys.stdout.isatty() else 160)
    count_syscalls = syscall_counter_works()
    if not count_syscalls:
        console.print("perf cannot count system calls here: those columns stay empty")
    lat_count = 1000 if args.quick else 5000
    iperf: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Runner(count_syscalls, pathlib.Path(tmp)))
        for r in range(rounds):
            for size in SIZES:
                for job in BW_JOBS:
                    bench.measure(job, size, bw_count(size, args.quick))
                gbps = iperf3(size)
                if gbps is not None:
                    iperf.setdefault(size, []).append(gbps)
                console.print(f"round {r + 1}/{rounds}: measured {_size(size)}", style="dim")
            for job in LAT_JOBS:
                bench.measure(job, LAT_SIZE, lat_count)
    rows = {size: {j.key: bench.median(j.key, size) for j in BW_JOBS} for size in SIZES}
    lat = {j.key: bench.median(j.key, LAT_SIZE) for j in LAT_JOBS}
    iperf_median = {s: statistics.median(v) if v else None for s, v in iperf.items()}
    goals = targets(rows, lat)
    console.print(
        f"\ntcpverbs vs plain Python sockets on loopback ({platform.node()}, "
        f"Python {platform.python_version()})"
    )
    print_tables(console, rows, iperf_median, lat, goals, rounds)
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "rounds": rounds,
        "syscalls_counted": count_syscalls,
        "bandwidth": {str(s): {**rows[s], "iperf3": {"gbps": iperf_median.get(s)}} for s in SIZES},
        "latency_8B": lat,
        "samples": {f"{k}@{s}": v for (k, s), v in bench.samples.items()},
        "targets": [
            {
                "name": g.name,
                "measured": g.measured,
                "limit": g.limit,
                "at_least": g.at_least,
                "unit": g.unit,
                "met": g.met,
            }
            for g in goals
        ],
    }
    path.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {path}")
    tables = path.with_suffix(".md")
    tables.write_text(markdown(report))
    console.print(f"wrote {tables} (the tables for docs/benchmarks.md)")
    try:
        pngs = draw(rows, lat, pathlib.Path(args.png))
    except ImportError:
        console.print("matplotlib not installed: no PNG (pip install matplotlib)")
        return
    for png in pngs:
        console.print(f"wrote {png}")


if __name__ == "__main__":
    main()
