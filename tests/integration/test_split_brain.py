"""A partition ends: exactly one MASTER within one advert interval, and the winner announces
the VIP again (the loser's gratuitous ARP may have moved the LAN's caches to it)."""

from __future__ import annotations

import time

import pytest

from lab.garp import frame_socket, garps
from lab.netns import VIP, Network, Node, wait_for

pytestmark = pytest.mark.netns

ADVERT_INTERVAL = 1.0


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
    with frame_socket(a) as sniffer:
        net.heal()
        # The issue asks for one MASTER within one advert interval: bench/faults.py measures
        # it (partition kind); a loaded CI machine only has to get there.
        wait_for(lambda: masters(a, b) == [winner.name], 3 * ADVERT_INTERVAL)
        announced = [g.sender_mac for g in garps(sniffer, 2.0) if g.address == VIP]
    assert winner.mac in announced
    time.sleep(2)
    assert masters(a, b) == [winner.name]
    assert net.holders() == [winner]
