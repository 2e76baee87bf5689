"""Instructions per message for each side of ``tcpverbs perf send_bw`` at 64 B (or per
round trip of ``send_lat`` at 8 B): the figure that does not move with a noisy machine
(issue #10 asks for it per side, both engines).

    python benchmarks/perf_instructions.py [--test send_bw|send_lat] [--engines native python]
                                           [--small N] [--large N]

One side runs under ``valgrind --tool=callgrind`` (every thread of the process counted:
the application's Python loop, the engine, its thread), the other at full speed; the
run is repeated with *small* and *large* iteration counts, and (instructions at large -
instructions at small) / (large - small) is one message's cost, start-up and set-up
cancelled out.  The instrumented side is the slow one, so it seldom waits: its busy
polls find work, and what is counted is the work -- for send_lat, the instructions a
side puts on every round trip.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

PERF = [sys.executable, "-m", "tcpverbs.cli", "perf"]
SHAPES = {"send_bw": ["-s", "64", "-t", "256"], "send_lat": ["-s", "8"]}
COLLECTED = re.compile(r"Collected : (\d+)")
TIMEOUT = 1800  # seconds for one run under callgrind


def callgrind(cmd: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]


def instructions(test: str, engine: str, side: str, iters: int) -> int:
    """Instructions executed by *side* ("server": the receiver, "client": the sender)."""
    engine_args = ["--engine", engine]
    server_cmd = [*PERF, "--print-port", "-p", "0", *engine_args, test]
    if side == "server":
        server_cmd = callgrind(server_cmd)
    with subprocess.Popen(
        server_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None and server.stderr is not None
        port = server.stdout.readline().strip()
        if not port.isdigit():
            server.kill()
            raise SystemExit(f"the server did not start: {port!r} {server.stderr.read()}")
        client_cmd = [*PERF, *SHAPES[test], "-n", str(iters), "-p", port, *engine_args]
        client_cmd += [test, "127.0.0.1"]
        if side == "client":
            client_cmd = callgrind(client_cmd)
        client = subprocess.run(
            client_cmd, check=False, capture_output=True, text=True, timeout=TIMEOUT
        )
        if client.returncode != 0:
            server.kill()  # it would wait for a client for ever
        _, server_err = server.communicate(timeout=TIMEOUT)
    if client.returncode != 0 or server.returncode != 0:
        raise SystemExit(f"a run failed:\n{client.stdout}{client.stderr}{server_err}")
    found = COLLECTED.search(server_err if side == "server" else client.stderr)
    if found is None:
        raise SystemExit("callgrind printed no total")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", choices=sorted(SHAPES), default="send_bw")
    parser.add_argument("--engines", nargs="+", default=["native", "python"])
    parser.add_argument("--small", type=int, default=10_000, help="iterations, first run")
    parser.add_argument("--large", type=int, default=40_000, help="iterations, second run")
    args = parser.parse_args()
    if args.large <= args.small:
        parser.error("--large must be more than --small")
    unit = "instructions/message" if args.test == "send_bw" else "instructions/round trip"
    print(f"{args.test}: {'engine':8} {'side':22} {unit:>23}")
    for engine in args.engines:
        for side, label in (("client", "sender (client)"), ("server", "receiver (server)")):
            small = instructions(args.test, engine, side, args.small)
            large = instructions(args.test, engine, side, args.large)
            per = (large - small) / (args.large - args.small)
            print(f"{args.test}: {engine:8} {label:22} {per:>23,.0f}", flush=True)


if __name__ == "__main__":
    main()
