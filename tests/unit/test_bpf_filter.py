"""The kernel filter of carpd.engine.link, run on a small classic-BPF interpreter: it drops what the
receive checks would reject without the key, and never what they might accept.

One table of frames drives both sides: the verdict of the filter and the verdict of
``wire.strip_ethernet`` + ``wire.inspect``.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from carpd.core import wire
from carpd.engine import link

KEY = b"pass"
VIP = IPv4Address("10.9.1.100")
SOURCE = IPv4Address("10.9.1.2")
RECEIVER = IPv4Address("10.9.1.3")
GROUP = wire.DEFAULT_GROUP
OTHER_GROUP = IPv4Address("224.0.0.99")
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST = 0, 1, 2


# ---- a classic BPF interpreter (linux/filter.h), only the instructions carpd uses -------------


class OutOfBounds(Exception):
    """The kernel ends the program with ``return 0`` on a load past the frame's end."""


def load(frame: bytes, offset: int, size: int, pkttype: int) -> int:
    if offset == link.SKF_AD_PKTTYPE and size == 4:
        return pkttype
    if offset < 0 or offset + size > len(frame):
        raise OutOfBounds
    return int.from_bytes(frame[offset : offset + size], "big")


def run_filter(program: list[link.Insn], frame: bytes, pkttype: int = PACKET_MULTICAST) -> int:
    """The number of bytes the program keeps of ``frame`` (0: dropped)."""
    a = x = pc = 0
    try:
        while True:
            code, jt, jf, k = program[pc]
            pc += 1
            if code == link.BPF_RET_K:
                return k
            if code == link.BPF_LD_W_ABS:
                a = load(frame, k, 4, pkttype)
            elif code == link.BPF_LD_H_ABS:
                a = load(frame, k, 2, pkttype)
            elif code == link.BPF_LD_B_ABS:
                a = load(frame, k, 1, pkttype)
            elif code == link.BPF_LD_B_IND:
                a = load(frame, x + k, 1, pkttype)
            elif code == link.BPF_LDX_B_MSH:
                x = 4 * (load(frame, k, 1, pkttype) & 0x0F)
            elif code == link.BPF_ALU_AND_K:
                a &= k
            elif code == link.BPF_JMP_JEQ_K:
                pc += jt if a == k else jf
            elif code == link.BPF_JMP_JSET_K:
                pc += jt if a & k else jf
            else:
                raise AssertionError(f"instruction {code:#x} unknown to this interpreter")
    except OutOfBounds:
        return 0


# ---- frames -----------------------------------------------------------------------------------


def ip_packet(vhid: int = 1, ttl: int = 255, destination: IPv4Address = GROUP,
              options: bytes = b"", version: int = wire.CARP_VERSION, key: bytes = KEY,
              proto: int = wire.CARP_PROTO, source: IPv4Address = SOURCE) -> bytes:
    """An advert as ucarp sends it, with the given fields changed (checksums kept right)."""
    advert = wire.Advert(vhid=vhid, advbase=1, advskew=0, counter=42, version=version)
    carp = wire.encode_carp(advert, key, VIP)
    ihl = 5 + len(options) // 4
    header = bytearray(wire.encode_ip(source, destination, carp, 7)[:20])
    header[0] = 0x40 | ihl
    header[2:4] = (ihl * 4 + len(carp)).to_bytes(2, "big")
    header[8], header[9] = ttl, proto
    header += options
    header[10:12] = b"\0\0"
    header[10:12] = wire.internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + carp


def frame(packet: bytes, destination_mac: bytes | None = None, ethertype: int = wire.ETH_P_IP
          ) -> bytes:
    mac = wire.multicast_mac(GROUP) if destination_mac is None else destination_mac
    return wire.encode_ethernet(mac, wire.ucarp_source_mac(1), ethertype, packet)


def receive_checks(data: bytes, vhid: int = 1, group: IPv4Address = GROUP) -> str:
    """What the engine's checks say: "accepted" or the reason they drop it."""
    packet = wire.strip_ethernet(data, group)
    if packet is None:
        return "not for the group's MAC"
    verdict = wire.inspect(packet, wire.Expect(vhid, KEY, VIP, RECEIVER, group))
    return "accepted" if isinstance(verdict, wire.Received) else verdict.name


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    passes_filter: bool
    checks: str
    """The receive checks' verdict for vhid 1, the default group and KEY."""
    pkttype: int = PACKET_MULTICAST


# IP options whose second byte is 1: a filter reading the vhid at a fixed offset 21 would see
# vhid 1 in a frame whose real vhid (after the options) is 2.
OPTIONS_LOOKING_LIKE_VHID_1 = bytes([0x94, 1, 0, 0])  # router alert is 94 04; any bytes do here

CASES = [
    Case("a valid advert", frame(ip_packet()), True, "accepted"),
    Case("a valid advert to the broadcast MAC (-M)", frame(ip_packet(), wire.BROADCAST_MAC),
         True, "accepted"),
    Case("a valid advert with IP options", frame(ip_packet(options=bytes(4))), True,
         "accepted"),
    Case("a bad HMAC: only the key tells", frame(ip_packet(key=b"wrong")), True, "BAD_HMAC"),
    Case("a bad checksum: left to the checks", frame(ip_packet()[:30] + b"\xff"
                                                     + ip_packet()[31:]), True, "BAD_CHECKSUM"),
    Case("TTL 64", frame(ip_packet(ttl=64)), False, "BAD_TTL"),
    Case("another vhid", frame(ip_packet(vhid=2)), False, "OTHER_VHID"),
    Case("another vhid behind IP options", frame(ip_packet(vhid=2,
                                                           options=OPTIONS_LOOKING_LIKE_VHID_1)),
         False, "OTHER_VHID"),
    Case("another destination", frame(ip_packet(destination=RECEIVER)), False,
         "BAD_DESTINATION"),
    Case("another group", frame(ip_packet(destination=OTHER_GROUP)), False, "BAD_DESTINATION"),
    Case("CARP version 3", frame(ip_packet(version=3)), False, "BAD_VERSION"),
    Case("another protocol", frame(ip_packet(proto=17)), False, "NOT_CARP"),
    Case("an ARP frame", frame(ip_packet(), ethertype=wire.ETH_P_ARP), False,
         "not for the group's MAC"),
    Case("a unicast MAC", frame(ip_packet(), bytes.fromhex("020000000001")), False,
         "not for the group's MAC"),
    Case("another group's MAC", frame(ip_packet(), wire.multicast_mac(OTHER_GROUP)), False,
         "not for the group's MAC"),
    Case("cut short before the vhid", frame(ip_packet())[:14 + 20 + 1], False, "SHORT"),
    Case("IPv6 in an IPv4 ethertype", frame(b"\x60" + ip_packet()[1:]), False, "NOT_IPV4"),
    Case("our own advert going out", frame(ip_packet()), False, "accepted",
         pkttype=link.PACKET_OUTGOING),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_filter_drops_what_the_receive_checks_reject_without_the_key(case: Case) -> None:
    program = link.carp_filter(GROUP, {1})
    kept = run_filter(program, case.frame, case.pkttype)
    assert (kept > 0) == case.passes_filter
    assert kept in (0, link.ACCEPT_BYTES), "the filter must keep whole frames or nothing"
    assert receive_checks(case.frame) == case.checks


def test_filter_lets_through_every_vhid_given_and_no_other() -> None:
    program = link.carp_filter(GROUP, {3, 7, 200})
    passed = {v for v in range(1, 256) if run_filter(program, frame(ip_packet(vhid=v)))}
    assert passed == {3, 7, 200}


def test_without_vhids_or_group_the_filter_leaves_those_fields_to_the_checks() -> None:
    program = link.carp_filter(None, None)
    assert run_filter(program, frame(ip_packet(vhid=9, destination=OTHER_GROUP),
                                     wire.multicast_mac(OTHER_GROUP)))
    assert run_filter(program, frame(ip_packet(vhid=9), wire.BROADCAST_MAC))
    assert not run_filter(program, frame(ip_packet(ttl=64)))
    assert not run_filter(program, frame(ip_packet(), bytes.fromhex("020000000001")))


def test_too_many_vhids_leave_the_vhid_to_the_checks() -> None:
    program = link.carp_filter(GROUP, range(1, 256))
    assert run_filter(program, frame(ip_packet(vhid=77)))
    assert max(max(jt, jf) for _code, jt, jf, _k in program) <= 255


def mutations(seed: int) -> list[bytes]:
    """Valid adverts with random bytes changed: some still pass every check."""
    rng = random.Random(seed)
    base = bytearray(frame(ip_packet()))
    found = []
    for _ in range(3000):
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        found.append(bytes(mutated))
    # fields outside the HMAC, with the CARP checksum made right again: these pass every check
    for _ in range(300):
        packet = bytearray(ip_packet())
        packet[22] = rng.randrange(256)  # advskew
        packet[25] = rng.randrange(1, 256)  # advbase
        packet[26:28] = b"\0\0"
        packet[26:28] = wire.internet_checksum(bytes(packet[20:])).to_bytes(2, "big")
        found.append(frame(bytes(packet)))
    return found


@pytest.mark.parametrize("seed", range(3))
def test_filter_never_drops_a_frame_the_receive_checks_accept(seed: int) -> None:
    program = link.carp_filter(GROUP, {1})
    accepted_by_checks = [f for f in mutations(seed) if receive_checks(f) == "accepted"]
    assert len(accepted_by_checks) >= 300
    assert all(run_filter(program, f) for f in accepted_by_checks)


def test_filter_lets_through_only_what_could_pass_with_the_right_key() -> None:
    program = link.carp_filter(GROUP, {1})
    let_through = [f for f in mutations(7) if run_filter(program, f)]
    verdicts = {receive_checks(f) for f in let_through}
    assert verdicts <= {"accepted", "BAD_CHECKSUM", "BAD_HMAC", "SHORT"}


def test_the_interpreter_refuses_instructions_it_does_not_know() -> None:
    with pytest.raises(AssertionError, match="unknown"):
        run_filter([(0x07, 0, 0, 0)], b"")


def vhid_sets() -> list[Collection[int]]:
    return [{1}, {255}, set(range(1, 65))]


@pytest.mark.parametrize("vhids", vhid_sets(), ids=["1", "255", "1-64"])
def test_every_jump_lands_inside_the_program(vhids: Collection[int]) -> None:
    program = link.carp_filter(GROUP, vhids)
    for index, (code, jt, jf, _k) in enumerate(program):
        if code in (link.BPF_JMP_JEQ_K, link.BPF_JMP_JSET_K):
            assert index + 1 + max(jt, jf) < len(program)
    assert program[-1] == (link.BPF_RET_K, 0, 0, 0)
