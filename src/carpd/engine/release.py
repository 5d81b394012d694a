"""Taking a group's VIP off its interface: the one way carpd releases addresses.

Three callers, one function (:func:`release`): a group that stops (the engine), the watchdog of
an engine that died without a clean exit, and the ifupdown hook after an engine is gone.  Each
removes the VIP (every copy, whatever its prefix length) and, when it knows the label the default
actions give it (``IFACE:ucarp``, :func:`alias_label`), every other address so labelled.

Standard library only (os, socket, struct, ipaddress), with its own few netlink messages: the
watchdog runs it as ``python3 -S -I``, without site packages, so neither pyroute2 nor pydantic
is at hand there.
"""

from __future__ import annotations

import os
import socket
import struct
from ipaddress import IPv4Address

ALIAS = "ucarp"
"""The alias the default actions bring up (``IFACE:ucarp``): what an engine may leave behind."""

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_LOCAL, IFA_LABEL = 2, 3
MAX_COPIES = 8
"""Deletions tried per address (one per copy with another prefix length; the last fails)."""
_HEADER = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_ATTR = struct.Struct("=HH")

Address = tuple[IPv4Address, int, str]
"""An IPv4 address of an interface: the address, its prefix length, its label."""


def alias_label(script_interface: str) -> str:
    """The label the default actions give a group's VIP: ``eth0:ucarp`` for a group whose
    scripts get ``eth0``, ``eth0:1:ucarp`` for ``eth0:1``."""
    return f"{script_interface}:{ALIAS}"


def release(ifname: str, vip: IPv4Address, label: str | None = None) -> list[IPv4Address]:
    """Remove ``vip`` and every address labelled ``label`` from ``ifname``; what was removed
    (nothing if the interface is gone)."""
    removed = []
    for address in held(ifname, vip, label):
        if remove_address(ifname, address):
            removed.append(address)
    return removed


def held(ifname: str, vip: IPv4Address, label: str | None = None) -> list[IPv4Address]:
    """The VIP and every address labelled ``label`` that ``ifname`` holds, each once."""
    try:
        found = addresses(ifname)
    except OSError:  # no such interface (any more)
        return []
    wanted = [a for a, _prefix, name in found if a == vip or (label and name == label)]
    return list(dict.fromkeys(wanted))


def addresses(ifname: str) -> list[Address]:
    """The IPv4 addresses of ``ifname`` (OSError if there is no such interface)."""
    index = socket.if_nametoindex(ifname)
    request = _HEADER.pack(_HEADER.size + _IFADDRMSG.size, RTM_GETADDR,
                           NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    request += _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, index)
    found: list[Address] = []
    with _netlink() as sock:
        sock.send(request)
        done = False
        while not done:
            messages, done = _messages(sock.recv(1 << 16))
            found += [a for i, a in messages if i == index]
    return found


def remove_address(ifname: str, address: IPv4Address) -> int:
    """Delete ``address`` from ``ifname``, whatever its prefix length; how many were deleted.

    Only ``IFA_LOCAL`` is given, so the kernel matches the address alone (not the prefix)."""
    index = socket.if_nametoindex(ifname)
    removed = 0
    with _netlink() as sock:
        for seq in range(1, MAX_COPIES + 1):
            sock.send(_delete_request(seq, index, address))
            if _error_of(sock.recv(65536)) != 0:
                break
            removed += 1
    return removed


def _netlink() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.bind((0, 0))
    return sock


def _messages(data: bytes) -> tuple[list[tuple[int, Address]], bool]:
    """The addresses in one read of a dump, by interface index, and whether the dump ended
    (its ``NLMSG_DONE`` may come in the same read as its last addresses)."""
    found: list[tuple[int, Address]] = []
    at = 0
    while at + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, at)
        if length < _HEADER.size:
            break
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            error = struct.unpack_from("=i", data, at + _HEADER.size)[0]
            raise OSError(-error, os.strerror(-error))
        if kind == RTM_NEWADDR:
            found += _address(data[at + _HEADER.size:at + length])
        at += (length + 3) & ~3
    return found, False


def _address(body: bytes) -> list[tuple[int, Address]]:
    family, prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
    if family != socket.AF_INET:
        return []
    attrs = _attributes(body[_IFADDRMSG.size:])
    local = attrs.get(IFA_LOCAL)
    if local is None or len(local) != 4:
        return []
    label = attrs.get(IFA_LABEL, b"").split(b"\0", 1)[0].decode(errors="replace")
    return [(index, (IPv4Address(local), prefix, label))]


def _attributes(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    at = 0
    while at + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, at)
        if length < _ATTR.size:
            break
        attrs[kind] = data[at + _ATTR.size:at + length]
        at += (length + 3) & ~3
    return attrs


def _delete_request(seq: int, index: int, address: IPv4Address) -> bytes:
    body = _IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, index)
    body += _ATTR.pack(8, IFA_LOCAL) + address.packed
    header = _HEADER.pack(_HEADER.size + len(body), RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK,
                          seq, 0)
    return header + body


def _error_of(reply: bytes) -> int:
    """The (negative) errno of a netlink acknowledgement, 0 for success."""
    _length, kind, _flags, _seq, _pid = _HEADER.unpack_from(reply)
    if kind != NLMSG_ERROR:
        return -1
    return int(struct.unpack_from("=i", reply, _HEADER.size)[0])
