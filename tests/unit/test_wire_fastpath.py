"""carpd.core.wire.AdvertFrames, the send path's encoder, against the reference encoder and the
frames captured from ucarp 1.5.2: not one byte may differ."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest
from frames import CarpCase, carp_cases

from carpd.core import wire

CARP_CASES = carp_cases()
RANDOM_FRAMES = 5000
SEED = 20261202


def reference_frame(advert: wire.Advert, key: bytes, vip: IPv4Address, source: IPv4Address,
                    group: IPv4Address, ident: int, destination_mac: bytes,
                    source_mac: bytes) -> bytes:
    packet = wire.encode_packet(advert, key, vip, source, ident, group)
    return wire.encode_ethernet(destination_mac, source_mac, wire.ETH_P_IP, packet)


@pytest.mark.parametrize("case", CARP_CASES, ids=[c.name for c in CARP_CASES])
def test_fast_encoder_rebuilds_every_captured_ucarp_frame(case: CarpCase) -> None:
    frames = wire.AdvertFrames(case.password, case.vip, case.source, case.group,
                               wire.multicast_mac(case.group), wire.ucarp_source_mac(case.vhid))
    unsigned = wire.Advert(case.vhid, case.advert.advbase, case.advert.advskew,
                           case.advert.counter)
    assert frames.frame(unsigned, case.ident).hex() == case.frame.hex()


def random_address(rng: random.Random) -> IPv4Address:
    return IPv4Address(rng.getrandbits(32))


def test_fast_encoder_equals_the_reference_encoder_over_random_parameters() -> None:
    rng = random.Random(SEED)
    for _ in range(RANDOM_FRAMES):
        key = rng.randbytes(rng.randint(0, wire.MAX_PASSWORD_BYTES))
        vip, source = random_address(rng), random_address(rng)
        group = rng.choice([wire.DEFAULT_GROUP, random_address(rng)])
        macs = (rng.randbytes(6), rng.randbytes(6))
        advert = wire.Advert(rng.randint(1, 255), rng.randint(0, 255), rng.randint(0, 255),
                             rng.getrandbits(64))
        ident = rng.getrandbits(rng.choice([16, 17, 32]))  # the identification keeps 16 bits
        frames = wire.AdvertFrames(key, vip, source, group, *macs)
        expected = reference_frame(advert, key, vip, source, group, ident, *macs)
        assert frames.frame(advert, ident).hex() == expected.hex(), (key, advert, ident)


@pytest.mark.parametrize("counter", [0, 1, 0xFFFF, 0xFFFF_FFFF, wire.COUNTER_MODULUS - 1])
@pytest.mark.parametrize("ident", [0, 1, 0xFFFE, 0xFFFF])
def test_fast_encoder_equals_the_reference_at_the_edges_of_counter_and_ident(
        counter: int, ident: int) -> None:
    key, vip, source = b"s3cret-pass", IPv4Address("10.0.0.1"), IPv4Address("255.255.255.255")
    macs = (b"\xff" * 6, b"\x00" * 6)
    for advbase, advskew in ((0, 1), (1, 0), (wire.BOW_OUT, wire.BOW_OUT), (255, 254)):
        advert = wire.Advert(255, advbase, advskew, counter)
        frames = wire.AdvertFrames(key, vip, source, wire.DEFAULT_GROUP, *macs)
        expected = reference_frame(advert, key, vip, source, wire.DEFAULT_GROUP, ident, *macs)
        assert frames.frame(advert, ident) == expected


def test_checksums_whose_word_sum_is_a_multiple_of_0xffff_come_out_as_zero() -> None:
    """The one case where folding differs from a plain remainder: a sum that is a non-zero
    multiple of 0xFFFF folds to 0xFFFF, so the checksum is 0, never 0xFFFF."""
    rng = random.Random(SEED)
    data = rng.randbytes(34)
    last = (-sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, 34, 2))) % 0xFFFF
    data += last.to_bytes(2, "big")
    assert wire.internet_checksum(data) == 0
    assert wire._folded_complement(int.from_bytes(data, "big")) == 0
