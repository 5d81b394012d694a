"""The old MASTER's "still draining" signal to the new one (issue 12, items 2 and 6), pure: bytes
in and out, ``now`` passed in, no sockets.

Why a signal: the new MASTER passes the old one's connections on for as long as the old one
drains, and only the old one knows how long that is (its own settings, its own connections).
A local timer on the new MASTER would guess wrong both ways; and if the old MASTER dies while
draining, forwarding must stop within a second.  So the old MASTER says "still draining" every
:data:`INTERVAL` s and "drained" once at the end (three times, for a lost datagram); the new
MASTER forwards while it hears it and stops at "drained" or after :data:`SILENCE` s of silence.

Transport: a UDP datagram from the old MASTER's own address to the new MASTER's address (the
source of the adverts it now hears), port :data:`PORT`.  ucarp peers never see it: ucarp reads
CARP (IP protocol 112) only, and a datagram is nothing like an advert; a CARP-shaped frame that
ucarp drops would be dropped noisily (ucarp logs bad TTLs and versions) or would have to borrow
another vhid, which another group may own.  A ucarp new MASTER, which forwards nothing, is
never sent one (the old MASTER drains only for a carpd peer), and a stray one would get at most
an ICMP port unreachable.

Authentication: HMAC-SHA256 over the whole message with a key derived from the group's password
(HMAC-SHA256(password, :data:`KEY_LABEL`)): a digest made for this signal can never serve as a
CARP advert's HMAC-SHA1 or the other way round.  Replays: a signal names the hand-over it
belongs to (the counter of the last advert the old MASTER sent as MASTER, its bow-out or
farewell, which the new MASTER accepted; CARP counters only grow) and carries a sequence number
that must grow: a captured signal cannot extend another drain, nor this one beyond the last
genuine signal.  The message also says what is left
(connections, seconds), for logs and ``carpctl status``.

Layout (network byte order, :data:`SIZE` bytes)::

    magic "CARPDRN1" (8) | vhid (1) | kind (1: 1 draining, 2 drained) | reserved (2, zero)
    | VIP (4) | sender (4) | hand-over counter (8) | sequence (8) | connections left (4)
    | milliseconds left at most (4) | HMAC-SHA256 of all that (32)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from carpd.core import wire

PORT = 5112
INTERVAL = 0.25
"""The old MASTER says "still draining" this often."""
SILENCE = 0.9
"""The new MASTER stops forwarding after this long without a valid signal (item 6: within a
second of a crash)."""
DRAINED_REPEATS = 3
MAGIC = b"CARPDRN1"
KEY_LABEL = b"carpd drain signal v1"
_BODY = struct.Struct("!8sBBH4s4sQQII")
DIGEST_SIZE = 32
SIZE = _BODY.size + DIGEST_SIZE


class Kind(enum.IntEnum):
    DRAINING = 1
    """The old MASTER still serves connections it had at the hand-over."""
    DRAINED = 2
    """Its drain is over: stop forwarding now."""


class Reject(enum.Enum):
    """Why a datagram was not taken as a signal (counted by the receiver, like CARP's)."""

    SHORT = "short"
    MAGIC = "magic"
    KIND = "kind"
    DIGEST = "digest"
    OTHER_GROUP = "other group"
    OTHER_SENDER = "other sender"
    OTHER_HANDOVER = "other hand-over"
    STALE = "stale"
    NOT_FORWARDING = "not forwarding"


@dataclass(frozen=True)
class Signal:
    vhid: int
    vip: IPv4Address
    sender: IPv4Address
    handover: int
    """The counter of the bow-out advert that began this drain."""
    sequence: int
    kind: Kind = Kind.DRAINING
    connections: int = 0
    left_ms: int = 0


def derive_key(password: bytes) -> bytes:
    return hmac.new(password, KEY_LABEL, hashlib.sha256).digest()


def encode(signal: Signal, key: bytes) -> bytes:
    """``key``: :func:`derive_key` of the group's password."""
    body = _BODY.pack(MAGIC, signal.vhid, signal.kind, 0, signal.vip.packed,
                      signal.sender.packed, signal.handover, signal.sequence,
                      signal.connections, signal.left_ms)
    return body + hmac.new(key, body, hashlib.sha256).digest()


def decode(data: bytes, key: bytes) -> Signal | Reject:
    """The signal in ``data`` if it is one and its digest is right (constant-time compare)."""
    if len(data) != SIZE:
        return Reject.SHORT
    body, digest = data[:_BODY.size], data[_BODY.size:]
    magic, vhid, kind, _reserved, vip, sender, handover, sequence, connections, left = \
        _BODY.unpack(body)
    if magic != MAGIC:
        return Reject.MAGIC
    if not hmac.compare_digest(digest, hmac.new(key, body, hashlib.sha256).digest()):
        return Reject.DIGEST
    if kind not in (Kind.DRAINING, Kind.DRAINED):
        return Reject.KIND
    return Signal(vhid, IPv4Address(vip), IPv4Address(sender), handover, sequence, Kind(kind),
                  connections, left)


class Beacon:
    """The old MASTER's side: what to send, and when, from the bow-out to the end of its drain."""

    def __init__(self, vhid: int, vip: IPv4Address, source: IPv4Address, key: bytes) -> None:
        self._vhid, self._vip, self._source, self._key = vhid, vip, source, key
        self._handover = 0
        self._sequence = 0
        self._next_at: float | None = None
        self._drained_left = 0

    def start(self, handover: int, now: float) -> None:
        """A drain begins; ``handover`` is the counter of the bow-out advert we sent."""
        self._handover = handover
        self._next_at = now
        self._drained_left = 0

    def finish(self, now: float) -> None:
        """The drain is over: say so :data:`DRAINED_REPEATS` times, then nothing."""
        if self._next_at is not None:
            self._drained_left = DRAINED_REPEATS
            self._next_at = now

    def next_deadline(self) -> float | None:
        return self._next_at

    def due(self, now: float, connections: int = 0, left: float = 0.0) -> bytes | None:
        """The datagram to send now, if one is due (``connections``, ``left``: what the drain
        still waits for, for the new MASTER's logs)."""
        if self._next_at is None or now < self._next_at:
            return None
        kind = Kind.DRAINED if self._drained_left else Kind.DRAINING
        if kind is Kind.DRAINED:
            self._drained_left -= 1
            connections, left = 0, 0.0
            self._next_at = now + INTERVAL / 5 if self._drained_left else None
        else:
            self._next_at = now + INTERVAL
        self._sequence += 1
        return encode(Signal(self._vhid, self._vip, self._source, self._handover,
                             self._sequence, kind, connections, max(0, int(left * 1000))),
                      self._key)


class Watch:
    """The new MASTER's side: forward to the old one while it says it drains."""

    def __init__(self, vhid: int, vip: IPv4Address, key: bytes) -> None:
        self._vhid, self._vip, self._key = vhid, vip, key
        self._peer: IPv4Address | None = None
        self._handover = 0
        self._sequence = -1
        self._until: float | None = None
        self.last: Signal | None = None

    @property
    def forwarding(self) -> bool:
        return self._until is not None

    @property
    def peer(self) -> IPv4Address | None:
        """The old MASTER of the last :meth:`start`."""
        return self._peer

    def start(self, peer: IPv4Address, handover: int, now: float) -> None:
        """We took over from ``peer``; ``handover`` is the counter of the last advert we
        accepted from it (its bow-out, or the farewell it sent as we preempted it): forward for
        :data:`SILENCE` s, and on for as long as its signals say it drains.  The first signal
        may name a later advert of that peer (one we missed), never an earlier one; the rest
        must name the same."""
        self._peer, self._handover, self._sequence = peer, handover, -1
        self._until = now + SILENCE
        self.last = None

    def receive(self, data: bytes, source: IPv4Address, now: float) -> Reject | Signal:
        """A datagram on :data:`PORT`; the signal taken, or why not.  A "drained" one ends the
        forwarding (check :attr:`forwarding`)."""
        signal = decode(data, self._key)
        if isinstance(signal, Reject):
            return signal
        if self._until is None:
            return Reject.NOT_FORWARDING
        if signal.vhid != self._vhid or signal.vip != self._vip:
            return Reject.OTHER_GROUP
        if signal.sender != self._peer or source != self._peer:
            return Reject.OTHER_SENDER
        if signal.handover != self._handover and (
                self.last is not None or not wire.counter_newer(signal.handover, self._handover)):
            return Reject.OTHER_HANDOVER
        if signal.sequence <= self._sequence:
            return Reject.STALE
        self._handover = signal.handover  # a later one than we knew: its farewell, lost here
        self._sequence = signal.sequence
        self.last = signal
        self._until = None if signal.kind is Kind.DRAINED else now + SILENCE
        return signal

    def next_deadline(self) -> float | None:
        return self._until

    def handle_timer(self, now: float) -> bool:
        """True when forwarding ends now: the old MASTER fell silent (it died, or its link)."""
        if self._until is not None and now >= self._until:
            self._until = None
            return True
        return False
