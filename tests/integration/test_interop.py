"""carpd against carpd and against Debian's ucarp, over real raw sockets in network namespaces.

Every scenario uses advbase 1 (advert every second, master down after 3 s) unless the point needs
something else.  Timing bounds allow for a loaded 2-core CI machine, and for ucarp's own slowness:
it sees packets up to ~1 s late (libpcap buffering) and checks the master-down deadline only once
per interval, so a ucarp backup takes over up to about one interval after the deadline.
"""

from __future__ import annotations

import signal
import time
from ipaddress import IPv4Address
from typing import Any

import pytest

from lab.netns import PASSWORD, VIP, CarpFrame, Daemon, Network, Node, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.ucarp]

MASTER_DOWN = 3.0  # advbase 1 x deadratio 3, advskew 0
SLACK = 0.75  # scheduling on a loaded CI machine
UCARP_LATE = 1.25  # ucarp: packets through libpcap's 1 s buffer; deadline checked once a second
DRAIN = 2.0  # carpd keeps the VIP this long after a planned release (--drain's default)
KINDS = ("carpd", "ucarp")
PAIRS = [("carpd", "carpd"), ("carpd", "ucarp"), ("ucarp", "carpd")]


def sole_holder(net: Network, timeout: float, vip: IPv4Address = VIP) -> Node:
    def one() -> list[Node] | None:
        holders = net.holders(vip)
        return holders if len(holders) == 1 else None

    (holder,) = wait_for(one, timeout)
    return holder


def adverts(net: Network, node: Node, since: float = 0.0, vhid: int = 1) -> list[CarpFrame]:
    return net.capture.frames(source=node.address, vhid=vhid, since=since)


def start_master(
    net: Network, node: Node, kind: str, vip: IPv4Address = VIP, **options: Any
) -> Daemon:
    """Start ``kind`` alone on ``node`` and wait until it holds the VIP."""
    daemon = node.start(kind, vip=vip, **options)
    wait_for(lambda: net.holders(vip) == [node], timeout=MASTER_DOWN + UCARP_LATE + 3)
    return daemon


def start_backup(net: Network, node: Node, kind: str, master: Node, **options: Any) -> Daemon:
    """Start ``kind`` on ``node`` and wait until it has run its down script and heard adverts."""
    daemon = node.start(kind, **options)
    wait_for(daemon.events, timeout=5)
    time.sleep(1.5)
    assert net.holders() == [master], f"{daemon} took the VIP from the running master"
    assert not daemon.is_master()
    return daemon


def state_changes(daemon: Daemon, since: float) -> list[str]:
    return [e.event for e in daemon.events() if e.time >= since]


# ---- election ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS)
def test_two_nodes_elect_exactly_one_master(net: Network, kind_a: str, kind_b: str) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    daemons = [a.start(kind_a), b.start(kind_b)]

    holder = sole_holder(net, timeout=MASTER_DOWN + UCARP_LATE + 3)
    time.sleep(2.5)
    assert net.holders() == [holder]
    masters = [d for d in daemons if d.is_master()]
    assert [d.node for d in masters] == [holder]
    since = time.time() - 1.5
    assert {f.source for f in net.capture.frames(since=since)} == {holder.address}
    assert all(d.alive() for d in daemons)


# ---- failover ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("master_kind", "backup_kind"), PAIRS)
def test_backup_takes_over_after_master_is_killed(
    net: Network, master_kind: str, backup_kind: str
) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    master = start_master(net, a, master_kind)
    backup = start_backup(net, b, backup_kind, master=a)

    master.kill()
    a.remove_address(VIP)  # a crashed daemon leaves its VIP behind
    killed = time.time()

    first = net.capture.wait_frame(
        lambda f: f.source == b.address, timeout=MASTER_DOWN + UCARP_LATE + SLACK + 2
    )
    last = adverts(net, a)[-1]
    assert last.time <= killed
    gap = first.time - last.time
    late = UCARP_LATE if backup_kind == "ucarp" else 0.0
    assert MASTER_DOWN - 0.1 <= gap <= MASTER_DOWN + late + SLACK, (
        f"{backup} took over {gap:.3f} s after the last advert (master down {MASTER_DOWN} s)"
    )
    assert sole_holder(net, timeout=2) is b
    assert backup.is_master()


# ---- preemption -------------------------------------------------------------------------------


def test_preempting_carpd_takes_over_from_slower_ucarp_master(net: Network) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    ucarp = start_master(net, a, "ucarp", advskew=100)
    started = time.time()
    carpd = b.start("carpd", preempt=True, advskew=0)

    first = net.capture.wait_frame(lambda f: f.source == b.address, timeout=MASTER_DOWN + 2)
    # It preempted on hearing the slower master's advert, not after its own master-down timer.
    heard = [f for f in adverts(net, a) if f.time < first.time][-1]
    assert heard.time > started
    assert first.time - heard.time < 0.5, "carpd did not act on the slower master's advert"
    listening = carpd.events()[0]  # its down script at start: BACKUP, master-down timer armed
    assert first.time - listening.time < MASTER_DOWN - 0.5
    assert first.advert.advskew == 0

    wait_for(lambda: net.holders() == [b], timeout=UCARP_LATE + 2)
    assert carpd.is_master()
    assert not ucarp.is_master()
    settled = time.time()
    time.sleep(2.5)
    assert net.holders() == [b]
    assert state_changes(carpd, settled) == state_changes(ucarp, settled) == []


def test_preempting_ucarp_takes_over_from_slower_carpd_master(net: Network) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    carpd = start_master(net, a, "carpd", advskew=100)
    ucarp = b.start("ucarp", preempt=True, advskew=0)

    first = net.capture.wait_frame(lambda f: f.source == b.address, timeout=MASTER_DOWN + 2)
    # carpd hears a faster master: one more advert of its own, then BACKUP and silence, and the
    # down script at once (no drain: this release is not planned).
    down = wait_for(
        lambda: next((e for e in carpd.events() if e.event == "down" and e.time > first.time),
                     None),
        timeout=UCARP_LATE + SLACK,
    )
    last = adverts(net, a)[-1]
    assert first.time < last.time < first.time + UCARP_LATE
    assert down.time - last.time < SLACK
    wait_for(lambda: net.holders() == [b], timeout=1)
    assert ucarp.is_master()
    time.sleep(2.5)
    assert adverts(net, a, since=last.time + 0.001) == []
    assert net.holders() == [b]
    assert state_changes(carpd, down.time + 0.001) == state_changes(ucarp, first.time) == []


# ---- tie-break --------------------------------------------------------------------------------


@pytest.mark.parametrize(("winner_kind", "loser_kind"), PAIRS)
def test_equal_masters_keep_the_one_ucarp_prefers_without_flapping(
    net: Network, winner_kind: str, loser_kind: str
) -> None:
    """Two masters with equal intervals meet (a healed split brain).  ucarp compares the source
    addresses as little-endian integers: 10.9.2.1 "is lower" than 10.9.1.2 and must win."""
    winner_node, loser_node = net.add_node("10.9.2.1"), net.add_node("10.9.1.2")
    net.partition(winner_node, loser_node)
    winner = winner_node.start(winner_kind)
    loser = loser_node.start(loser_kind)
    wait_for(lambda: winner.is_master() and loser.is_master(), timeout=MASTER_DOWN + 4)
    assert len(net.holders()) == 2

    healed = time.time()
    net.heal()
    wait_for(lambda: net.holders() == [winner_node], timeout=UCARP_LATE + DRAIN + SLACK + 1)
    time.sleep(5)
    assert net.holders() == [winner_node]
    assert state_changes(winner, healed) == []
    assert state_changes(loser, healed) == ["down"]
    assert adverts(net, loser_node, since=healed + UCARP_LATE + 1.5) == []
    assert len(adverts(net, winner_node, since=healed + 1)) >= 4
    assert winner.alive() and loser.alive()


# ---- authentication and vhids -----------------------------------------------------------------


def rejected(daemon: Daemon, needle: str) -> int:
    counts = daemon.status()["rejected"]
    assert isinstance(counts, dict)
    return sum(int(n) for reason, n in counts.items() if needle in reason.upper())


@pytest.mark.parametrize("peer_kind", KINDS)
def test_adverts_with_a_wrong_password_are_ignored_and_counted(
    net: Network, peer_kind: str
) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    carpd = a.start("carpd", password=b"right")
    peer = b.start(peer_kind, password=b"wrong")

    wait_for(lambda: carpd.is_master() and peer.is_master(), timeout=MASTER_DOWN + UCARP_LATE + 3)
    both = time.time()
    time.sleep(3)
    assert {n.name for n in net.holders()} == {"a", "b"}
    assert state_changes(carpd, both) == state_changes(peer, both) == []
    assert rejected(carpd, "HMAC") >= 3
    assert "HMAC" in carpd.log().upper(), "carpd did not log the bad HMAC"


def test_different_vhids_do_not_interfere(net: Network) -> None:
    a, b, c = net.add_node("10.9.1.2"), net.add_node("10.9.1.3"), net.add_node("10.9.1.4")
    vip2 = IPv4Address("10.9.1.101")
    alone = a.start("carpd", vhid=1, advskew=100)
    ucarp = b.start("ucarp", vhid=2, vip=vip2, advskew=50)
    wait_for(lambda: net.holders(VIP) == [a] and net.holders(vip2) == [b], timeout=8)
    carpd = c.start("carpd", vhid=2, vip=vip2, advskew=100)

    wait_for(carpd.events, timeout=5)
    watched = time.time()
    time.sleep(MASTER_DOWN + 1.5)
    # vhid 1's only node stays master though faster vhid-2 adverts fly past; vhid 2 is ucarp's.
    assert net.holders(VIP) == [a]
    assert net.holders(vip2) == [b]
    assert alone.is_master() and ucarp.is_master() and not carpd.is_master()
    assert state_changes(alone, watched) == state_changes(ucarp, watched) == []
    assert carpd.status()["master"] == str(b.address)
    assert alone.status()["state"] == "MASTER"


# ---- bowing out -------------------------------------------------------------------------------


@pytest.mark.parametrize("backup_kind", KINDS)
def test_backup_takes_over_at_once_when_carpd_master_is_terminated(
    net: Network, backup_kind: str
) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    master = start_master(net, a, "carpd")
    backup = start_backup(net, b, backup_kind, master=a)

    terminated = time.time()
    master.signal(signal.SIGTERM)
    assert master.wait_exit(timeout=5) == 0

    bow = net.capture.wait_frame(lambda f: f.source == a.address and f.bow_out, timeout=1)
    assert bow.time >= terminated
    assert bow.valid_for(1, PASSWORD), "the bow-out advert does not authenticate"
    assert adverts(net, a, since=bow.time + 0.001) == []
    assert master.events()[-1].event == "down"
    assert not a.has(VIP)

    first = net.capture.wait_frame(lambda f: f.source == b.address, timeout=MASTER_DOWN + 2)
    limit = UCARP_LATE + 0.5 if backup_kind == "ucarp" else SLACK
    assert first.time - bow.time < limit < MASTER_DOWN, (
        f"{backup} took over {first.time - bow.time:.3f} s after the bow-out"
    )
    assert sole_holder(net, timeout=2) is b


def test_carpd_master_steps_down_on_sigusr2_and_ucarp_takes_over(net: Network) -> None:
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    carpd = start_master(net, a, "carpd")
    ucarp = start_backup(net, b, "ucarp", master=a)

    asked = time.time()
    carpd.signal(signal.SIGUSR2)
    bow = net.capture.wait_frame(lambda f: f.source == a.address and f.bow_out, timeout=1)
    assert bow.time >= asked and bow.valid_for(1, PASSWORD)
    first = net.capture.wait_frame(lambda f: f.source == b.address, timeout=MASTER_DOWN + 2)
    assert first.time - bow.time < UCARP_LATE + 0.5
    assert sole_holder(net, timeout=DRAIN + SLACK + 1) is b
    assert ucarp.is_master() and not carpd.is_master()
    assert carpd.alive()
    assert carpd.status()["state"] == "BACKUP"
