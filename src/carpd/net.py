"""Raw sockets on one interface: adverts in and out, gratuitous ARP out, the group joined.

Everything goes through one AF_PACKET socket bound to the interface, so carpd picks the Ethernet
source (the NIC's MAC, or ucarp's ``00:00:5e:00:00:<vhid>``) and destination (the group's MAC, or
broadcast with ``-M``) exactly like ucarp's hand-built frames.  A classic BPF filter lets only
IPv4 protocol 112 through, so the engine wakes up for nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
from ipaddress import IPv4Address

from carpd import wire

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
IP_ADD_MEMBERSHIP = 35

# ldh [12]; jeq #0x800 ? next : drop; ldb [23]; jeq #112 ? accept : drop; accept; drop
_CARP_FILTER = (
    (0x28, 0, 0, 12),
    (0x15, 0, 3, wire.ETH_P_IP),
    (0x30, 0, 0, 23),
    (0x15, 0, 1, wire.CARP_PROTO),
    (0x06, 0, 0, 0xFFFF),
    (0x06, 0, 0, 0),
)


def _attach_carp_filter(sock: socket.socket) -> None:
    program = b"".join(struct.pack("HBBI", *insn) for insn in _CARP_FILTER)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(_CARP_FILTER), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Link:
    """The raw side of one interface for one virtual host."""

    def __init__(self, ifname: str, join_group: IPv4Address | None) -> None:
        self.ifname = ifname
        self.ifindex = socket.if_nametoindex(ifname)
        self._packets = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            _attach_carp_filter(self._packets)
            self._packets.bind((ifname, wire.ETH_P_IP))
            self._packets.setblocking(False)
            self._membership = self._join(join_group) if join_group is not None else None
        except OSError:
            self._packets.close()
            raise

    def _join(self, group: IPv4Address) -> socket.socket:
        """An unbound UDP socket holding the group membership: the NIC then accepts the group's
        MAC and IGMP is spoken for us; being unbound, it never queues any data."""
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mreqn = struct.pack("4s4si", group.packed, bytes(4), self.ifindex)
        holder.setsockopt(socket.IPPROTO_IP, IP_ADD_MEMBERSHIP, mreqn)
        return holder

    def fileno(self) -> int:
        return self._packets.fileno()

    def receive(self) -> list[bytes]:
        """Every frame waiting, other than the ones we sent."""
        frames: list[bytes] = []
        while True:
            try:
                frame, address = self._packets.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return frames
            if address[2] != PACKET_OUTGOING:
                frames.append(frame)

    def send(self, frame: bytes) -> None:
        # carrier gone or buffer full: CARP tolerates a lost advert, the next one follows
        ethertype = int.from_bytes(frame[12:14], "big")
        with contextlib.suppress(OSError):
            self._packets.sendto(frame, (self.ifname, ethertype))

    def close(self) -> None:
        self._packets.close()
        if self._membership is not None:
            self._membership.close()


def random_ident() -> int:
    return int.from_bytes(os.urandom(2), "big")


def random_counter() -> int:
    return int.from_bytes(os.urandom(8), "big")
