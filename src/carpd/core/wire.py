"""CARP on the wire, exactly as ucarp 1.5.2 speaks it: encoding, decoding, the receive checks.

Pure functions over bytes: no sockets, no clock.  The layout is in ``../shared/spec/wire.md``:
a 20-byte IPv4 header (TTL 255, protocol 112) followed by a 36-byte CARP header whose last
20 bytes are HMAC-SHA1(password, 0x02 0x01 vhid vip counter).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

CARP_PROTO = 112
CARP_VERSION = 2
CARP_TYPE_ADVERTISEMENT = 1
CARP_AUTHLEN = 7
CARP_TTL = 255
CARP_HEADER_LEN = 36
IP_HEADER_LEN = 20
IP_TOS_LOWDELAY = 0x10
IP_FLAG_DF = 0x4000
DEFAULT_GROUP = IPv4Address("224.0.0.18")
BOW_OUT = 255  # advbase and advskew of a bow-out advert: "I am about to stop, take over"
MAX_PASSWORD_BYTES = 19

_CARP = struct.Struct("!BBBBBBH8s20s")
_IP = struct.Struct("!BBHHHBBH4s4s")
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6


@dataclass(frozen=True)
class Advert:
    """The fields of one CARP advertisement."""

    vhid: int
    advbase: int
    advskew: int
    counter: int
    digest: bytes = b""
    version: int = CARP_VERSION
    type: int = CARP_TYPE_ADVERTISEMENT
    authlen: int = CARP_AUTHLEN
    pad: int = 0

    @property
    def interval_ticks(self) -> int:
        """The advertised interval in 1/256 s, the unit in which intervals are compared."""
        return self.advbase * 256 + self.advskew


@dataclass(frozen=True)
class Received:
    """An advert that passed every receive check, with the address it came from."""

    advert: Advert
    source: IPv4Address


class Reject(enum.Enum):
    """Why a received packet was dropped; each reason has its own counter."""

    SHORT = "too short"
    NOT_IPV4 = "not IPv4"
    NOT_CARP = "not protocol 112"
    OWN = "our own advert"
    BAD_TTL = "TTL is not 255"
    BAD_VERSION = "CARP version is not 2"
    OTHER_VHID = "another vhid"
    BAD_DESTINATION = "destination is not the group"
    BAD_CHECKSUM = "bad checksum"
    BAD_HMAC = "bad HMAC (wrong password?)"
    STALE = "stale counter (a replayed advert?)"
    RATE_LIMITED = "transition rate limit reached"


COUNTER_MODULUS = 1 << 64


def counter_newer(counter: int, than: int) -> bool:
    """Serial-number order (RFC 1982) on the 64-bit counter: ``counter`` lies in the half of
    the circle after ``than``.  A counter that wraps past 2**64 - 1 to 0 still counts up."""
    distance = (counter - than) % COUNTER_MODULUS
    return 0 < distance < COUNTER_MODULUS // 2


def counter_behind(counter: int, than: int) -> int:
    """How far ``counter`` lies behind ``than`` on the circle."""
    return (than - counter) % COUNTER_MODULUS


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def hmac_input(vhid: int, vip: IPv4Address, counter: int) -> bytes:
    """The 15 bytes ucarp authenticates: version, type, vhid, VIP, counter."""
    header = bytes([CARP_VERSION, CARP_TYPE_ADVERTISEMENT, vhid])
    return header + vip.packed + counter.to_bytes(8, "big")


def digest(key: bytes, vhid: int, vip: IPv4Address, counter: int) -> bytes:
    return hmac.new(key, hmac_input(vhid, vip, counter), hashlib.sha1).digest()


def encode_carp(advert: Advert, key: bytes, vip: IPv4Address) -> bytes:
    """The 36-byte CARP header for ``advert``, signed with ``key``."""
    md = digest(key, advert.vhid, vip, advert.counter)
    fields = (
        (advert.version << 4) | advert.type,
        advert.vhid,
        advert.advskew,
        advert.authlen,
        advert.pad,
        advert.advbase,
    )
    counter = advert.counter.to_bytes(8, "big")
    unsummed = _CARP.pack(*fields, 0, counter, md)
    return _CARP.pack(*fields, internet_checksum(unsummed), counter, md)


def decode_carp(data: bytes) -> Advert:
    """The fields of a 36-byte CARP header, unchecked."""
    vt, vhid, advskew, authlen, pad, advbase, _sum, counter, md = _CARP.unpack_from(data)
    return Advert(
        vhid=vhid,
        advbase=advbase,
        advskew=advskew,
        counter=int.from_bytes(counter, "big"),
        digest=md,
        version=vt >> 4,
        type=vt & 0x0F,
        authlen=authlen,
        pad=pad,
    )


def encode_ip(source: IPv4Address, destination: IPv4Address, payload: bytes, ident: int) -> bytes:
    """An IPv4 header as ucarp writes it (TOS 0x10, DF, TTL 255, protocol 112) plus payload."""
    fields = (
        0x45, IP_TOS_LOWDELAY, IP_HEADER_LEN + len(payload), ident & 0xFFFF, IP_FLAG_DF,
        CARP_TTL, CARP_PROTO,
    )
    unsummed = _IP.pack(*fields, 0, source.packed, destination.packed)
    header = _IP.pack(*fields, internet_checksum(unsummed), source.packed, destination.packed)
    return header + payload


def encode_packet(
    advert: Advert,
    key: bytes,
    vip: IPv4Address,
    source: IPv4Address,
    ident: int,
    group: IPv4Address = DEFAULT_GROUP,
) -> bytes:
    """A whole IPv4 packet carrying one advert."""
    return encode_ip(source, group, encode_carp(advert, key, vip), ident)


def _folded_complement(number: int) -> int:
    """The RFC 1071 checksum of data given as one big-endian integer (not zero).

    2**16 is 1 modulo 0xFFFF, so the integer is congruent to the sum of its 16-bit words, and
    so is that sum folded; folding a sum that is not zero gives 1..0xFFFF: :func:`internet_checksum`
    without summing word by word."""
    return 0xFFFF - (number % 0xFFFF or 0xFFFF)


class AdvertFrames:
    """The Ethernet frames of one group's adverts, built fast (255 groups may be due at one
    instant): the bytes that never change are laid out once, the key is hashed into the HMAC
    once; per advert only its fields, counter, IP identification, HMAC and checksums are new.

    Byte for byte what :func:`encode_ethernet` over :func:`encode_packet` gives (pinned by
    tests/unit/test_wire_fastpath.py over the captured vectors and random parameters)."""

    __slots__ = ("_addresses", "_head", "_ip_middle", "_ip_sum", "_keyed", "_vip")

    def __init__(self, key: bytes, vip: IPv4Address, source: IPv4Address, group: IPv4Address,
                 destination_mac: bytes, source_mac: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha1)
        self._vip = vip.packed
        total = (IP_HEADER_LEN + CARP_HEADER_LEN).to_bytes(2, "big")
        self._head = _ETH.pack(destination_mac, source_mac, ETH_P_IP) + bytes(
            (0x45, IP_TOS_LOWDELAY)) + total
        self._ip_middle = IP_FLAG_DF.to_bytes(2, "big") + bytes((CARP_TTL, CARP_PROTO))
        self._addresses = source.packed + group.packed
        # the IPv4 header with identification and checksum 0, as one integer: the
        # identification adds ident << 112 to it, which is ident modulo 0xFFFF
        self._ip_sum = int.from_bytes(self._head[_ETH.size:] + bytes(2) + self._ip_middle
                                      + bytes(2) + self._addresses, "big")

    def frame(self, advert: Advert, ident: int) -> bytes:
        vhid = advert.vhid
        counter = advert.counter.to_bytes(8, "big")
        signer = self._keyed.copy()
        signer.update(bytes((CARP_VERSION, CARP_TYPE_ADVERTISEMENT, vhid)) + self._vip + counter)
        md = signer.digest()
        fields = bytes(((advert.version << 4) | advert.type, vhid, advert.advskew,
                        advert.authlen, advert.pad, advert.advbase))
        carp_sum = _folded_complement(int.from_bytes(fields + bytes(2) + counter + md, "big"))
        ident &= 0xFFFF
        ip_sum = _folded_complement(self._ip_sum + ident)
        return b"".join((self._head, ident.to_bytes(2, "big"), self._ip_middle,
                         ip_sum.to_bytes(2, "big"), self._addresses, fields,
                         carp_sum.to_bytes(2, "big"), counter, md))


def multicast_mac(group: IPv4Address) -> bytes:
    return b"\x01\x00\x5e" + (int(group) & 0x7FFFFF).to_bytes(3, "big")


def ucarp_source_mac(vhid: int) -> bytes:
    """The source MAC ucarp writes: 00:00:5e:00:00:<vhid>."""
    return bytes([0, 0, 0x5E, 0, 0, vhid])


def encode_ethernet(destination: bytes, source: bytes, ethertype: int, payload: bytes) -> bytes:
    return _ETH.pack(destination, source, ethertype) + payload


def encode_gratuitous_arp(mac: bytes, address: IPv4Address) -> bytes:
    """A 42-byte gratuitous ARP request: sender = target, both MAC and IP, broadcast."""
    arp = _ARP.pack(1, ETH_P_IP, 6, 4, 1, mac, address.packed, mac, address.packed)
    return encode_ethernet(BROADCAST_MAC, mac, ETH_P_ARP, arp)


@dataclass(frozen=True)
class Expect:
    """What a receiver accepts: its vhid, key, VIP (`vip`), group and our own address (`source`)."""

    vhid: int
    key: bytes
    vip: IPv4Address
    source: IPv4Address
    """Our own address (the adverts we send come from it: dropped as OWN)."""
    group: IPv4Address = DEFAULT_GROUP


def inspect(packet: bytes, expect: Expect) -> Received | Reject:
    """Run one IPv4 packet through ucarp's receive checks, in ucarp's order."""
    if len(packet) < IP_HEADER_LEN:
        return Reject.SHORT
    if packet[0] >> 4 != 4:
        return Reject.NOT_IPV4
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != CARP_PROTO:
        return Reject.NOT_CARP
    if ihl < IP_HEADER_LEN or len(packet) < ihl + CARP_HEADER_LEN:
        return Reject.SHORT
    source = IPv4Address(packet[12:16])
    if source == expect.source:
        return Reject.OWN
    return _check_carp(packet, ihl, source, expect)


def _check_carp(packet: bytes, ihl: int, source: IPv4Address, expect: Expect) -> Received | Reject:
    carp = packet[ihl : ihl + CARP_HEADER_LEN]
    advert = decode_carp(carp)
    if packet[8] != CARP_TTL:
        return Reject.BAD_TTL
    if advert.version != CARP_VERSION:
        return Reject.BAD_VERSION
    if advert.vhid != expect.vhid:
        return Reject.OTHER_VHID
    if IPv4Address(packet[16:20]) != expect.group:
        return Reject.BAD_DESTINATION
    # ucarp sums the IP and CARP headers together, after the checks above: a packet of another
    # vhid is ignored silently even when damaged.  Each header must sum to zero on its own here.
    if internet_checksum(packet[:ihl]) != 0 or internet_checksum(carp) != 0:
        return Reject.BAD_CHECKSUM
    expected = digest(expect.key, advert.vhid, expect.vip, advert.counter)
    if not hmac.compare_digest(expected, advert.digest):
        return Reject.BAD_HMAC
    return Received(advert, source)


def strip_ethernet(frame: bytes, group: IPv4Address = DEFAULT_GROUP) -> bytes | None:
    """The IPv4 packet of a frame sent to the group's MAC or broadcast; None for anything else.

    The Ethernet source is not looked at: ucarp spoofs it, and receivers ignore it.
    """
    if len(frame) < _ETH.size + IP_HEADER_LEN:
        return None
    destination, _source, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_IP or destination not in (multicast_mac(group), BROADCAST_MAC):
        return None
    packet = frame[_ETH.size :]
    total = struct.unpack_from("!H", packet, 2)[0]
    return packet[:total] if total <= len(packet) else packet
