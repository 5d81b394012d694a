"""Where the new MASTER may pass a draining master's connections: another host on our subnet."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from carpd.engine.netlink import InterfaceInfo

INFO = InterfaceInfo(
    index=2, mac=bytes(6), carrier=True,
    addresses=((IPv4Address("10.0.0.2"), 24, "eth0"), (IPv4Address("10.0.0.100"), 32, "eth0:ucarp"),
               (IPv4Address("192.0.2.1"), 31, "eth0")),
)


@pytest.mark.parametrize("address", ["10.0.0.1", "10.0.0.254", "192.0.2.0"])
def test_another_host_on_our_subnet_is_on_link_unicast(address: str) -> None:
    assert INFO.is_on_link_unicast(IPv4Address(address))


@pytest.mark.parametrize(
    ("address", "why"),
    [("255.255.255.255", "limited broadcast"), ("10.0.0.255", "subnet broadcast"),
     ("10.0.0.0", "network address"), ("10.0.1.66", "another subnet"),
     ("8.8.8.8", "off-link"), ("224.0.0.18", "multicast"), ("0.0.0.0", "unspecified"),
     ("10.0.0.2", "our own address"), ("10.0.0.100", "the VIP"), ("127.0.0.1", "loopback"),
     ("169.254.1.1", "link-local")],
)
def test_forwarding_target_must_be_on_link_unicast(address: str, why: str) -> None:
    assert not INFO.is_on_link_unicast(IPv4Address(address)), why
