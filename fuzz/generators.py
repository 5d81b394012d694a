"""The frames the fuzzer drives through carpd.core.wire and carpd.core.election,
one generator per kind.

Every generator returns raw bytes: an IPv4 packet (what ``VirtualHost.receive`` takes) or, for a
share of them, a whole Ethernet frame that goes through ``wire.strip_ethernet`` first.  Valid
adverts are signed with the cluster's key, so they reach the election; the others stop at some
receive check, which is the point: every check sees inputs on both of its sides.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from carpd.core import wire

KEY = b"fuzz-secret"
VIP = IPv4Address("10.99.0.100")
GROUP = wire.DEFAULT_GROUP
VHIDS = (1, 255)
"""The cluster's vhid and a lone host's: the two ends of the vhid range."""
POOL_SIZE = 512
"""How many earlier valid frames the replay generator picks from."""
HALF = wire.COUNTER_MODULUS // 2
EXTREME_OCTETS = (0, 1, 127, 128, 254, 255)
EXTREME_COUNTERS = (0, 1, HALF - 1, HALF, HALF + 1, wire.COUNTER_MODULUS - 1)
NEAR_NEWEST = (-(1 << 32) - 1, -(1 << 32), -257, -256, -1, 0, 1, 2, HALF - 1, HALF, HALF + 1)
"""Offsets from a host's newest counter: the edges of the replay check and of keep-alives."""


@dataclass(frozen=True)
class Frame:
    data: bytes
    ethernet: bool
    generator: str


@dataclass
class FakePeer:
    """A node we do not run: it sends valid adverts, counting up (or ucarp's random counters)."""

    address: IPv4Address
    vhid: int
    advbase: int
    advskew: int
    counter: int
    lone_ucarp: bool = False
    leads: bool = False
    """Counts past every counter heard: its adverts are fresh to every host."""

    def next_advert(self, rng: random.Random, heard: list[int]) -> wire.Advert:
        """Counting up, or past a counter heard on the link, as a node that follows the cluster."""
        if self.lone_ucarp:
            self.counter = rng.getrandbits(64)
        elif self.leads:
            self.counter = (self.counter + 1) % wire.COUNTER_MODULUS
            for counter in heard:
                if not wire.counter_newer(self.counter, counter):
                    self.counter = (counter + 1) % wire.COUNTER_MODULUS
        elif heard and rng.random() < 0.5:
            self.counter = (rng.choice(heard) + rng.randint(1, 3)) % wire.COUNTER_MODULUS
        else:
            self.counter = (self.counter + 1) % wire.COUNTER_MODULUS
        if rng.random() < 0.02:
            return wire.Advert(self.vhid, wire.BOW_OUT, wire.BOW_OUT, self.counter)
        return wire.Advert(self.vhid, self.advbase, self.advskew, self.counter)


def packet(advert: wire.Advert, source: IPv4Address, ident: int = 0,
           vip: IPv4Address = VIP) -> bytes:
    return wire.encode_packet(advert, KEY, vip, source, ident, GROUP)


def ethernet(ip_packet: bytes, rng: random.Random) -> bytes:
    destination = rng.choice((wire.multicast_mac(GROUP), wire.BROADCAST_MAC, rng.randbytes(6)))
    ethertype = wire.ETH_P_IP if rng.random() < 0.9 else rng.choice((wire.ETH_P_ARP, 0x86DD))
    return wire.encode_ethernet(destination, rng.randbytes(6), ethertype, ip_packet)


def fix_checksums(data: bytes) -> bytes:
    """Both checksums recomputed where the layout allows, to get past them to the deeper checks."""
    if len(data) < wire.IP_HEADER_LEN:
        return data
    ihl = (data[0] & 0x0F) * 4
    if ihl < wire.IP_HEADER_LEN or len(data) < ihl + wire.CARP_HEADER_LEN:
        return data
    header, carp = bytearray(data[:ihl]), bytearray(data[ihl : ihl + wire.CARP_HEADER_LEN])
    header[10:12] = carp[6:8] = b"\0\0"
    header[10:12] = wire.internet_checksum(bytes(header)).to_bytes(2, "big")
    carp[6:8] = wire.internet_checksum(bytes(carp)).to_bytes(2, "big")
    return bytes(header) + bytes(carp) + data[ihl + wire.CARP_HEADER_LEN :]


def with_fields(data: bytes, **offsets: int) -> bytes:
    """``data`` with single bytes set, named ``o<offset>=value``."""
    buffer = bytearray(data)
    for name, value in offsets.items():
        buffer[int(name[1:])] = value
    return bytes(buffer)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Bit flips, byte sets (0, 255 or random), a few inserted or deleted bytes."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buffer:
            break
        at = rng.randrange(len(buffer))
        choice = rng.randrange(4)
        if choice == 0:
            buffer[at] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buffer[at] = rng.choice((0, 0xFF, rng.randrange(256)))
        elif choice == 2:
            buffer[at:at] = rng.randbytes(rng.randint(1, 4))
        else:
            del buffer[at : at + rng.randint(1, 4)]
    return bytes(buffer)


class FrameSource:
    """Draws the next frame from one of the generators, in fixed proportions.

    ``newest`` gives the newest counters the hosts know (the replay check's edge); frames the
    hosts themselves sent come in through :meth:`heard` and become material for replays.
    """

    def __init__(self, rng: random.Random, sources: list[IPv4Address],
                 newest: Callable[[], list[int]]) -> None:
        self.rng = rng
        self.sources = sources
        self.newest = newest
        self.peers = [self._peer(i) for i in range(8)]
        self.flappers = (FakePeer(IPv4Address("10.99.0.60"), VHIDS[0], 0, 1, 0, leads=True),
                         FakePeer(IPv4Address("10.99.0.61"), VHIDS[0], 3, 0, 0, leads=True))
        self.pool: deque[bytes] = deque(maxlen=POOL_SIZE)
        self.outbox: deque[bytes] = deque(maxlen=32)
        self.burst = 0
        self.generators: list[tuple[str, Callable[[], bytes], float]] = [
            ("random bytes", self.random_bytes, 0.10),
            ("mutated advert", self.mutated, 0.20),
            ("truncated", self.truncated, 0.10),
            ("extreme fields", self.extreme, 0.20),
            ("replay", self.replay, 0.20),
            ("fresh advert", self.fresh, 0.195),
            ("flapping", self.start_flapping, 0.005),
        ]
        self._weights = [w for _, _, w in self.generators]

    def _peer(self, index: int) -> FakePeer:
        rng = self.rng
        vhid = VHIDS[index % 2] if index < 6 else VHIDS[0]
        return FakePeer(IPv4Address(f"10.99.0.{50 + index}"), vhid, rng.choice((0, 1, 1, 2)),
                        rng.choice((0, 1, 30, 100, 254, 255)), rng.getrandbits(64),
                        lone_ucarp=index == 7)

    def heard(self, data: bytes) -> None:
        """A frame a host sent: delivered as the next frame, kept for replays."""
        self.outbox.append(data)
        self.pool.append(data)

    def next(self) -> Frame:
        rng = self.rng
        if self.burst:
            self.burst -= 1
            return Frame(self.flapping(), False, "flapping")
        if self.outbox and rng.random() < 0.3:
            return Frame(self.outbox.popleft(), False, "hosts' own adverts")
        name, generate, _ = rng.choices(self.generators, self._weights)[0]
        data = generate()
        if rng.random() < 0.15:
            return Frame(ethernet(data, rng), True, name)
        return Frame(data, False, name)

    # ---- the generators ---------------------------------------------------------------------

    def random_bytes(self) -> bytes:
        rng = self.rng
        data = rng.randbytes(rng.randint(0, 120))
        if data and rng.random() < 0.5:  # an IPv4 header carrying CARP: get past the first checks
            data = with_fields(data.ljust(20, b"\0"), o0=0x45, o8=255, o9=wire.CARP_PROTO)
        return data

    def valid(self, peer: FakePeer | None = None) -> bytes:
        peer = peer or self.rng.choice(self.peers)
        advert = peer.next_advert(self.rng, self.newest())
        data = packet(advert, peer.address, self.rng.randrange(1 << 16))
        self.pool.append(data)
        return data

    def mutated(self) -> bytes:
        rng = self.rng
        base = rng.choice(self.pool) if self.pool and rng.random() < 0.5 else self.valid()
        data = mutate(rng, base)
        return fix_checksums(data) if rng.random() < 0.5 else data

    def truncated(self) -> bytes:
        rng = self.rng
        base = self.valid()
        if rng.random() < 0.3:  # the IPv4 total length lies instead
            total = rng.choice((0, 1, 20, 55, 57, 0xFFFF))
            return fix_checksums(base[:2] + total.to_bytes(2, "big") + base[4:])
        return base[: rng.randrange(len(base))]

    def extreme(self) -> bytes:
        rng = self.rng
        advert = wire.Advert(
            vhid=rng.choice((0, 1, 1, 254, 255, 255)),
            advbase=rng.choice(EXTREME_OCTETS), advskew=rng.choice(EXTREME_OCTETS),
            counter=self._extreme_counter(),
            version=rng.choice((2, 2, 2, 2, 0, 1, 3, 15)), type=rng.choice((1, 1, 1, 0, 15)),
            authlen=rng.choice((7, 7, 0, 255)), pad=rng.choice((0, 0, 255)),
        )
        source = rng.choice([*self.sources, IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255"),
                             rng.choice(self.peers).address])
        data = packet(advert, source, rng.choice((0, 0xFFFF)))
        return self._extreme_header(data) if rng.random() < 0.3 else data

    def _extreme_counter(self) -> int:
        rng = self.rng
        newest = self.newest()
        if newest and rng.random() < 0.6:
            return (rng.choice(newest) + rng.choice(NEAR_NEWEST)) % wire.COUNTER_MODULUS
        return rng.choice(EXTREME_COUNTERS)

    def _extreme_header(self, data: bytes) -> bytes:
        """TTL, header length, version and destination at their ends, checksums fixed."""
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            data = with_fields(data, o8=rng.choice((0, 1, 254)))
        elif choice == 1:  # IP options: a longer header (up to 60 bytes), or a bad length
            words = rng.choice((0, 4, 6, 15))
            options = bytes((words - 5) * 4) if words > 5 else b""
            data = bytes([0x40 | words]) + data[1:20] + options + data[20:]
        elif choice == 2:
            data = with_fields(data, o0=rng.choice((0x05, 0xF5, 0x65)))
        else:
            data = data[:16] + rng.choice((b"\xe0\0\0\x12", b"\xff\xff\xff\xff")) + data[20:]
        return fix_checksums(data)

    def replay(self) -> bytes:
        rng = self.rng
        if not self.pool:
            return self.valid()
        data = rng.choice(self.pool)
        if rng.random() < 0.5:
            return data
        return fix_checksums(self._change_unauthenticated(data))

    def _change_unauthenticated(self, data: bytes) -> bytes:
        """What the HMAC does not cover: source, advbase, advskew, TTL, ident."""
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            source = rng.choice([*self.sources, *(p.address for p in self.peers)])
            return data[:12] + source.packed + data[16:]
        if choice == 1:
            return with_fields(data, o22=255, o25=255)  # advskew, advbase: a bow-out
        if choice == 2:
            return with_fields(data, o22=rng.randrange(256), o25=rng.randrange(256))
        return with_fields(data, o4=rng.randrange(256), o5=rng.randrange(256))

    def fresh(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.05:  # a peer changes its timing
            peer = rng.choice(self.peers)
            peer.advbase, peer.advskew = rng.choice((0, 1, 2)), rng.randrange(256)
            if peer.advbase == 0 and peer.advskew == 0:
                peer.advskew = 1
        return self.valid()

    def flapping(self) -> bytes:
        """A fast and a slow master in turn, fresh counters, at one instant (the clock stands
        still for these): without the rate limit each would move the hosts."""
        self.flappers = (self.flappers[1], self.flappers[0])
        return self.valid(self.flappers[0])

    def start_flapping(self) -> bytes:
        self.burst = self.rng.randint(4, 16)
        return self.flapping()
