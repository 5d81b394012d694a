"""``--drain-connections`` (issue 12, items 1, 2 and 6) with the real engines in namespaces: the
old MASTER keeps the VIP until the download it had at the hand-over is over, then exits at
once; the new MASTER passes that download on for exactly as long, as the old one's signal
says; if the old one dies while draining, the new one stops passing anything on within about
a second and changes nothing else.

Figures (the time from the download's end to the old engine's exit, from the crash to the
forwarding rules' removal) are printed; the bounds asserted are generous (a loaded 2-core
machine)."""

from __future__ import annotations

import signal
import time
from ipaddress import IPv4Address

import pytest
from test_drain_forwarding import (
    SIZE,
    Download,
    Servers,
    _state,
    ended_cleanly,
    fetch_name,
    serve,
    servers,
)

from carpd.core import drainsignal
from carpd.engine.drainsock import SignalSocket, vhid_of
from lab.netns import VIP, Daemon, Network, Node, in_netns, wait_for

pytestmark = [pytest.mark.netns]
__all__ = ["servers"]  # the fixture, used by name

FORWARD_TABLE = "carpd_fwd_eth0_1"


def forwards(node: Node) -> bool:
    """The node's stray forwarder table is in place."""
    return FORWARD_TABLE in node.exec("nft", "list", "tables").stdout


def drain_of(daemon: Daemon) -> dict[str, object] | None:
    """The draining group's "drain" status (an engine stopping answers in stopping_groups)."""
    try:
        reply = daemon.status()
    except OSError:
        return None
    for group in [reply, *reply.get("stopping_groups", [])]:  # type: ignore[list-item]
        if isinstance(group, dict) and isinstance(group.get("drain"), dict):
            return group["drain"]  # type: ignore[no-any-return]
    return None


def pair(net: Network, servers: Servers, extra: list[str]) -> tuple[Node, Node, Node, Daemon,
                                                                    Daemon]:
    a, b, client = (net.add_node(address) for address in ("10.9.1.1", "10.9.1.2", "10.9.1.50"))
    for node in (a, b):
        serve(servers, node)
    first = a.start("carpd", extra=extra)
    wait_for(lambda: a.has(VIP), 10)
    second = b.start("carpd", advskew=50, extra=extra)
    wait_for(lambda: _state(second) == "BACKUP", 10)
    time.sleep(1.5)  # b has heard a's adverts
    return a, b, client, first, second


def test_a_download_outlives_the_drain_and_the_old_engine_exits_right_after_its_end(
        net: Network, servers: Servers) -> None:
    a, b, client, first, second = pair(net, servers, ["--drain-connections", "60"])
    download = Download(client, seed=1, seconds=10.0).start()
    wait_for(lambda: download.received > SIZE // 5, 10)
    first.signal(signal.SIGTERM)  # planned: bow out, then drain until the download is over
    wait_for(lambda: b.has(VIP), 5)
    wait_for(lambda: forwards(b), 5)

    time.sleep(4.0)  # past the 2 s drain
    assert first.alive() and a.has(VIP), "a let go of the VIP while its download ran"
    drain = drain_of(first)
    assert drain is not None and drain["connections"] == 1 and drain["to"] == str(b.address)
    assert forwards(b), "b stopped passing a's download on while a drains"
    forwarding = second.status()["forwarding"]
    assert isinstance(forwarding, dict) and forwarding["to"] == str(a.address)

    download.check(30)
    done = time.monotonic()
    assert download.server == "a"
    first.wait_exit(15)
    exited = time.monotonic() - done
    wait_for(lambda: not forwards(b), 5)
    unforwarded = time.monotonic() - done
    print(f"FIGURE: download end -> old engine exit {exited:.2f} s; "
          f"-> new MASTER's forwarding rules gone {unforwarded:.2f} s")
    assert exited < 3.0, f"a exited {exited:.2f} s after its last connection closed"
    assert not a.has(VIP)
    ended_cleanly(servers, a, 1)
    assert fetch_name(client) == "b"
    assert _state(second) == "MASTER"


def test_without_connections_the_old_master_drains_for_drain_only(
        net: Network, servers: Servers) -> None:
    a, b, _client, first, _second = pair(net, servers, ["--drain-connections", "60"])
    start = time.monotonic()
    first.signal(signal.SIGTERM)
    first.wait_exit(15)
    took = time.monotonic() - start
    print(f"FIGURE: SIGTERM -> exit without connections {took:.2f} s (drain 2 s)")
    assert 1.5 < took < 5.0
    wait_for(lambda: not forwards(b), 3)


def test_a_crash_of_the_draining_old_master_stops_the_forwarding_within_a_second(
        net: Network, servers: Servers) -> None:
    a, b, client, first, second = pair(net, servers, ["--drain", "30"])
    download = Download(client, seed=1, seconds=20.0).start()
    wait_for(lambda: download.received > SIZE // 10, 10)
    first.signal(signal.SIGTERM)
    wait_for(lambda: b.has(VIP) and forwards(b), 5)
    time.sleep(3.0)  # longer than the signal's silence: it is the signal that keeps it
    assert forwards(b), "b stopped passing a's connections on while a still drains"

    first.kill()  # SIGKILL while draining
    crashed = time.monotonic()
    wait_for(lambda: not forwards(b), 10, interval=0.02)
    stopped = time.monotonic() - crashed
    print(f"FIGURE: old MASTER killed -> new MASTER's forwarding rules gone {stopped:.2f} s")
    assert stopped < 2.5, f"b forwarded to a dead node for {stopped:.2f} s"
    assert _state(second) == "MASTER" and b.has(VIP), "b changed more than its forwarding"
    a.remove_address(VIP)  # what a's watchdog does (killed with it here)
    assert fetch_name(client) == "b"


def test_the_signal_socket_sends_from_the_groups_own_address_and_only_on_its_interface(
        net: Network) -> None:
    """A group whose -s is not the interface's first address: the peer must see the signal
    come from that address (its Watch checks it against the adverts' source)."""
    a, b = net.add_node("10.9.1.1"), net.add_node("10.9.1.2")
    a.exec("ip", "addr", "add", "10.9.1.77/16", "dev", "eth0")
    with in_netns(a.ns):
        sender = SignalSocket("eth0")
    with in_netns(b.ns):
        receiver = SignalSocket("eth0")
    try:
        data = b"CARPDRN1\x07" + bytes(drainsignal.SIZE - 9)
        sender.send(data, b.address, IPv4Address("10.9.1.77"))
        received = wait_for(receiver.receive, 5)
        assert received == [(data, IPv4Address("10.9.1.77"))]
        assert vhid_of(received[0][0]) == 7
    finally:
        sender.close()
        receiver.close()
