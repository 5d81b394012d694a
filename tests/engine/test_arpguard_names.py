"""The nftables tables of the ARP guard and the stray forwarder: one per interface, whatever its
name, and rules that match that interface only (real nft in a throw-away namespace)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from carpd.engine import arpguard
from carpd.engine.arpguard import ArpGuardError, quoted_ifname, table_name

VIP = IPv4Address("10.9.0.100")
SRC = Path(arpguard.__file__).resolve().parents[2]


def test_interfaces_that_differ_only_in_punctuation_get_tables_of_their_own() -> None:
    names = {table_name(ifname, 1) for ifname in ("eth0.10", "eth0_10", "eth0-10", "eth010")}
    assert len(names) == 4


def test_a_plain_interface_name_keeps_its_readable_table() -> None:
    assert table_name("eth0", 1) == "carpd_eth0_1"
    assert table_name("eth0.10", 7) == "carpd_eth0_2e10_7"


def test_a_trailing_star_matches_only_the_interface_of_that_name() -> None:
    assert quoted_ifname("veth*") == '"veth\\*"'
    assert quoted_ifname("a*b") == '"a*b"'


@pytest.mark.parametrize("ifname", ['a"b', "a\\b"])
def test_a_name_nft_cannot_quote_is_refused_with_the_reason(ifname: str) -> None:
    with pytest.raises(ArpGuardError) as caught:
        arpguard.ruleset("t", ifname, VIP)
    assert str(caught.value) == (f"interface {ifname!r}: its name cannot be written in an "
                                 'nftables rule: allowed are names without " or \\')


def test_a_guard_for_an_unquotable_name_does_not_engage_but_does_not_raise() -> None:
    assert arpguard.ArpGuard('a"b', 1, VIP).engage() is False


# -- real nftables ----------------------------------------------------------------------------

@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace and nftables")
    if shutil.which("nft") is None:
        pytest.skip("needs nft (package nftables, see .ci/apt-packages)")
    name = f"carpdnft{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


GUARDS = textwrap.dedent("""\
    import sys
    from ipaddress import IPv4Address
    from carpd.engine.arpguard import ArpGuard
    guards = [ArpGuard(name, 1, IPv4Address(sys.argv[1])) for name in sys.argv[2:]]
    print(" ".join(str(g.engage()) for g in guards), flush=True)
    sys.stdin.readline()  # the tables live as long as this process
""")


class Guards:
    """A process in ``netns`` holding ARP guards for ``names`` until it is closed."""

    def __init__(self, netns: str, names: list[str]) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", GUARDS, str(VIP), *names],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)})
        assert self.process.stdout is not None
        self.engaged = self.process.stdout.readline().split()

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=10)


def _nft(netns: str, command: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *command.split()],
                          capture_output=True, text=True, check=True).stdout


def _guarded_names(netns: str) -> dict[str, set[str]]:
    """table -> the interface names its rules match."""
    found: dict[str, set[str]] = {}
    for item in json.loads(_nft(netns, "-j list ruleset"))["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        names = found.setdefault(rule["table"], set())
        for expr in rule["expr"]:
            match = expr.get("match", {})
            if match.get("left", {}).get("meta", {}).get("key") in ("iifname", "oifname"):
                names.add(match["right"])
    return found


def test_guards_on_eth0_10_eth0_underscore_10_and_eth0_dash_10_stand_side_by_side(
        netns: str) -> None:
    names = ["eth0.10", "eth0_10", "eth0-10"]
    guards = Guards(netns, names)
    try:
        assert guards.engaged == ["True", "True", "True"]
        assert _guarded_names(netns) == {table_name(n, 1): {n} for n in names}
    finally:
        guards.close()
    assert _guarded_names(netns) == {}


def _arp_requests_from_vip_leaving(netns: str, ifname: str) -> int:
    """Make the kernel ARP from the VIP out of ``ifname``; how many requests got past every
    guard (a counter in a later chain of the same hook)."""
    _nft(netns, "add table arp seen")
    _nft(netns, "add chain arp seen out { type filter hook output priority 10 ; }")
    _nft(netns, f"add rule arp seen out oifname {ifname} arp saddr ip {VIP} counter")
    send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('{VIP}', 0)); s.sendto(b'x', ('10.9.0.2', 9))")
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", send], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "sleep", "0.3"], check=True)
    counted = json.loads(_nft(netns, "-j list table arp seen"))["nftables"]
    return sum(e["counter"]["packets"] for item in counted if "rule" in item
               for e in item["rule"]["expr"] if "counter" in e)


def test_a_guard_on_an_interface_named_with_a_star_leaves_the_others_alone(netns: str) -> None:
    for command in ("link add v1 type veth peer name v1peer", "link set v1 up",
                    "link set v1peer up", "addr add 10.9.0.1/24 dev v1",
                    f"addr add {VIP}/32 dev v1"):
        subprocess.run(["ip", "-n", netns, *command.split()], check=True)
    guards = Guards(netns, ["v*"])  # no such interface: its rule must not match v1
    try:
        assert guards.engaged == ["True"]
        assert _arp_requests_from_vip_leaving(netns, "v1") >= 1
    finally:
        guards.close()
