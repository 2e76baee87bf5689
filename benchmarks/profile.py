"""Where the time goes: one ``tcpverbs perf`` test with both processes under cProfile.

    python benchmarks/profile.py TEST [perf options...] [--top N]

e.g. ``python benchmarks/profile.py send_bw -s 64 -n 200000 -t 256``.  The server and the
client each run under ``cProfile``; the functions with the most time of their own are
printed for both.  cProfile sees the main thread only: in the busy-polling tests the
application's ``CQ.poll`` does the receiving itself (the progress thread is parked), so
that is nearly all of the work.  Profiling inflates the cost of every Python call, so
read the shares, not the absolute times, and measure speed with ``scripts/bench.sh``.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import pstats
import subprocess
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", help="a tcpverbs perf test, e.g. send_bw")
    parser.add_argument("--top", type=int, default=15, help="functions shown per side")
    args, perf_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        profiles = {side: pathlib.Path(tmp) / f"{side}.prof" for side in ("server", "client")}

        def under_cprofile(side: str) -> list[str]:
            return [sys.executable, "-m", "cProfile", "-o", str(profiles[side])]

        perf = ["-m", "tcpverbs.cli", "perf", args.test]
        with subprocess.Popen(
            [*under_cprofile("server"), *perf, "--print-port", "-p", "0"],
            stdout=subprocess.PIPE,
            text=True,
        ) as server:
            assert server.stdout is not None
            port = server.stdout.readline().strip()
            if not port.isdigit():
                server.kill()
                sys.exit(f"the server did not start: {port!r}")
            client = subprocess.run(
                [*under_cprofile("client"), *perf, "127.0.0.1", "-p", port, *perf_args],
                capture_output=True,
                text=True,
                check=False,
            )
            server.wait(120)
        if client.returncode != 0:
            sys.exit(client.stderr)
        print(client.stdout)
        for side, path in profiles.items():
            out = io.StringIO()
            stats = pstats.Stats(str(path), stream=out)
            stats.sort_stats("tottime").print_stats(args.top)
            body = [line for line in out.getvalue().splitlines() if line.strip()]
            print(f"== {side}")
            print("\n".join(body[-(args.top + 1) :]))


if __name__ == "__main__":
    main()
