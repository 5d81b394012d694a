"""carpd.core.wire against the frames captured from Debian's ucarp 1.5.2.

One table (frames.carp_cases: every CARP frame of the three vectors, its decoded fields next to its
bytes) drives the encoder tests, the decoder tests and the corruption tests.
"""

from __future__ import annotations

import hmac
import random
from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from frames import (
    FUZZ_SEED,
    RECEIVER,
    ArpCase,
    CarpCase,
    arp_cases,
    carp_cases,
    fuzz_inputs,
    pcap_frames,
    vector_frames,
    with_byte,
    with_carp_checksum,
    with_ip_checksum,
)

from carpd.core import wire

CARP_CASES = carp_cases()
ARP_CASES = arp_cases()
CORRUPTION_MASKS = (0x01, 0x10, 0x80, 0xFF)
ETHERNET_DESTINATION = range(0, 6)
ETHERNET_SOURCE = range(6, 12)
ETHERTYPE = range(12, 14)


def by_name(cases: list[CarpCase]) -> list[str]:
    return [c.name for c in cases]


carp_table = pytest.mark.parametrize("case", CARP_CASES, ids=by_name(CARP_CASES))


def test_the_table_holds_every_captured_carp_frame() -> None:
    assert len(CARP_CASES) == 5 + 4 + 8
    assert {c.vhid for c in CARP_CASES} == {1, 7}


def test_json_vectors_hold_the_same_frames_as_the_pcap_files() -> None:
    assert pcap_frames() == vector_frames()


# ---- encoder ----------------------------------------------------------------------------------


@carp_table
def test_encode_carp_gives_the_captured_bytes(case: CarpCase) -> None:
    unsigned = replace(case.advert, digest=b"")
    assert wire.encode_carp(unsigned, case.password, case.vip).hex() == case.carp.hex()


@carp_table
def test_encode_packet_gives_the_captured_ip_packet(case: CarpCase) -> None:
    packet = wire.encode_packet(case.advert, case.password, case.vip, case.source, case.ident,
                                case.group)
    assert packet.hex() == case.ip_packet.hex()


@carp_table
def test_ucarp_frame_is_rebuilt_byte_for_byte_with_ucarp_source_mac(case: CarpCase) -> None:
    packet = wire.encode_packet(case.advert, case.password, case.vip, case.source, case.ident,
                                case.group)
    frame = wire.encode_ethernet(wire.multicast_mac(case.group), wire.ucarp_source_mac(case.vhid),
                                 wire.ETH_P_IP, packet)
    assert frame.hex() == case.frame.hex()


@carp_table
def test_hmac_input_is_version_type_vhid_vip_counter(case: CarpCase) -> None:
    assert wire.hmac_input(case.vhid, case.vip, case.advert.counter) == case.hmac_input
    assert wire.digest(case.password, case.vhid, case.vip, case.advert.counter) == \
        case.advert.digest


def test_multicast_mac_of_the_default_group() -> None:
    assert wire.multicast_mac(wire.DEFAULT_GROUP) == bytes.fromhex("01005e000012")
    assert wire.multicast_mac(IPv4Address("239.200.1.2")) == bytes.fromhex("01005e480102")


def test_ucarp_source_mac_has_00_in_the_fifth_byte() -> None:
    assert wire.ucarp_source_mac(7) == bytes.fromhex("00005e000007")


@pytest.mark.parametrize("case", ARP_CASES, ids=[c.name for c in ARP_CASES])
def test_gratuitous_arp_gives_the_captured_frame(case: ArpCase) -> None:
    assert wire.encode_gratuitous_arp(case.mac, case.address).hex() == case.frame.hex()


def test_internet_checksum_pads_odd_lengths() -> None:
    assert wire.internet_checksum(b"\x01") == wire.internet_checksum(b"\x01\x00") == 0xFEFF
    assert wire.internet_checksum(b"") == 0xFFFF


# ---- decoder ----------------------------------------------------------------------------------


@carp_table
def test_decode_carp_gives_the_captured_fields(case: CarpCase) -> None:
    assert wire.decode_carp(case.carp) == case.advert


@carp_table
def test_inspect_accepts_the_captured_packet(case: CarpCase) -> None:
    assert wire.inspect(case.ip_packet, case.expect()) == wire.Received(case.advert, case.source)


@carp_table
def test_strip_ethernet_gives_the_captured_ip_packet(case: CarpCase) -> None:
    assert wire.strip_ethernet(case.frame, case.group) == case.ip_packet


def test_strip_ethernet_accepts_broadcast_frames_of_nomcast_mode() -> None:
    case = CARP_CASES[0]
    frame = wire.BROADCAST_MAC + case.frame[6:]
    assert wire.strip_ethernet(frame, case.group) == case.ip_packet


def test_strip_ethernet_drops_ethernet_padding() -> None:
    case = CARP_CASES[0]
    assert wire.strip_ethernet(case.frame + bytes(8), case.group) == case.ip_packet


def test_inspect_accepts_trailing_bytes_after_the_carp_header() -> None:
    case = CARP_CASES[0]
    assert isinstance(wire.inspect(case.ip_packet + bytes(4), case.expect()), wire.Received)


# ---- corruption: every single-byte change is rejected ----------------------------------------


@carp_table
@pytest.mark.parametrize("mask", CORRUPTION_MASKS, ids=[f"xor{m:02x}" for m in CORRUPTION_MASKS])
def test_inspect_rejects_every_single_byte_corruption(case: CarpCase, mask: int) -> None:
    accepted = []
    for offset in range(len(case.ip_packet)):
        damaged = with_byte(case.ip_packet, offset, case.ip_packet[offset] ^ mask)
        if not isinstance(wire.inspect(damaged, case.expect()), wire.Reject):
            accepted.append(offset)
    assert accepted == [], f"bytes accepted after corruption with XOR {mask:#04x}: {accepted}"


@carp_table
@pytest.mark.parametrize("mask", CORRUPTION_MASKS, ids=[f"xor{m:02x}" for m in CORRUPTION_MASKS])
def test_strip_ethernet_rejects_corrupt_destination_or_ethertype(case: CarpCase, mask: int) -> None:
    for offset in [*ETHERNET_DESTINATION, *ETHERTYPE]:
        damaged = with_byte(case.frame, offset, case.frame[offset] ^ mask)
        assert wire.strip_ethernet(damaged, case.group) is None, f"byte {offset} not checked"


@carp_table
def test_strip_ethernet_ignores_the_ethernet_source(case: CarpCase) -> None:
    # Deliberately not checked: ucarp spoofs 00:00:5e:00:00:<vhid>, we send the NIC's own MAC by
    # default, and either must be accepted.
    for offset in ETHERNET_SOURCE:
        for mask in CORRUPTION_MASKS:
            changed = with_byte(case.frame, offset, case.frame[offset] ^ mask)
            assert wire.strip_ethernet(changed, case.group) == case.ip_packet


# ---- one test per reject reason ---------------------------------------------------------------

CASE = CARP_CASES[0]
PACKET = CASE.ip_packet
TTL, PROTOCOL, DESTINATION = 8, 9, slice(16, 20)
CARP = wire.IP_HEADER_LEN


def test_packet_shorter_than_an_ip_header_is_rejected_as_short() -> None:
    assert wire.inspect(PACKET[:19], CASE.expect()) is wire.Reject.SHORT


def test_packet_cut_inside_the_carp_header_is_rejected_as_short() -> None:
    assert wire.inspect(PACKET[:55], CASE.expect()) is wire.Reject.SHORT


def test_ip_header_length_below_20_is_rejected_as_short() -> None:
    assert wire.inspect(with_byte(PACKET, 0, 0x44), CASE.expect()) is wire.Reject.SHORT


def test_ipv6_packet_is_rejected_as_not_ipv4() -> None:
    assert wire.inspect(with_byte(PACKET, 0, 0x65), CASE.expect()) is wire.Reject.NOT_IPV4


def test_other_protocol_is_rejected_as_not_carp() -> None:
    vrrp = with_ip_checksum(with_byte(PACKET, PROTOCOL, 112 ^ 0xFF))
    assert wire.inspect(vrrp, CASE.expect()) is wire.Reject.NOT_CARP


def test_our_own_advert_is_rejected_as_own() -> None:
    assert wire.inspect(PACKET, CASE.expect(source=CASE.source)) is wire.Reject.OWN


def test_ttl_below_255_is_rejected_as_bad_ttl() -> None:
    routed = with_ip_checksum(with_byte(PACKET, TTL, 254))
    assert wire.inspect(routed, CASE.expect()) is wire.Reject.BAD_TTL


def test_ttl_is_checked_before_the_checksum_as_ucarp_does() -> None:
    assert wire.inspect(with_byte(PACKET, TTL, 64), CASE.expect()) is wire.Reject.BAD_TTL


def test_carp_version_other_than_2_is_rejected_as_bad_version() -> None:
    version3 = with_carp_checksum(with_byte(PACKET, CARP, 0x31))
    assert wire.inspect(version3, CASE.expect()) is wire.Reject.BAD_VERSION


def test_other_vhid_is_rejected_as_other_vhid() -> None:
    assert wire.inspect(PACKET, CASE.expect(vhid=2)) is wire.Reject.OTHER_VHID


def test_damaged_advert_of_another_vhid_is_still_only_another_vhid() -> None:
    damaged = with_byte(PACKET, 4, PACKET[4] ^ 0xFF)  # the IP id: the IP header checksum fails
    damaged = with_byte(damaged, CARP + 20, PACKET[CARP + 20] ^ 0xFF)  # and the CARP checksum
    assert wire.inspect(damaged, CASE.expect(vhid=2)) is wire.Reject.OTHER_VHID


def test_destination_other_than_the_group_is_rejected_as_bad_destination() -> None:
    assert wire.inspect(PACKET, CASE.expect(group=IPv4Address("224.0.0.19"))) \
        is wire.Reject.BAD_DESTINATION


def test_unicast_destination_is_rejected_as_bad_destination() -> None:
    unicast = PACKET[:16] + RECEIVER.packed + PACKET[20:]
    assert wire.inspect(with_ip_checksum(unicast), CASE.expect()) is wire.Reject.BAD_DESTINATION


def test_wrong_carp_checksum_is_rejected_as_bad_checksum() -> None:
    damaged = with_byte(PACKET, CARP + 6, PACKET[CARP + 6] ^ 0x01)
    assert wire.inspect(damaged, CASE.expect()) is wire.Reject.BAD_CHECKSUM


def test_wrong_ip_header_checksum_is_rejected_as_bad_checksum() -> None:
    damaged = with_byte(PACKET, 10, PACKET[10] ^ 0x01)
    assert wire.inspect(damaged, CASE.expect()) is wire.Reject.BAD_CHECKSUM


def test_wrong_password_is_rejected_as_bad_hmac() -> None:
    assert wire.inspect(PACKET, CASE.expect(key=b"secreT")) is wire.Reject.BAD_HMAC


def test_wrong_vip_is_rejected_as_bad_hmac() -> None:
    assert wire.inspect(PACKET, CASE.expect(vip=IPv4Address("10.99.0.101"))) \
        is wire.Reject.BAD_HMAC


def test_changed_counter_is_rejected_as_bad_hmac() -> None:
    forged = with_carp_checksum(with_byte(PACKET, CARP + 15, PACKET[CARP + 15] ^ 0x01))
    assert wire.inspect(forged, CASE.expect()) is wire.Reject.BAD_HMAC


def test_every_reject_reason_has_a_test_above() -> None:
    tested = {
        wire.Reject.SHORT, wire.Reject.NOT_IPV4, wire.Reject.NOT_CARP, wire.Reject.OWN,
        wire.Reject.BAD_TTL, wire.Reject.BAD_VERSION, wire.Reject.OTHER_VHID,
        wire.Reject.BAD_DESTINATION, wire.Reject.BAD_CHECKSUM, wire.Reject.BAD_HMAC,
    }
    # The election decides these two (tests/unit/test_election.py: replay check, rate limits).
    decided_by_the_election = {wire.Reject.STALE, wire.Reject.RATE_LIMITED}
    assert tested | decided_by_the_election == set(wire.Reject)


# ---- what ucarp does not check (documented weaknesses we must interoperate with) -------------


@pytest.mark.parametrize(
    ("offset", "value"),
    [(CARP + 2, 200), (CARP + 5, 9)],
    ids=["advskew", "advbase"],
)
def test_advbase_and_advskew_are_not_authenticated(offset: int, value: int) -> None:
    forged = with_carp_checksum(with_byte(PACKET, offset, value))
    result = wire.inspect(forged, CASE.expect())
    assert isinstance(result, wire.Received)
    assert result.advert == wire.decode_carp(forged[CARP:])


@pytest.mark.parametrize(
    ("offset", "value"),
    [(CARP, 0x22), (CARP + 3, 0), (CARP + 4, 5)],
    ids=["type", "authlen", "pad"],
)
def test_type_authlen_and_pad_are_not_checked(offset: int, value: int) -> None:
    changed = with_carp_checksum(with_byte(PACKET, offset, value))
    assert isinstance(wire.inspect(changed, CASE.expect()), wire.Received)


def test_replayed_counter_passes_the_wire_checks_like_ucarp() -> None:
    # The packet checks alone cannot spot a replay: the election's counter check does.
    assert isinstance(wire.inspect(PACKET, CASE.expect()), wire.Received)
    assert isinstance(wire.inspect(PACKET, CASE.expect()), wire.Received)


@pytest.mark.parametrize(
    ("counter", "than", "newer"),
    [(2, 1, True), (1, 1, False), (1, 2, False), (0, 2**64 - 1, True), (2**64 - 1, 0, False),
     (2**63 - 1, 0, True), (2**63, 0, False)],
)
def test_counter_order_is_serial_number_arithmetic(counter: int, than: int, newer: bool) -> None:
    assert wire.counter_newer(counter, than) is newer


# ---- constant-time digest comparison ----------------------------------------------------------


def test_digest_is_compared_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    verdict = {"equal": True}

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return verdict["equal"]

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the function carpd.core.wire calls
    wrong_key = CASE.expect(key=b"not the password")
    # The verdict comes from compare_digest alone: a wrong digest it calls equal is accepted...
    assert isinstance(wire.inspect(PACKET, wrong_key), wire.Received)
    # ...and the right digest it calls different is rejected.
    verdict["equal"] = False
    assert wire.inspect(PACKET, CASE.expect()) is wire.Reject.BAD_HMAC
    assert len(calls) == 2
    assert CASE.advert.digest in calls[1]


# ---- fuzzing: nothing raises --------------------------------------------------------------------

def test_inspect_and_strip_ethernet_never_raise_on_random_or_mangled_input() -> None:
    outcomes: set[object] = set()
    expect = CASE.expect()
    for data in fuzz_inputs(random.Random(FUZZ_SEED), CARP_CASES, 4000):
        result = wire.inspect(data, expect)
        assert isinstance(result, wire.Received | wire.Reject)
        outcomes.add(result if isinstance(result, wire.Reject) else "accepted")
        stripped = wire.strip_ethernet(data)
        assert stripped is None or isinstance(stripped, bytes)
        if stripped is not None:
            assert isinstance(wire.inspect(stripped, expect), wire.Received | wire.Reject)
    # The fuzzer reaches deep into the pipeline, not just the first length check.
    assert {wire.Reject.SHORT, wire.Reject.BAD_CHECKSUM, wire.Reject.BAD_HMAC} <= outcomes


def test_decode_carp_of_any_36_bytes_never_raises() -> None:
    rng = random.Random(FUZZ_SEED)
    for _ in range(2000):
        advert = wire.decode_carp(rng.randbytes(36))
        assert 0 <= advert.interval_ticks <= 255 * 256 + 255
