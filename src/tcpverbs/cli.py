"""The ``tcpverbs`` command: ``devices``, ``devinfo`` (shaped like rdma-core's
``ibv_devices`` / ``ibv_devinfo``), ``demo``, ``perf`` and ``run`` (a program with
``import pyverbs`` served by tcpverbs)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from .device import (
    Device,
    find_device,
    get_device_list,
    query_device_attr,
    query_gid,
    query_port_attr,
)
from .engine import available_engines, chosen_engine
from .enums import ibv_atomic_cap, ibv_mtu, ibv_port_state, ibv_transport_type
from .errors import TcpverbsError
from .words import LINK_LAYER_WORDS, SPEED_WORDS

__all__ = ["build_parser", "main"]

_TRANSPORT_STR = {
    ibv_transport_type.IBV_TRANSPORT_IB: "InfiniBand",
    ibv_transport_type.IBV_TRANSPORT_IWARP: "iWARP",
    ibv_transport_type.IBV_TRANSPORT_USNIC: "usNIC",
    ibv_transport_type.IBV_TRANSPORT_USNIC_UDP: "usNIC UDP",
    ibv_transport_type.IBV_TRANSPORT_UNSPECIFIED: "unspecified",
}
_DEVICE_CAP_FLAG_NAMES = {
    1 << 11: "SYS_IMAGE_GUID",
    1 << 12: "RC_RNR_NAK_GEN",
}
_VL_STR = {1: "1", 2: "2", 3: "4", 4: "8", 5: "15"}
_PHYS_STATE_STR = {3: "DISABLED", 5: "LINK_UP"}
_WIDTH_STR = {1: "1", 2: "4", 4: "8", 8: "12", 16: "2"}


def _guid_str(guid: int) -> str:
    return ":".join(f"{(guid >> shift) & 0xFFFF:04x}" for shift in (48, 32, 16, 0))


def _mtu_str(mtu: ibv_mtu) -> str:
    return f"{128 << mtu} ({int(mtu)})"


def _cmd_devices(_args: argparse.Namespace) -> int:
    print(f"    {'device':<16}\t   node GUID")
    print(f"    {'------':<16}\t----------------")
    for dev in get_device_list():
        print(f"    {dev.name.decode():<16}\t{dev.node_guid:016x}")
    return 0


def _print_devinfo(dev: Device, port: int | None, verbose: bool) -> None:
    attr = query_device_attr(dev)
    out = print
    out(f"hca_id:\t{dev.name.decode()}")
    out(f"\ttransport:\t\t\t{_TRANSPORT_STR[dev.transport_type]} ({int(dev.transport_type)})")
    out(f"\tfw_ver:\t\t\t\t{attr.fw_ver}")
    out(f"\tnode_guid:\t\t\t{_guid_str(attr.node_guid)}")
    out(f"\tsys_image_guid:\t\t\t{_guid_str(attr.sys_image_guid)}")
    out(f"\tvendor_id:\t\t\t0x{attr.vendor_id:04x}")
    out(f"\tvendor_part_id:\t\t\t{attr.vendor_part_id}")
    out(f"\thw_ver:\t\t\t\t0x{attr.hw_ver:X}")
    out(f"\tphys_port_cnt:\t\t\t{attr.phys_port_cnt}")
    if verbose:
        engine, available = chosen_engine(), available_engines()
        availability = "available" if engine in available else "NOT available here; available"
        out(f"\tengine:\t\t\t\t{engine} ({availability}: {', '.join(available)})")
        out(f"\tmax_mr_size:\t\t\t0x{attr.max_mr_size:x}")
        out(f"\tpage_size_cap:\t\t\t0x{attr.page_size_cap:x}")
        out(f"\tmax_qp:\t\t\t\t{attr.max_qp}")
        out(f"\tmax_qp_wr:\t\t\t{attr.max_qp_wr}")
        out(f"\tdevice_cap_flags:\t\t0x{attr.device_cap_flags:08x}")
        for bit, name in _DEVICE_CAP_FLAG_NAMES.items():
            if attr.device_cap_flags & bit:
                out(f"\t\t\t\t\t{name}")
        out(f"\tmax_sge:\t\t\t{attr.max_sge}")
        out(f"\tmax_sge_rd:\t\t\t{attr.max_sge_rd}")
        out(f"\tmax_cq:\t\t\t\t{attr.max_cq}")
        out(f"\tmax_cqe:\t\t\t{attr.max_cqe}")
        out(f"\tmax_mr:\t\t\t\t{attr.max_mr}")
        out(f"\tmax_pd:\t\t\t\t{attr.max_pd}")
        out(f"\tmax_qp_rd_atom:\t\t\t{attr.max_qp_rd_atom}")
        out(f"\tmax_ee_rd_atom:\t\t\t{attr.max_ee_rd_atom}")
        out(f"\tmax_res_rd_atom:\t\t{attr.max_res_rd_atom}")
        out(f"\tmax_qp_init_rd_atom:\t\t{attr.max_qp_init_rd_atom}")
        out(f"\tmax_ee_init_rd_atom:\t\t{attr.max_ee_init_rd_atom}")
        atomic = ibv_atomic_cap(attr.atomic_caps)
        out(f"\tatomic_cap:\t\t\t{atomic.name.removeprefix('IBV_')} ({int(atomic)})")
        out(f"\tmax_ee:\t\t\t\t{attr.max_ee}")
        out(f"\tmax_rdd:\t\t\t{attr.max_rdd}")
        out(f"\tmax_mw:\t\t\t\t{attr.max_mw}")
        out(f"\tmax_raw_ipv6_qp:\t\t{attr.max_raw_ipv6_qp}")
        out(f"\tmax_raw_ethy_qp:\t\t{attr.max_raw_ethy_qp}")
        out(f"\tmax_mcast_grp:\t\t\t{attr.max_mcast_grp}")
        out(f"\tmax_mcast_qp_attach:\t\t{attr.max_mcast_qp_attach}")
        out(f"\tmax_total_mcast_qp_attach:\t{attr.max_total_mcast_qp_attach}")
        out(f"\tmax_ah:\t\t\t\t{attr.max_ah}")
        out(f"\tmax_fmr:\t\t\t{attr.max_fmr}")
        if attr.max_fmr:
            out(f"\tmax_map_per_fmr:\t\t{attr.max_map_per_fmr}")
        out(f"\tmax_srq:\t\t\t{attr.max_srq}")
        if attr.max_srq:
            out(f"\tmax_srq_wr:\t\t\t{attr.max_srq_wr}")
            out(f"\tmax_srq_sge:\t\t\t{attr.max_srq_sge}")
        out(f"\tmax_pkeys:\t\t\t{attr.max_pkeys}")
        out(f"\tlocal_ca_ack_delay:\t\t{attr.local_ca_ack_delay}")
    for port_num in range(1, attr.phys_port_cnt + 1):
        if port is not None and port != port_num:
            continue
        pattr = query_port_attr(dev, port_num)
        state = ibv_port_state(pattr.state)
        out(f"\t\tport:\t{port_num}")
        out(f"\t\t\tstate:\t\t\t{state.name.removeprefix('IBV_')} ({int(state)})")
        out(f"\t\t\tmax_mtu:\t\t{_mtu_str(pattr.max_mtu)}")
        out(f"\t\t\tactive_mtu:\t\t{_mtu_str(pattr.active_mtu)}")
        out(f"\t\t\tsm_lid:\t\t\t{pattr.sm_lid}")
        out(f"\t\t\tport_lid:\t\t{pattr.lid}")
        out(f"\t\t\tport_lmc:\t\t0x{pattr.lmc:02x}")
        out(f"\t\t\tlink_layer:\t\t{LINK_LAYER_WORDS.get(pattr.link_layer, 'Unknown')}")
        if verbose:
            out(f"\t\t\tmax_msg_sz:\t\t0x{pattr.max_msg_sz:x}")
            out(f"\t\t\tport_cap_flags:\t\t0x{pattr.port_cap_flags:08x}")
            out(f"\t\t\tport_cap_flags2:\t0x{pattr.port_cap_flags2:04x}")
            vls = _VL_STR.get(pattr.max_vl_num, "invalid value")
            out(f"\t\t\tmax_vl_num:\t\t{vls} ({pattr.max_vl_num})")
            out(f"\t\t\tbad_pkey_cntr:\t\t0x{pattr.bad_pkey_cntr:x}")
            out(f"\t\t\tqkey_viol_cntr:\t\t0x{pattr.qkey_viol_cntr:x}")
            out(f"\t\t\tsm_sl:\t\t\t{pattr.sm_sl}")
            out(f"\t\t\tpkey_tbl_len:\t\t{pattr.pkey_tbl_len}")
            out(f"\t\t\tgid_tbl_len:\t\t{pattr.gid_tbl_len}")
            out(f"\t\t\tsubnet_timeout:\t\t{pattr.subnet_timeout}")
            out(f"\t\t\tinit_type_reply:\t{pattr.init_type_reply}")
            width = _WIDTH_STR.get(pattr.active_width, "invalid width")
            out(f"\t\t\tactive_width:\t\t{width}X ({pattr.active_width})")
            speed = pattr.active_speed_ex or pattr.active_speed
            out(f"\t\t\tactive_speed:\t\t{SPEED_WORDS.get(speed, 'invalid speed')} ({speed})")
            phys = _PHYS_STATE_STR.get(pattr.phys_state, "invalid physical state")
            out(f"\t\t\tphys_state:\t\t{phys} ({pattr.phys_state})")
            for index in range(pattr.gid_tbl_len):
                try:
                    gid = query_gid(dev, port_num, index)
                except TcpverbsError:  # the address went away while we were printing
                    break
                ip = gid.ip  # IPv4-mapped GIDs print as ::ffff:a.b.c.d, like inet_ntop
                text = f"::ffff:{ip}" if ip.version == 4 else str(ip)
                out(f"\t\t\tGID[{index:3d}]:\t\t{text}")
        out("")


def _cmd_devinfo(args: argparse.Namespace) -> int:
    devices = [find_device(args.ib_dev)] if args.ib_dev is not None else get_device_list()
    if args.list:
        print(f"{len(devices)} HCA{'s' if len(devices) != 1 else ''} found:")
        for dev in devices:
            print(f"\t{dev.name.decode()}")
        return 0
    if not devices:
        print("No IB devices found")
        return 0
    for dev in devices:
        if args.ib_port is not None and args.ib_port > query_device_attr(dev).phys_port_cnt:
            raise TcpverbsError(
                errno.EINVAL, f"invalid port {args.ib_port} requested for {dev.name.decode()}"
            )
        _print_devinfo(dev, args.ib_port, args.verbose)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    # Lazy: the demo pulls in the whole data path; `devices` / `devinfo` should not.
    from .demo import main as demo_main  # type: ignore[import-not-found, unused-ignore]

    return int(demo_main(args))


def _cmd_perf(args: argparse.Namespace) -> int:
    from .perf.cli import run_perf

    return run_perf(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from .face import environ

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise TcpverbsError(errno.EINVAL, "run: name the program to run (tcpverbs run -- CMD ...)")
    if command[0] in ("python", "python3"):  # the interpreter that has tcpverbs
        command = [sys.executable, *command[1:]]
    try:  # replaces this process: the program's exit status is the command's
        os.execvpe(command[0], command, environ())
    except OSError as exc:
        raise TcpverbsError(
            exc.errno or errno.ENOENT, f"run: {command[0]}: {exc.strerror}"
        ) from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpverbs", description="RDMA verbs over the kernel TCP stack."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("devices", help="list devices, like ibv_devices")
    p.set_defaults(func=_cmd_devices)

    p = sub.add_parser("devinfo", help="device and port attributes, like ibv_devinfo")
    p.add_argument("-d", "--ib-dev", metavar="NAME", help="only this device (e.g. tcpv_lo)")
    p.add_argument("-i", "--ib-port", metavar="PORT", type=_positive_int, help="only this port")
    p.add_argument("-l", "--list", action="store_true", help="print only the device names")
    p.add_argument("-v", "--verbose", action="store_true", help="print all the attributes")
    p.set_defaults(func=_cmd_devinfo)

    p = sub.add_parser("demo", help="move some buffers over a loopback QP pair")
    p.add_argument("--size", type=_positive_int, default=4096, help="message size in bytes")
    p.add_argument("--count", type=_positive_int, default=8, help="number of messages")
    p.set_defaults(func=_cmd_demo)

    from .perf.cli import add_perf_arguments

    p = sub.add_parser("perf", help="perftest-style bandwidth and latency tests")
    add_perf_arguments(p)
    p.set_defaults(func=_cmd_perf)

    p = sub.add_parser(
        "run",
        help="run a program whose `import pyverbs` gets tcpverbs (it and its children)",
        description="Run CMD with tcpverbs' pyverbs face first on PYTHONPATH: a pyverbs "
        "program runs unchanged on tcpverbs devices. A CMD of `python` or `python3` "
        "means the interpreter tcpverbs itself runs under.",
    )
    p.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tcpverbs`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TcpverbsError as exc:
        print(f"tcpverbs: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `tcpverbs devinfo -v | head`: quiet, like the C tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
