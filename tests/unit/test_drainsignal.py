"""The "still draining" signal (carpd.core.drainsignal): encoding, authentication, replays, and the
new MASTER's forwarding ending on "drained" or on silence, with a fake clock."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from carpd.core import drainsignal
from carpd.core.drainsignal import Beacon, Kind, Reject, Signal, Watch, decode, derive_key, encode

VIP = IPv4Address("10.9.1.100")
OLD = IPv4Address("10.9.1.1")
OTHER = IPv4Address("10.9.1.3")
KEY = derive_key(b"s3cret-pass")
HANDOVER = 0x1122334455667788
SIGNAL = Signal(1, VIP, OLD, HANDOVER, 5, Kind.DRAINING, connections=12, left_ms=29_000)


def test_a_signal_survives_encoding_and_decoding() -> None:
    data = encode(SIGNAL, KEY)
    assert len(data) == drainsignal.SIZE
    assert data.startswith(b"CARPDRN1")
    assert decode(data, KEY) == SIGNAL


@pytest.mark.parametrize("offset", range(0, drainsignal.SIZE, 7))
def test_any_changed_byte_is_rejected(offset: int) -> None:
    data = bytearray(encode(SIGNAL, KEY))
    data[offset] ^= 0x01
    assert decode(bytes(data), KEY) in (Reject.MAGIC, Reject.DIGEST)


def test_another_password_is_rejected() -> None:
    assert decode(encode(SIGNAL, derive_key(b"other")), KEY) is Reject.DIGEST


def test_a_datagram_of_another_size_is_rejected() -> None:
    data = encode(SIGNAL, KEY)
    assert decode(data[:-1], KEY) is Reject.SHORT
    assert decode(data + b"\0", KEY) is Reject.SHORT


def test_the_key_is_not_the_password_used_by_carp_adverts() -> None:
    assert KEY != b"s3cret-pass" and len(KEY) == 32


def watching(now: float = 100.0) -> Watch:
    watch = Watch(1, VIP, KEY)
    watch.start(OLD, HANDOVER, now)
    return watch


def test_forwarding_lasts_as_long_as_the_old_master_says_it_drains() -> None:
    watch = watching()
    for n in range(1, 41):  # ten seconds of signals
        now = 100.0 + n * drainsignal.INTERVAL
        assert not watch.handle_timer(now)
        assert watch.receive(encode(replace(SIGNAL, sequence=n), KEY), OLD, now) != Reject.STALE
    assert watch.forwarding
    assert watch.last is not None and watch.last.connections == 12


def test_drained_ends_forwarding_at_once() -> None:
    watch = watching()
    taken = watch.receive(encode(replace(SIGNAL, kind=Kind.DRAINED), KEY), OLD, 100.1)
    assert isinstance(taken, Signal)
    assert not watch.forwarding
    assert watch.next_deadline() is None


def test_silence_ends_forwarding_within_a_second_of_the_last_signal() -> None:
    watch = watching()
    watch.receive(encode(SIGNAL, KEY), OLD, 100.2)
    assert not watch.handle_timer(100.2 + drainsignal.SILENCE - 0.01)
    assert watch.handle_timer(100.2 + drainsignal.SILENCE)
    assert drainsignal.SILENCE <= 1.0
    assert not watch.forwarding


def test_a_replayed_or_older_signal_is_stale_and_extends_nothing() -> None:
    watch = watching()
    data = encode(SIGNAL, KEY)
    assert isinstance(watch.receive(data, OLD, 100.1), Signal)
    assert watch.receive(data, OLD, 100.5) is Reject.STALE
    assert watch.receive(encode(replace(SIGNAL, sequence=4), KEY), OLD, 100.5) is Reject.STALE
    assert watch.handle_timer(100.1 + drainsignal.SILENCE)


def test_a_signal_of_another_hand_over_is_ignored() -> None:
    watch = watching()
    earlier = encode(replace(SIGNAL, handover=HANDOVER - 1, sequence=99), KEY)
    assert watch.receive(earlier, OLD, 100.1) is Reject.OTHER_HANDOVER


def test_only_the_old_master_speaks_for_its_drain() -> None:
    watch = watching()
    assert watch.receive(encode(SIGNAL, KEY), OTHER, 100.1) is Reject.OTHER_SENDER
    forged_sender = encode(replace(SIGNAL, sender=OTHER), KEY)
    assert watch.receive(forged_sender, OTHER, 100.1) is Reject.OTHER_SENDER


def test_a_signal_for_another_group_is_ignored() -> None:
    watch = watching()
    assert watch.receive(encode(replace(SIGNAL, vhid=2), KEY), OLD, 100.1) is \
        Reject.OTHER_GROUP
    assert watch.receive(encode(replace(SIGNAL, vip=OTHER), KEY), OLD, 100.1) is \
        Reject.OTHER_GROUP


def test_signals_while_not_forwarding_change_nothing() -> None:
    watch = Watch(1, VIP, KEY)
    assert watch.receive(encode(SIGNAL, KEY), OLD, 100.0) is Reject.NOT_FORWARDING
    assert not watch.forwarding


def test_a_beacon_and_a_watch_together_forward_for_the_drain_then_stop() -> None:
    beacon, watch = Beacon(1, VIP, OLD, KEY), watching(0.0)
    beacon.start(HANDOVER, 0.0)
    now, sent = 0.0, 0
    while now < 30.0:  # a 30 s drain
        data = beacon.due(now, connections=3, left=30.0 - now)
        if data is not None:
            sent += 1
            watch.receive(data, OLD, now)
        assert not watch.handle_timer(now) and watch.forwarding
        now += 0.01
    beacon.finish(now)
    while (data := beacon.due(now)) is not None or beacon.next_deadline() is not None:
        if data is not None:
            watch.receive(data, OLD, now)
        now += 0.01
    assert not watch.forwarding
    assert sent == pytest.approx(30.0 / drainsignal.INTERVAL, abs=2)


def test_a_lost_drained_signal_is_repeated() -> None:
    beacon = Beacon(1, VIP, OLD, KEY)
    beacon.start(HANDOVER, 0.0)
    beacon.due(0.0)
    beacon.finish(1.0)
    kinds = []
    now = 1.0
    while beacon.next_deadline() is not None:
        data = beacon.due(now)
        if data is not None:
            signal = decode(data, KEY)
            assert isinstance(signal, Signal)
            kinds.append(signal.kind)
        now += 0.01
    assert kinds == [Kind.DRAINED] * drainsignal.DRAINED_REPEATS


def test_a_beacon_that_never_started_sends_nothing() -> None:
    beacon = Beacon(1, VIP, OLD, KEY)
    beacon.finish(0.0)
    assert beacon.due(0.0) is None and beacon.next_deadline() is None


def test_the_first_signal_may_name_a_later_advert_of_the_old_master_but_not_an_earlier() -> None:
    watch = watching()
    later = encode(replace(SIGNAL, handover=HANDOVER + 1), KEY)
    assert isinstance(watch.receive(later, OLD, 100.1), Signal)
    again = encode(replace(SIGNAL, handover=HANDOVER + 2, sequence=6), KEY)
    assert watch.receive(again, OLD, 100.2) is Reject.OTHER_HANDOVER
