"""The election core replays the captured ucarp sessions frame for frame.

Each test feeds a VirtualHost configured like a captured ucarp node with what that node heard (and
the random counters it drew), and rebuilds every frame it would send: the result must be the
captured frames, in the captured order, byte for byte.  Only the IP id (random in ucarp) is taken
from the capture; adverts are framed with ucarp's source MAC, as ucarp sends them.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

from frames import CarpCase, carp_cases, vector_frames

from carpd.core import wire
from carpd.core.election import (
    Action,
    Params,
    RunScript,
    Script,
    SendAdvert,
    SendGratuitousArp,
    State,
    Transition,
    VirtualHost,
)

V1 = "v1_vhid1_secret_b1_k0"
V2 = "v2_vhid7_rascaldev_b2_k50"
V3 = "v3_vhid1_secret_preempt_k0_over_k100"
N1, N2 = IPv4Address("10.99.0.11"), IPv4Address("10.99.0.12")
N1_MAC, N2_MAC = bytes.fromhex("029900000011"), bytes.fromhex("029900000012")
VIP = IPv4Address("10.99.0.100")
# Who sent which frame of v3 (by Ethernet/IP source in the capture).
# ucarp draws its counters its own way and checks none: replay it as it is.
UCARP = {"ucarp_counter": True, "replay_check": False}
N1_FRAMES_IN_V3 = (5, 6, 8, 9, 10, 11, 12)
N2_FRAMES_IN_V3 = (0, 1, 2, 3, 4, 7)


def captured(vector: str) -> list[bytes]:
    return vector_frames()[vector]


def adverts_of(vector: str, source: IPv4Address) -> list[CarpCase]:
    return [c for c in carp_cases() if c.name.startswith(vector + "#") and c.source == source]


def advert_case(vector: str, index: int) -> CarpCase:
    return next(c for c in carp_cases() if c.name == f"{vector}#{index}")


class Wire:
    """Frames a host's actions the way ucarp puts them on the wire."""

    def __init__(self, params: Params, mac: bytes, idents: Iterator[int]) -> None:
        self.params, self.mac, self.idents = params, mac, idents
        self.frames: list[bytes] = []

    def send(self, actions: list[Action]) -> list[Action]:
        p = self.params
        for action in actions:
            if isinstance(action, SendGratuitousArp):
                self.frames.append(wire.encode_gratuitous_arp(self.mac, p.vip))
            elif isinstance(action, SendAdvert):
                packet = wire.encode_packet(action.advert, p.key, p.vip, p.source,
                                            next(self.idents), p.group)
                self.frames.append(wire.encode_ethernet(
                    wire.multicast_mac(p.group), wire.ucarp_source_mac(p.vhid), wire.ETH_P_IP,
                    packet))
        return actions


def lone_node_replay(vector: str, key: bytes, vhid: int, advbase: int, advskew: int) -> None:
    ours = adverts_of(vector, N1)
    params = Params(vhid=vhid, key=key, vip=VIP, source=N1, advbase=advbase, advskew=advskew,
                    **UCARP)
    counters = iter(c.advert.counter for c in ours)
    host = VirtualHost(params, lambda: next(counters))
    out = Wire(params, N1_MAC, iter(c.ident for c in ours))
    out.send(host.start(0.0))
    while len(out.frames) < len(captured(vector)):
        deadline = host.next_deadline()
        assert deadline is not None
        out.send(host.handle_timer(deadline))
    assert [f.hex() for f in out.frames] == [f.hex() for f in captured(vector)]


def test_lone_node_sends_the_v1_capture() -> None:
    lone_node_replay(V1, b"secret", vhid=1, advbase=1, advskew=0)


def test_lone_node_sends_the_v2_capture() -> None:
    lone_node_replay(V2, b"rascaldev", vhid=7, advbase=2, advskew=50)


def test_preempting_node_sends_what_ucarp_n1_sent() -> None:
    # n1 (advskew 0, -P) joins while n2 (advskew 100) is MASTER; it hears n2's advert #3, takes
    # over at once, later hears n2's parting advert #7 (slower: "reasserting control" with an
    # ARP) and keeps advertising with n2's counter + 1, + 2, ...
    params = Params(vhid=1, key=b"secret", vip=VIP, source=N1, preempt=True, **UCARP)
    host = VirtualHost(params, lambda: 0)
    out = Wire(params, N1_MAC, iter(c.ident for c in adverts_of(V3, N1)))
    host.start(10.0)
    out.send(host.receive(advert_case(V3, 3).ip_packet, 11.0))
    assert host.state is State.MASTER
    out.send(host.receive(advert_case(V3, 7).ip_packet, 11.3))
    assert host.state is State.MASTER
    for t in (12.0, 13.0, 14.0):
        out.send(host.handle_timer(t))
    n1_frames = [captured(V3)[i] for i in N1_FRAMES_IN_V3]
    assert [f.hex() for f in out.frames] == [f.hex() for f in n1_frames]


def test_preempted_master_sends_one_more_advert_like_ucarp_n2() -> None:
    params = Params(vhid=1, key=b"secret", vip=VIP, source=N2, advskew=100, **UCARP)
    ours = adverts_of(V3, N2)
    counters = iter(c.advert.counter for c in ours)
    host = VirtualHost(params, lambda: next(counters))
    out = Wire(params, N2_MAC, iter(c.ident for c in ours))
    out.send(host.start(0.0))
    while len(out.frames) < 5:  # alone: ARP, three adverts, the ARP with the third
        deadline = host.next_deadline()
        assert deadline is not None
        out.send(host.handle_timer(deadline))
    assert host.state is State.MASTER
    actions = out.send(host.receive(advert_case(V3, 6).ip_packet, 8.0))
    assert actions[1:] == [
        Transition(State.MASTER, State.BACKUP, "preferred master 10.99.0.11 advertised"),
        RunScript(Script.DOWN)]
    n2_frames = [captured(V3)[i] for i in N2_FRAMES_IN_V3]
    assert [f.hex() for f in out.frames] == [f.hex() for f in n2_frames]


def test_v3_frames_are_attributed_to_the_right_node() -> None:
    def sender(frame: bytes) -> IPv4Address | bytes:
        is_arp = frame[12:14] == b"\x08\x06"
        return frame[22:28] if is_arp else IPv4Address(frame[26:30])

    frames = captured(V3)
    assert {sender(frames[i]) for i in N1_FRAMES_IN_V3} == {N1, N1_MAC}
    assert {sender(frames[i]) for i in N2_FRAMES_IN_V3} == {N2, N2_MAC}
    assert sorted(N1_FRAMES_IN_V3 + N2_FRAMES_IN_V3) == list(range(len(frames)))
