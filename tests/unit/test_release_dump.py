"""carpd.engine.release reads an interface's addresses with netlink messages of its own (the
standard library only, for the watchdog): how it reads a dump."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

from carpd.engine import release


def _attribute(kind: int, value: bytes) -> bytes:
    padded = value + b"\0" * (-len(value) % 4)
    return struct.pack("=HH", 4 + len(value), kind) + padded


def _message(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0x2, 1, 0) + body


def new_address(index: int, address: str, prefix: int, label: str) -> bytes:
    body = struct.pack("=BBBBI", socket.AF_INET, prefix, 0, 0, index)
    body += _attribute(release.IFA_LOCAL, IPv4Address(address).packed)
    body += _attribute(release.IFA_LABEL, label.encode() + b"\0")
    return _message(release.RTM_NEWADDR, body)


DONE = _message(release.NLMSG_DONE, struct.pack("=i", 0))


def test_addresses_in_the_same_read_as_the_end_of_the_dump_count() -> None:
    data = new_address(2, "10.0.0.1", 24, "eth0") + new_address(2, "10.0.0.9", 32, "eth0:ucarp")
    found, done = release._messages(data + DONE)
    assert done
    assert found == [(2, (IPv4Address("10.0.0.1"), 24, "eth0")),
                     (2, (IPv4Address("10.0.0.9"), 32, "eth0:ucarp"))]


def test_a_dump_goes_on_until_its_end() -> None:
    found, done = release._messages(new_address(3, "10.0.0.2", 16, "eth1"))
    assert not done and found == [(3, (IPv4Address("10.0.0.2"), 16, "eth1"))]
    assert release._messages(DONE) == ([], True)


def test_the_alias_label_is_the_script_interface_and_ucarp() -> None:
    assert [release.alias_label(n) for n in ("eth0", "eth0:1")] == ["eth0:ucarp", "eth0:1:ucarp"]
