"""migrate's bow-out burst against real peers on the wire (lab/netns.py, Debian's ucarp).

A ucarp peer reads frames through libpcap's TPACKET_V3 ring, handed over only when a block is
retired: by its 1 s timer, or when full.  Its ring is made when it starts, so its timer ticks
about every second after its start: a bow-out sent just after a tick waits up to ~1 s in the
kernel (measured: 100 ms after the tick -> 915 ms, 300 ms -> 725 ms).  migrate's bow-out goes
out in BOW_OUT_COPIES copies, which fill the block, so the peer acts at once at any phase.
"""

from __future__ import annotations

import signal
import time

import pytest

from carpd.core import wire
from carpd.debian.ifupdown import migrate
from lab.netns import PASSWORD, VIP, Daemon, Network, Node, in_netns, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.ucarp]

AFTER_TICK = 3.3
"""When the bow-out goes, in seconds after the peer started: 0.3 s after its ring's timer
ticked (the bad phase: one bow-out alone waits ~0.7 s there)."""
AT_ONCE = 0.1
"""How soon after the bow-out the peer must run its up script (measured with the burst:
10-16 ms; on a loaded 2-core machine the 1700 copies take 15-30 ms to send)."""


def _pair(net: Network, peer_kind: str) -> tuple[Node, Daemon, Node, Daemon, float]:
    """a: a ucarp MASTER; b: a ``peer_kind`` BACKUP, and when b started."""
    a, b = net.add_node("10.9.1.2"), net.add_node("10.9.1.3")
    master = a.start("ucarp")
    wait_for(lambda: net.holders() == [a], 10, what="a (ucarp alone) MASTER")
    peer = b.start(peer_kind, advskew=100)
    return a, master, b, peer, time.time()


def _bow_out_at(net: Network, a: Node, master: Daemon, when: float) -> float:
    """Freeze a's ucarp and send migrate's bow-out for it at ``when`` (Unix time); when its
    first copy crossed the bridge."""
    time.sleep(max(0.0, when - time.time()))
    master.signal(signal.SIGSTOP)
    args = migrate.UcarpArgs("eth0", 1, VIP, a.address)
    with in_netns(a.ns):
        tap = migrate.CarpTap("eth0", 1, False)
    try:
        migrate.bow_out(tap, args, PASSWORD, a.address, None)
    finally:
        tap.close()
    bows = wait_for(lambda: [f for f in net.capture.frames(source=a.address) if f.bow_out], 5)
    return bows[0].time


def _peer_up_after_the_bow_out(net: Network, kind: str) -> tuple[Daemon, float]:
    """a's bow-out sent AFTER_TICK after b (``kind``) started: b, and how long after the
    bow-out b's up script ran."""
    a, master, _b, peer, started = _pair(net, kind)
    try:
        sent = _bow_out_at(net, a, master, started + AFTER_TICK)
        up = wait_for(peer.ups, 3, what="b's up script").pop(0).time
    finally:
        master.signal(signal.SIGCONT)
    return peer, up - sent


def test_a_ucarp_peer_acts_on_the_bow_out_burst_at_once_even_just_after_its_ring_timer_ticked(
        net: Network) -> None:
    _peer, took = _peer_up_after_the_bow_out(net, "ucarp")
    assert took < AT_ONCE, \
        f"b's up script ran {took * 1000:.0f} ms after the bow-out (its ring waited)"


def test_a_carpd_peer_takes_over_on_the_bow_out_and_counts_its_copies_as_replays_quietly(
        net: Network) -> None:
    peer, took = _peer_up_after_the_bow_out(net, "carpd")
    status = peer.status()
    assert status["state"] == "MASTER" and took < AT_ONCE, (took, status)
    rejected = status["rejected"]
    assert isinstance(rejected, dict) and set(rejected) == {"stale"} and rejected["stale"] > 0, \
        status
    replay_lines = [line for line in peer.log().splitlines() if "stale counter" in line]
    assert len(replay_lines) <= 2, peer.log()


def test_a_full_transmit_queue_cuts_the_burst_short_without_failing_the_bow_out(
        net: Network) -> None:
    a = net.add_node("10.9.1.2")
    # a slow link: its queue holds a few copies, the kernel refuses the rest (ENOBUFS)
    a.exec("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "4k",
           "limit", "8k")
    with in_netns(a.ns):
        tap = migrate.CarpTap("eth0", 1, False)
    try:
        advert = wire.Advert(1, wire.BOW_OUT, wire.BOW_OUT, 1)
        packet = wire.encode_packet(advert, PASSWORD, VIP, a.address, 1, tap.group)
        began = time.monotonic()
        sent = tap.send(packet, migrate.BOW_OUT_COPIES)
        took = time.monotonic() - began
    finally:
        tap.close()
    assert 0 < sent < migrate.BOW_OUT_COPIES
    assert took < migrate.BURST_WAIT + 0.1, took
    wait_for(lambda: net.capture.frames(source=a.address), 5, what="the first copy on the wire")
