"""A planned hand-over whose stray connection reuses a client port the new MASTER served before
(found by bench/handover.py --tfo --runs 5: one request of 56,553 reset by the new MASTER).

Clients reuse their ports within a minute or two at a hundred connections a second.  When a
connection the old MASTER serves reuses the port of one the new MASTER served shortly before,
the new MASTER still holds something of the old one: its TIME_WAIT socket (60 s, when its
server closed first, as HTTP/1.0 servers do) or conntrack's TIME_WAIT entry (120 s).  The
segments of the old MASTER's connection that reach the new MASTER after the hand-over must
still go on to the old MASTER.

Real parts: node namespaces on a bridge, the download servers of test_drain_forwarding, and the
engine's own ArpGuard/StrayForwarder driven directly (so the order of events is exact)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from test_drain_forwarding import (
    PORT,
    SECONDS,
    SIZE,
    Download,
    Rules,
    Servers,
    point_client_at,
    rules,
    serve,
    servers,
    take_over,
)

from lab.netns import VIP, Network, Node, in_netns, wait_for

__all__ = ["rules", "servers"]  # fixtures shared with test_drain_forwarding

pytestmark = [pytest.mark.netns]

CLIENT_PORT = 45454


def start_from(download: Download, port: int) -> Download:
    """``download`` from the client's ``port`` (a client that reuses it)."""
    with in_netns(download.client.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.settimeout(5)
        sock.connect((str(VIP), PORT))
    threading.Thread(target=download._run, args=(sock,), daemon=True).start()
    return download


def move_vip(frm: Node, to: Node, client: Node) -> None:
    """An unplanned move (the earlier connection is over): the VIP and the client go to
    ``to``."""
    frm.exec("ip", "addr", "del", f"{VIP}/32", "dev", "eth0")
    to.exec("ip", "addr", "replace", f"{VIP}/32", "dev", "eth0")
    point_client_at(client, to)


def in_time_wait(node: Node, port: int) -> bool:
    listed = node.exec("ss", "-Htan", "state", "time-wait", f"dport = :{port}").stdout
    return f"{VIP}:{PORT}" in listed


def nodes(net: Network, servers: Servers, rules: list[Rules]) -> tuple[Node, Node, Node]:
    a, b, client = (net.add_node(address) for address in ("10.9.1.1", "10.9.1.2", "10.9.1.50"))
    for node in (a, b):
        serve(servers, node)
    rules += [Rules(a), Rules(b)]
    return a, b, client


def test_a_download_reusing_a_port_the_new_master_holds_in_time_wait_survives_a_hand_over(
        net: Network, servers: Servers, rules: list[Rules]) -> None:
    a, b, client = nodes(net, servers, rules)
    on_a, on_b = rules
    b.exec("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    point_client_at(client, b)
    earlier = start_from(Download(client, seed=3, size=1000, seconds=0.0), CLIENT_PORT)
    earlier.check(10)  # b's server closed first: b keeps the connection in TIME_WAIT (60 s)
    assert earlier.server == "b"
    wait_for(lambda: in_time_wait(b, CLIENT_PORT), 5)

    move_vip(b, a, client)
    download = start_from(Download(client, seed=4), CLIENT_PORT)
    wait_for(lambda: download.received > SIZE // 5, 10)
    assert in_time_wait(b, CLIENT_PORT)
    take_over(on_b, on_a, client)  # a drains, b passes a's connections on to it

    download.check(SECONDS + 15)
    assert download.server == "a"


def test_a_download_reusing_a_port_conntrack_still_knows_here_survives_a_hand_over(
        net: Network, servers: Servers, rules: list[Rules]) -> None:
    a, b, client = nodes(net, servers, rules)
    on_a, on_b = rules
    client.exec("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")  # the client's TIME_WAIT port
    b.exec("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    point_client_at(client, b)
    on_b(f"forward {a.address}")  # b took over from a earlier: its conntrack runs
    with in_netns(client.ns):  # a connection the client closes first: no TIME_WAIT on b
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", CLIENT_PORT))
        sock.connect((str(VIP), PORT))
    sock.close()
    conntrack = "/proc/net/nf_conntrack"
    wait_for(lambda: "TIME_WAIT" in b.exec("cat", conntrack).stdout, 5)
    on_b("unforward")
    assert not in_time_wait(b, CLIENT_PORT)

    move_vip(b, a, client)
    time.sleep(1.5)  # tcp_tw_reuse lets the client reuse its TIME_WAIT port after a second
    download = start_from(Download(client, seed=5), CLIENT_PORT)
    wait_for(lambda: download.received > SIZE // 5, 10)
    take_over(on_b, on_a, client)

    download.check(SECONDS + 15)
    assert download.server == "a"

