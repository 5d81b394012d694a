"""carpd.engine.strays, the pure parts: our own connections from /proc/net/tcp, the neighbour table,
and the forwarding rules' text (the rules themselves run in tests/engine/test_drain_forwarding)."""

from __future__ import annotations

import sys
from ipaddress import IPv4Address
from pathlib import Path

from carpd.engine.strays import Flow, forward_ruleset, neighbour_mac, parse_open_connections

VIP = IPv4Address("10.9.1.100")


def hex_address(address: str, port: int) -> str:
    """As the kernel prints it: the network-order address read as a native integer."""
    return f"{int.from_bytes(IPv4Address(address).packed, sys.byteorder):08X}:{port:04X}"


def proc_line(local: tuple[str, int], remote: tuple[str, int], state: int) -> str:
    return (f"   0: {hex_address(*local)} {hex_address(*remote)} {state:02X} "
            "00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0")


HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"


def test_our_connections_to_the_vip_are_the_open_sockets_on_it_not_listeners_or_time_wait(
) -> None:
    text = "\n".join([
        HEADER,
        proc_line(("0.0.0.0", 8080), ("0.0.0.0", 0), 0x0A),          # listener
        proc_line((str(VIP), 8080), ("10.9.1.50", 40000), 0x01),     # established
        proc_line((str(VIP), 8080), ("10.9.1.50", 40001), 0x06),     # time-wait
        proc_line(("10.9.1.1", 22), ("10.9.1.50", 40002), 0x01),     # not the VIP
    ])
    # a TIME_WAIT socket's connection is over: a segment with its addresses is of a new one
    assert parse_open_connections(text, VIP) == {Flow(IPv4Address("10.9.1.50"), 40000, 8080)}


def test_the_neighbour_table_gives_only_complete_entries_on_that_interface(
        tmp_path: Path) -> None:
    arp = tmp_path / "arp"
    arp.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "10.9.1.1         0x1         0x2         02:00:00:00:00:01     *        eth0\n"
        "10.9.1.2         0x1         0x0         00:00:00:00:00:00     *        eth0\n"
        "10.9.1.3         0x1         0x2         02:00:00:00:00:03     *        eth1\n")
    assert neighbour_mac(IPv4Address("10.9.1.1"), "eth0", arp) == bytes.fromhex("020000000001")
    assert neighbour_mac(IPv4Address("10.9.1.2"), "eth0", arp) is None
    assert neighbour_mac(IPv4Address("10.9.1.3"), "eth0", arp) is None


def test_the_rules_keep_our_flows_and_pass_the_others_to_the_old_master_only() -> None:
    ours = {Flow(IPv4Address("10.9.1.50"), 40000, 8080)}
    rules = forward_ruleset("t", '"eth0"', VIP, IPv4Address("10.9.1.1"),
                            bytes.fromhex("020000000001"), ours)
    assert "elements = { 10.9.1.50 . 40000 . 8080 }" in rules
    assert "elements = { 02:00:00:00:00:01 }" in rules
    assert 'dup to 10.9.1.1 device "eth0"; drop;' in rules
    assert rules.index("ether saddr @peer return") < rules.index("goto pass")
    assert "flags owner" in rules


def test_without_a_known_mac_or_own_flows_the_sets_start_empty() -> None:
    rules = forward_ruleset("t", '"eth0"', VIP, IPv4Address("10.9.1.1"), None, ())
    assert "elements" not in rules
