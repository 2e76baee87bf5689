"""Command line of ``tcpverbs perf`` (perftest's option names)."""

from __future__ import annotations

import argparse
import errno
import json
import sys

from ..context import Context
from ..engine import ENGINES
from ..errors import TcpverbsError
from .report import BwResult, bw_header, bw_row, lat_header, lat_row
from .session import TESTS, PerfConfig, loopback_server, run_client, run_server

__all__ = ["add_perf_arguments", "run_perf"]

DEFAULT_PORT = 18515
MAX_PERF_QPS = 64  # each QP is a connection and 2 x depth CQ entries on both sides


def add_perf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("test", choices=TESTS)
    p.add_argument("host", nargs="?", help="server to connect to (none: be the server)")
    p.add_argument("-s", "--size", type=int, help="message size (default 65536; _lat: 2)")
    p.add_argument("-a", "--all", action="store_true", help="all sizes from 2 B to 8 MiB")
    p.add_argument("-n", "--iters", type=int, default=1000, help="iterations per size")
    p.add_argument("-D", "--duration", type=float, default=0.0, help="run for seconds instead")
    p.add_argument("-t", "--tx-depth", type=int, default=128, help="send queue depth")
    p.add_argument("-r", "--rx-depth", type=int, default=512, help="receive queue depth")
    p.add_argument("-I", "--inline_size", type=int, default=0, help="max inline data")
    p.add_argument("-e", "--events", action="store_true", help="sleep on completion events")
    p.add_argument("-d", "--ib-dev", default="tcpv_lo", help="device (default tcpv_lo)")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help="TCP port")
    p.add_argument("-q", "--qp", type=int, default=1, help="number of QPs (_bw tests)")
    p.add_argument(
        "-b", "--bidirectional", action="store_true", help="both directions at once (_bw tests)"
    )
    p.add_argument("--report_gbits", action="store_true", help="bandwidth in Gb/s")
    p.add_argument("--out_json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--wire", choices=("rc", "stream"), default="rc")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="the engine that moves the data (default: $TCPVERBS_ENGINE, else the default)",
    )
    p.add_argument(
        "--sq-poll-us",
        type=int,
        default=0,
        metavar="US",
        help="SQ polling (native engine): its thread sends what is posted and spins US "
        "microseconds for more (default 0: the poster sends)",
    )
    p.add_argument("--loopback", action="store_true", help="start the server process too")
    p.add_argument("--print-port", action="store_true", help=argparse.SUPPRESS)


def _sizes(args: argparse.Namespace) -> list[int]:
    if args.test == "atomic_lat":
        return [8]
    if args.all:
        return [1 << k for k in range(1, 24)]
    if args.size is not None:
        return [args.size]
    return [2] if args.test.endswith("_lat") else [65536]


def _check(args: argparse.Namespace) -> None:
    if not args.test.endswith("_bw") and (args.qp != 1 or args.bidirectional):
        # as perftest: a latency test measures one request at a time on one QP
        raise TcpverbsError(errno.EINVAL, f"-q > 1 and -b need a _bw test, not {args.test}")
    if not 1 <= args.qp <= MAX_PERF_QPS:
        raise TcpverbsError(errno.EINVAL, f"-q must be in 1..{MAX_PERF_QPS}, got {args.qp}")
    if args.wire == "stream" and args.test not in ("send_bw", "send_lat"):
        raise TcpverbsError(errno.EINVAL, f"{args.test} needs --wire rc (stream has SEND only)")
    if args.test == "write_lat" and min(_sizes(args)) < 1:
        raise TcpverbsError(errno.EINVAL, "write_lat needs messages of at least 1 byte")
    if args.wire == "stream" and min(_sizes(args)) < 1:
        # an empty SEND puts nothing in the stream: the peer would never see it
        raise TcpverbsError(errno.EINVAL, "--wire stream needs messages of at least 1 byte")
    if args.iters < 1 or args.tx_depth < 1 or args.rx_depth < 1 or args.inline_size < 0:
        raise TcpverbsError(errno.EINVAL, "iterations and depths must be positive")


def run_perf(args: argparse.Namespace) -> int:
    _check(args)
    with Context(name=args.ib_dev, engine=args.engine, sq_poll_us=args.sq_poll_us) as ctx:
        if args.host is None and not args.loopback:

            def announce(port: int) -> None:
                if args.print_port:
                    print(port, flush=True)
                else:
                    print(f"waiting for a client on port {port} ({args.test})", flush=True)

            run_server(ctx, "::" if not args.print_port else "127.0.0.1", args.port, announce)
            return 0
        cfg = PerfConfig(
            args.test,
            _sizes(args),
            args.iters,
            args.duration,
            args.tx_depth,
            args.rx_depth,
            args.inline_size,
            args.events,
            args.wire,
            extra={"report_gbits": "1"} if args.report_gbits else {},
            qps=args.qp,
            bidirectional=args.bidirectional,
        )
        server = None
        host, port = args.host, args.port
        if args.loopback:
            server, port = loopback_server(
                args.test, engine=args.engine, sq_poll_us=args.sq_poll_us
            )
            host = "127.0.0.1"
        try:
            show = sys.stderr.isatty()
            results = run_client(
                ctx,
                host,
                port,
                cfg,
                progress=(lambda what: print(f"\r  running {what} ...", end="", file=sys.stderr))
                if show
                else None,
            )
            if show:
                print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
        finally:
            if server is not None:
                server.wait(30)
                if server.stdout is not None:
                    server.stdout.close()
    bw = bool(results) and isinstance(results[0], BwResult)
    print("-" * 100)
    print(
        f" {args.test} over tcpverbs ({args.wire}, {args.ib_dev}), {args.iters} iterations"
        f"{f', {args.qp} QPs' if args.qp > 1 else ''}"
        f"{', bidirectional' if args.bidirectional else ''}{', events' if args.events else ''}"
    )
    print("-" * 100)
    print(bw_header(args.report_gbits) if bw else lat_header())
    for r in results:
        print(bw_row(r) if bw else lat_row(r))  # type: ignore[arg-type]
    print("-" * 100)
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(
                {
                    "test": args.test,
                    "wire": args.wire,
                    "events": args.events,
                    "qps": args.qp,
                    "bidirectional": args.bidirectional,
                    "results": [r.as_dict() for r in results],
                },
                f,
                indent=2,
            )
    return 0
