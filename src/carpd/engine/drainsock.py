"""The engine's socket for the hand-over's drain signal (:mod:`carpd.core.drainsignal`): UDP port
:data:`~carpd.core.drainsignal.PORT` on the engine's interface, one for all its groups (the vhid is
the message's ninth byte), sent from the group's own address."""

from __future__ import annotations

import logging
import os
import socket
import struct
from ipaddress import IPv4Address

from carpd.core import drainsignal

log = logging.getLogger("carpd")

IP_PKTINFO = 8
"""<linux/in.h>: sendmsg()'s source address (not in every Python's socket module)."""
BATCH = 64
"""Datagrams read per loop turn at most: a flood must not hold the loop."""


class SignalSocket:
    """Bound to the interface (``SO_BINDTODEVICE``, so an engine per interface can each have
    the port) and to every address of it."""

    def __init__(self, ifname: str, port: int = drainsignal.PORT) -> None:
        self._port = port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                  os.fsencode(ifname))
            self._sock.bind(("0.0.0.0", port))
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    @classmethod
    def open(cls, ifname: str) -> SignalSocket | None:
        """None (and a warning) if the port cannot be had: hand-overs then forward for
        :data:`~carpd.core.drainsignal.SILENCE` s only, and signal nothing."""
        try:
            return cls(ifname)
        except OSError as error:
            log.warning("drain signal: cannot bind UDP port %d on %s: %s: a new MASTER here "
                        "passes a draining peer's connections on for %.1f s only",
                        drainsignal.PORT, ifname, error.strerror, drainsignal.SILENCE)
            return None

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, data: bytes, to: IPv4Address, source: IPv4Address) -> None:
        """From ``source`` (``IP_PKTINFO``: the group's address, not the interface's first)."""
        info = struct.pack("@i4s4s", 0, source.packed, bytes(4))
        try:
            self._sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0,
                               (str(to), self._port))
        except OSError as error:
            log.debug("drain signal to %s: %s", to, error.strerror)

    def receive(self) -> list[tuple[bytes, IPv4Address]]:
        received: list[tuple[bytes, IPv4Address]] = []
        for _ in range(BATCH):
            try:
                data, (address, _port) = self._sock.recvfrom(drainsignal.SIZE + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:  # an ICMP error queued for an earlier send
                log.debug("drain signal socket: %s", error.strerror)
                continue
            received.append((data, IPv4Address(address)))
        return received

    def close(self) -> None:
        self._sock.close()


def vhid_of(data: bytes) -> int | None:
    """The vhid a drain signal is for (its ninth byte), None if too short."""
    return data[8] if len(data) > 8 else None
