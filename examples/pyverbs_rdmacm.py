"""A plain pyverbs rdma_cm program -- it imports nothing from tcpverbs -- run on tcpverbs:

    tcpverbs run -- python examples/pyverbs_rdmacm.py [--addr 127.0.0.1] [--port 7471]

The server (a child process) listens with an event channel; the client resolves the
address and route, connects with private data, and the server accepts with its own.
They ping-pong SENDs through the CMIDs' own QPs, the client READs a buffer the server
registered, and the server disconnects: both see RDMA_CM_EVENT_DISCONNECTED.  On a
machine with rdma-core and an RDMA device the same file runs with the real pyverbs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import pyverbs.cm_enums as ce
import pyverbs.enums as e
from pyverbs.cmid import CMID, AddrInfo, CMEvent, CMEventChannel, ConnParam
from pyverbs.pyverbs_error import PyverbsError
from pyverbs.qp import QPCap, QPInitAttr

ROUNDS = 3
SIZE = 32


def expect(channel: CMEventChannel, wanted: int) -> CMEvent:
    event = CMEvent(channel)
    event.ack_cm_event()
    if event.event_type != wanted:
        raise PyverbsError(f"expected {wanted}, got {event.event_str()}")
    return event


def init_attr() -> QPInitAttr:
    return QPInitAttr(qp_type=e.IBV_QPT_RC, cap=QPCap(max_send_wr=4, max_recv_wr=4))


def server(addr: str, port: str, ready: Event, read_key: Queue, done: Queue) -> None:
    channel = CMEventChannel()
    listen_id = CMID(creator=channel)
    listen_id.bind_addr(AddrInfo(src=addr, src_service=port, flags=ce.RAI_PASSIVE))
    listen_id.listen()
    ready.set()
    request = expect(channel, ce.RDMA_CM_EVENT_CONNECT_REQUEST)
    print(f"server: request with {bytes(request.private_data)!r}")
    cmid = CMID(creator=request, listen_id=listen_id)
    cmid.create_qp(init_attr())
    buf = cmid.reg_msgs(SIZE)
    cmid.post_recv(buf)
    shared = cmid.reg_read(SIZE)
    shared.write(b"read by the client with RDMA READ", SIZE)
    read_key.put((shared.rkey, shared.buf))
    cmid.accept(ConnParam(data=b"welcome"))
    expect(channel, ce.RDMA_CM_EVENT_ESTABLISHED)
    for _ in range(ROUNDS):
        cmid.get_recv_comp()
        message = buf.read(SIZE, 0)
        cmid.post_recv(buf)
        buf.write(message.upper(), SIZE)
        cmid.post_send(buf)
        cmid.get_send_comp()
    done.get()  # the client has READ what it wanted
    cmid.disconnect()
    expect(channel, ce.RDMA_CM_EVENT_DISCONNECTED)
    print("server: disconnected")


def client(addr: str, port: str, read_key: Queue, done: Queue) -> None:
    channel = CMEventChannel()
    cmid = CMID(creator=channel)
    cmid.resolve_addr(AddrInfo(src=addr, dst=addr, dst_service=port))
    expect(channel, ce.RDMA_CM_EVENT_ADDR_RESOLVED)
    cmid.resolve_route()
    expect(channel, ce.RDMA_CM_EVENT_ROUTE_RESOLVED)
    cmid.create_qp(init_attr())
    buf = cmid.reg_msgs(SIZE)
    cmid.connect(ConnParam(data=b"hello"))
    established = expect(channel, ce.RDMA_CM_EVENT_ESTABLISHED)
    print(f"client: established, the server said {bytes(established.private_data[:7])!r}")
    for i in range(ROUNDS):
        cmid.post_recv(buf)
        buf.write(f"ping {i}".encode().ljust(SIZE, b"."), SIZE)
        cmid.post_send(buf)
        cmid.get_send_comp()
        cmid.get_recv_comp()
        print(f"client: {bytes(buf.read(SIZE, 0)).rstrip(b'.').decode()}")
    rkey, remote_addr = read_key.get()
    cmid.post_read(buf, SIZE, remote_addr, rkey, flags=e.IBV_SEND_SIGNALED)
    cmid.get_send_comp()
    print(f"client: {bytes(buf.read(SIZE, 0)).decode()}")
    done.put(True)
    expect(channel, ce.RDMA_CM_EVENT_DISCONNECTED)
    cmid.disconnect()
    print("client: disconnected")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1")
    parser.add_argument("--port", default="7471")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ready, read_key, done = context.Event(), context.Queue(), context.Queue()
    child = context.Process(target=server, args=(args.addr, args.port, ready, read_key, done))
    child.start()
    if not ready.wait(30):
        child.kill()
        return 1
    client(args.addr, args.port, read_key, done)
    child.join(30)
    print("rdma_cm: OK" if child.exitcode == 0 else f"server exited with {child.exitcode}")
    return child.exitcode or 0


if __name__ == "__main__":
    sys.exit(main())
