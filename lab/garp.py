"""Gratuitous ARP requests as a node sends them, read from inside its namespace: how the tests
see a new MASTER announce its VIP, and on which interface."""

from __future__ import annotations

import select
import socket
import struct
import time
from ipaddress import IPv4Address
from typing import NamedTuple

from lab.netns import Node, in_netns

ETH_P_ALL = 0x0003
ETH_P_ARP = b"\x08\x06"
BROADCAST = b"\xff" * 6


class Garp(NamedTuple):
    """An ARP request whose sender and target address are the same (the one it announces)."""

    sender_mac: bytes
    address: IPv4Address
    target_mac: bytes
    broadcast: bool
    """Sent to the Ethernet broadcast address."""


def parse_garp(frame: bytes) -> Garp | None:
    """The gratuitous ARP request in an Ethernet ``frame``, or None for any other frame."""
    if len(frame) < 42 or frame[12:14] != ETH_P_ARP:
        return None
    op, sha, spa, tha, tpa = struct.unpack_from("!6xH6s4s6s4s", frame, 14)
    if op != 1 or spa != tpa:
        return None
    return Garp(sha, IPv4Address(spa), tha, frame[:6] == BROADCAST)


def frame_socket(node: Node, ifname: str = "eth0") -> socket.socket:
    """A raw socket bound to ``node``'s ``ifname`` that reads every frame there, sent or received
    (the frames a host sends reach only ETH_P_ALL listeners). Close it (``with``)."""
    with in_netns(node.ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((ifname, ETH_P_ALL))
    except OSError:
        sock.close()
        raise
    return sock


def garps(sock: socket.socket, seconds: float) -> list[Garp]:
    """The gratuitous ARP requests ``sock`` reads within ``seconds``."""
    seen = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        if (garp := parse_garp(sock.recv(2048))) is not None:
            seen.append(garp)
    return seen
