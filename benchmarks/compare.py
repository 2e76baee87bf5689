"""tcpverbs against plain Python sockets, back to back on loopback, in one run.

    python benchmarks/compare.py [--quick] [--json FILE] [--png DIR]

For 64 B, 4 KiB, 64 KiB and 1 MiB it runs `tcpverbs perf` (rc SEND and rc WRITE
bandwidth, SEND latency) and `sockets_peer.py` (sendall/recv_into for bulk, one send()
per message for 64 B, ping-pong blocking and busy-polling), and iperf3 when installed.
Every figure is measured in this run on this machine; the table shows tcpverbs / peer
ratios, and CPU seconds (user + sys, both processes) per GB moved.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
SIZES = (64, 4096, 65536, 1 << 20)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str]) -> tuple[str, float]:
    """Run *cmd*; return its stdout and the CPU seconds it (and its children) used."""
    before = _children_cpu()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout, _children_cpu() - before


def iters_for(size: int, quick: bool) -> int:
    budget = (256 << 20) if quick else (2 << 30)  # bytes per bandwidth point
    return max(2000 if not quick else 500, min(200_000, budget // size))


def tcpverbs_bw(test: str, size: int, iters: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        _, cpu = _run(
            [
                sys.executable,
                "-m",
                "tcpverbs.cli",
                "perf",
                test,
                "--loopback",
                "-s",
                str(size),
                "-n",
                str(iters),
                "-t",
                "256",
                "--report_gbits",
                "--out_json",
                out.name,
            ]
        )
        r = json.loads(pathlib.Path(out.name).read_text())["results"][0]
    moved = r["size"] * r["iterations"]
    return {"gbps": r["bw_avg"], "mmsgs": r["msg_rate_mpps"], "cpu_per_gb": cpu / (moved / 1e9)}


def tcpverbs_lat(size: int, iters: int, events: bool) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        _run(
            [
                sys.executable,
                "-m",
                "tcpverbs.cli",
                "perf",
                "send_lat",
                "--loopback",
                "-s",
                str(size),
                "-n",
                str(iters),
                "--out_json",
                out.name,
                *(["-e"] if events else []),
            ]
        )
        r = json.loads(pathlib.Path(out.name).read_text())["results"][0]
    return {"us": r["t_typical"], "p99": r["p99"]}


def sockets(mode: str, size: int, count: int, busy: bool = False) -> dict[str, float]:
    out, cpu = _run(
        [
            sys.executable,
            str(HERE / "sockets_peer.py"),
            mode,
            str(size),
            str(count),
            *(["--busy"] if busy else []),
        ]
    )
    d = json.loads(out)
    if mode == "lat":
        ordered = sorted(d["samples_us"])
        return {"us": ordered[len(ordered) // 2], "p99": ordered[int(len(ordered) * 0.99)]}
    return {
        "gbps": d["bytes"] * 8 / d["seconds"] / 1e9,
        "mmsgs": count / d["seconds"] / 1e6,
        "cpu_per_gb": cpu / (d["bytes"] / 1e9),
    }


def iperf3(size: int) -> dict[str, float] | None:
    if shutil.which("iperf3") is None:
        return None
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "5299"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        out, _ = _run(["iperf3", "-c", "127.0.0.1", "-p", "5299", "-t", "2", "-l", str(size), "-J"])
        bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
        return {"gbps": bps / 1e9}
    finally:
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--png", default=str(HERE / "results"))
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        n = iters_for(size, args.quick)
        peer_mode = "msg" if size <= 64 else "bw"
        row = {
            "size": size,
            "rc_send": tcpverbs_bw("send_bw", size, n),
            "rc_write": tcpverbs_bw("write_bw", size, n),
            "sockets": sockets(peer_mode, size, n),
            "iperf3": iperf3(size),
        }
        rows.append(row)
        print(f"measured {size} B", file=sys.stderr)
    lat_n = 500 if args.quick else 5000
    latency = {
        "tcpverbs_poll": tcpverbs_lat(8, lat_n, False),
        "tcpverbs_events": tcpverbs_lat(8, lat_n, True),
        "sockets_busy": sockets("lat", 8, lat_n, busy=True),
        "sockets_blocking": sockets("lat", 8, lat_n),
    }
    print(
        f"\ntcpverbs vs plain Python sockets on loopback ({platform.node()}, "
        f"{platform.python_version()})\n"
    )
    print(
        f"{'size':>8} | {'rc SEND':>9} {'rc WRITE':>9} {'sockets':>9} {'iperf3':>8} | "
        f"{'SEND/sock':>9} {'WRITE/sock':>10} | {'msg/s SEND':>11} {'sockets':>9} | "
        f"{'CPU s/GB SEND':>13} {'sockets':>8}"
    )
    for r in rows:
        s, w, p, i = r["rc_send"], r["rc_write"], r["sockets"], r["iperf3"]
        iperf = f"{i['gbps']:.1f}Gb" if i else "-"
        print(
            f"{r['size']:>8} | {s['gbps']:>7.2f}Gb {w['gbps']:>7.2f}Gb {p['gbps']:>7.2f}Gb "
            f"{iperf:>8} | "
            f"{s['gbps'] / p['gbps']:>8.2f}x {w['gbps'] / p['gbps']:>9.2f}x | "
            f"{s['mmsgs'] * 1e6:>11.0f} {p['mmsgs'] * 1e6:>9.0f} | "
            f"{s['cpu_per_gb']:>13.2f} {p['cpu_per_gb']:>8.2f}"
        )
    print("\n8 B one-way latency (median, us; perftest style: round trip / 2)")
    for name, value in latency.items():
        print(f"  {name:<18} {value['us']:8.2f}  (p99 {value['p99']:.2f})")
    print(
        f"  ratio busy-poll: {latency['tcpverbs_poll']['us'] / latency['sockets_busy']['us']:.2f}x"
        f"   events/blocking: "
        f"{latency['tcpverbs_events']['us'] / latency['sockets_blocking']['us']:.2f}x"
    )
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"machine": platform.platform(), "rows": rows, "latency_8B": latency}, indent=2)
    )
    print(f"\nwrote {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["size"] for r in rows]
    for key, label in (
        ("rc_send", "tcpverbs rc SEND"),
        ("rc_write", "tcpverbs rc WRITE"),
        ("sockets", "plain Python sockets"),
    ):
        ax.plot(sizes, [r[key]["gbps"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("Gbit/s")
    ax.set_title("Throughput on loopback")
    ax.legend()
    png = pathlib.Path(args.png) / "throughput.png"
    fig.savefig(png, dpi=100, bbox_inches="tight")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
