"""A dedicated cluster network through the real ifup/ifdown and carpd's hooks (issue 9, item
7): the ``ucarp-*`` options on the stanza of eth1 (the cluster LAN, a bridge of its own) with
``ucarp-vip-interface eth0``; MASTER brings up ``eth0:web:ucarp`` on the service LAN."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from ifnodes import PASSWORD, VIP, Lab, Node, wait_for

pytestmark = pytest.mark.netns

ELECTION = 15.0


def cluster_form(number: int, advskew: int) -> str:
    return textwrap.dedent(f"""\
        auto eth0 eth1
        iface eth0 inet static
            address 10.77.0.{10 + number}/24

        iface eth1 inet static
            address 192.168.77.{10 + number}/24
            ucarp-vid 7
            ucarp-vip {VIP}
            ucarp-password {PASSWORD}
            ucarp-advskew {advskew}
            ucarp-master yes
            ucarp-vip-interface eth0
            ucarp-alias eth0:web

        iface eth0:web:ucarp inet static
            address {VIP}/32
        """)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=30)


def add_cluster_lan(lab: Lab, nodes: list[Node]) -> None:
    """A second bridge, br1, in the lab's switch namespace and an eth1 on it in each node
    (removed with the namespaces)."""
    _run("ip", "-n", lab.switch, "link", "add", "br1", "type", "bridge")
    _run("ip", "-n", lab.switch, "link", "set", "br1", "up")
    for number, node in enumerate(nodes, start=1):
        port = f"q{number}"
        _run("ip", "-n", node.netns, "link", "add", "eth1", "type", "veth", "peer", "name", port,
             "netns", lab.switch)
        _run("ip", "-n", lab.switch, "link", "set", port, "master", "br1", "up")


def carp_sources(lab: Lab, bridge: str, seconds: float) -> set[str]:
    """The sources of the CARP packets (IP protocol 112) seen on ``bridge`` for ``seconds``."""
    result = subprocess.run(
        ["ip", "netns", "exec", lab.switch, "timeout", str(seconds), "tcpdump", "-i", bridge,
         "-n", "-l", "ip proto 112"], capture_output=True, text=True, check=False, timeout=30)
    return {line.split()[2] for line in result.stdout.splitlines() if " > " in line}


def engine_log(node: Node) -> str:
    path = node.run_dir / "carpd" / "eth1.log"
    return path.read_text() if path.exists() else "(no log)"


def holders(nodes: list[Node]) -> list[tuple[str, str]]:
    # one look per node: the VIP may move between two
    held = [(n.name, n.addresses()) for n in nodes]
    return [(name, addresses[VIP]) for name, addresses in held if VIP in addresses]


def test_a_group_advertising_on_eth1_holds_its_vip_on_eth0_through_ifup_and_ifdown(
        lab: Lab) -> None:
    first, second = lab.node(), lab.node()
    nodes = [first, second]
    add_cluster_lan(lab, nodes)
    for number, node in enumerate(nodes, start=1):
        node.write_interfaces(cluster_form(number, advskew=(number - 1) * 100))
        for name in ("eth0", "eth1"):
            result = node.ifup(name)
            assert result.returncode == 0, (result.stderr, engine_log(node))
    assert wait_for(lambda: holders(nodes) == [("n1", "eth0:web:ucarp")], ELECTION), (
        [n.addresses() for n in nodes], [engine_log(n) for n in nodes])
    assert VIP not in first.addresses("eth1")
    conf = json.loads((first.run_dir / "carpd" / "eth1.conf").read_text())
    assert (conf["interface"], conf["groups"][0]["vip_interface"]) == ("eth1", "eth0"), conf
    assert carp_sources(lab, "br1", 3) >= {"192.168.77.11"}
    assert carp_sources(lab, "br0", 3) == set()  # no advert on the service LAN
    regen = first.sh("carpd-ifupdown regen eth1")
    assert regen.returncode == 0 and "already as its stanza says" in regen.stderr, regen.stderr

    result = first.ifdown("eth1")  # bows out: n2 takes over at once; n1's eth0 keeps no VIP
    assert result.returncode == 0, (result.stderr, engine_log(first))
    assert wait_for(lambda: holders(nodes) == [("n2", "eth0:web:ucarp")], 5.0), (
        [n.addresses() for n in nodes], engine_log(first), engine_log(second))
    assert first.engines() == [] and first.supervisors() == []
    assert "eth0:web:ucarp" not in (first.state / "ifstate").read_text()

    result = first.ifup("eth1")  # ucarp-master yes: n1 takes its VIP back
    assert result.returncode == 0, (result.stderr, engine_log(first))
    assert wait_for(lambda: holders(nodes) == [("n1", "eth0:web:ucarp")], ELECTION), (
        [n.addresses() for n in nodes], engine_log(first))


def test_an_alias_of_the_advert_interface_with_vip_interface_fails_ifup_and_starts_nothing(
        lab: Lab) -> None:
    node = lab.node()
    add_cluster_lan(lab, [node])
    node.write_interfaces(cluster_form(1, 0).replace("ucarp-alias eth0:web",
                                                     "ucarp-alias eth1:web"))
    assert node.ifup("eth0").returncode == 0
    result = node.ifup("eth1")
    assert result.returncode != 0
    assert ("iface eth1 inet static: ucarp-alias: 'eth1:web': must be eth0 "
            "(ucarp-vip-interface) or an alias of it") in result.stderr, result.stderr
    assert node.engines() == [] and node.supervisors() == []


def test_two_engines_bringing_up_one_alias_on_eth0_fail_ifup_naming_both_stanzas(
        lab: Lab) -> None:
    node = lab.node()
    add_cluster_lan(lab, [node])
    text = cluster_form(1, 0).replace("    ucarp-alias eth0:web\n", "").replace(
        "eth0:web:ucarp", "eth0:ucarp").replace(
        "    address 10.77.0.11/24\n",
        f"    address 10.77.0.11/24\n    ucarp-vid 3\n    ucarp-vip 10.77.0.3\n"
        f"    ucarp-password {PASSWORD}\n")
    node.write_interfaces(text)
    path = node.interfaces
    for name in ("eth0", "eth1"):  # whichever comes first: refused before anything starts
        result = node.ifup(name)
        assert result.returncode != 0
        assert (f"{path}:8: iface eth1 inet static: ucarp-alias: 'eth0': the default actions "
                f"of vhid 7 bring up 'eth0:ucarp', as those of vhid 3 at {path}:2 (iface eth0 "
                "inet static) do") in result.stderr, result.stderr
    assert node.engines() == [] and node.supervisors() == []
    assert not list((node.run_dir / "carpd").glob("*.conf"))
