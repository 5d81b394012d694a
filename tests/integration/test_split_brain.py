"""A partition ends: exactly one MASTER within one advert interval, and the winner announces
the VIP again (the loser's gratuitous ARP may have moved the LAN's caches to it)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from lab.netns import VIP, Network, Node, in_netns, wait_for

pytestmark = pytest.mark.netns

ETH_P_ALL = 0x0003
ADVERT_INTERVAL = 1.0


@contextlib.contextmanager
def arp_sniffer(node: Node) -> Iterator[socket.socket]:
    with in_netns(node.ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind(("eth0", ETH_P_ALL))
        yield sock
    finally:
        sock.close()


def gratuitous_arps_for(sock: socket.socket, vip: IPv4Address, seconds: float) -> list[bytes]:
    """Sender MACs of gratuitous ARPs for ``vip`` seen within ``seconds``."""
    senders = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        frame = sock.recv(2048)
        if len(frame) < 42 or frame[12:14] != b"\x08\x06":
            continue
        op, sha, spa, tpa = struct.unpack_from("!6xH6s4s6x4s", frame, 14)
        if op == 1 and spa == tpa == vip.packed:
            senders.append(sha)
    return senders


def state(node: Node) -> object:
    try:
        return node.daemons[-1].status()["state"]
    except OSError:  # not answering yet
        return None


def masters(*nodes: Node) -> list[str]:
    return [n.name for n in nodes if state(n) == "MASTER"]


@pytest.mark.parametrize(("skew_a", "skew_b"), [(100, 0), (0, 0)],
                         ids=["faster-wins", "equal-intervals-tie-break"])
def test_healed_partition_has_one_master_within_an_advert_interval_and_it_announces(
        net: Network, skew_a: int, skew_b: int) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.2.1")  # b wins a tie (last octet)
    a.start("carpd", advskew=skew_a)
    wait_for(lambda: masters(a) == ["a"], 10)
    b.start("carpd", advskew=skew_b)  # not preempting: a stays MASTER until the partition
    wait_for(lambda: state(b) == "BACKUP", 10)
    winner = b  # the faster, or with equal intervals the winner of ucarp's tie-break
    net.partition(a, b)
    wait_for(lambda: len(masters(a, b)) == 2, 10)
    time.sleep(1.0)
    with arp_sniffer(a) as sniffer:
        net.heal()
        # The issue asks for one MASTER within one advert interval: bench/faults.py measures
        # it (partition kind); a loaded CI machine only has to get there.
        wait_for(lambda: masters(a, b) == [winner.name], 3 * ADVERT_INTERVAL)
        announced = gratuitous_arps_for(sniffer, VIP, 2.0)
    assert winner.mac in announced
    time.sleep(2)
    assert masters(a, b) == [winner.name]
    assert net.holders() == [winner]
