"""Several VIP groups per interface through the real ifup/ifdown and carpd's hooks (issue 9):
Debian's alias form active-active on two nodes, carpd's repeated stanzas, a duplicate vhid
refused before anything starts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from ifnodes import PASSWORD, ROOT, Lab, Node, wait_for

pytestmark = pytest.mark.netns

ELECTION = 15.0
VIPS = {1: "10.77.0.101", 2: "10.77.0.102"}


def debian_alias_form(number: int, skews: dict[int, int]) -> str:
    """Node ``number``'s file: eth0 plain, one alias stanza per group with an address of its
    own (the group's source), and the eth0:N:ucarp stanzas MASTER brings up."""
    text = textwrap.dedent(f"""\
        auto eth0
        iface eth0 inet static
            address 10.77.0.{10 + number}/24
        """)
    for vhid, vip in VIPS.items():
        text += textwrap.dedent(f"""
            iface eth0:{vhid} inet static
                address 10.77.0.{10 * vhid + 20 + number}/24
                ucarp-vid {vhid}
                ucarp-vip {vip}
                ucarp-password {PASSWORD}{vhid}
                ucarp-advskew {skews[vhid]}
                ucarp-master yes

            iface eth0:{vhid}:ucarp inet static
                address {vip}/32
            """)
    return text


def _ok(result: object, node: Node) -> None:
    returncode = getattr(result, "returncode", 1)
    assert returncode == 0, (getattr(result, "stderr", ""), node.log())


def _holders(nodes: list[Node], vip: str) -> list[tuple[str, str]]:
    """(node, label) of each node holding ``vip`` (one look at each node's addresses)."""
    seen = [(n.name, n.addresses()) for n in nodes]
    return [(name, addresses[vip]) for name, addresses in seen if vip in addresses]


def _conf(node: Node) -> dict[str, object]:
    data: dict[str, object] = json.loads((node.run_dir / "carpd" / "eth0.conf").read_text())
    return data


def _vhids(node: Node) -> list[int]:
    groups = _conf(node).get("groups")
    assert isinstance(groups, list)
    return [int(g["vhid"]) for g in groups]


def test_two_nodes_two_alias_groups_active_active_and_ifdown_of_one_alias_moves_it_alone(
        lab: Lab) -> None:
    first, second = lab.node(), lab.node()
    first.write_interfaces(debian_alias_form(1, {1: 0, 2: 100}))
    second.write_interfaces(debian_alias_form(2, {1: 100, 2: 0}))
    nodes = [first, second]
    for node in nodes:
        for name in ("eth0", "eth0:1", "eth0:2"):
            _ok(node.ifup(name), node)
    assert wait_for(lambda: _holders(nodes, VIPS[1]) == [("n1", "eth0:1:ucarp")]
                    and _holders(nodes, VIPS[2]) == [("n2", "eth0:2:ucarp")], ELECTION), (
        [n.addresses() for n in nodes], [n.log() for n in nodes])
    engines = {n.name: n.engines() for n in nodes}
    assert all(len(pids) == 1 for pids in engines.values()), engines  # one engine per node
    assert _vhids(first) == [1, 2] and _vhids(second) == [1, 2]

    _ok(first.ifdown("eth0:1"), first)
    assert wait_for(lambda: _holders(nodes, VIPS[1]) == [("n2", "eth0:1:ucarp")], 5.0), (
        [n.addresses() for n in nodes], first.log())
    assert _holders(nodes, VIPS[2]) == [("n2", "eth0:2:ucarp")]
    assert {n.name: n.engines() for n in nodes} == engines  # nothing restarted
    assert _vhids(first) == [2]
    assert "eth0:1" not in (first.state / "ifstate").read_text()

    _ok(first.ifup("eth0:1"), first)  # back: it preempts its group again, alone
    assert wait_for(lambda: _holders(nodes, VIPS[1]) == [("n1", "eth0:1:ucarp")], ELECTION), (
        [n.addresses() for n in nodes], first.log())
    assert _holders(nodes, VIPS[2]) == [("n2", "eth0:2:ucarp")]
    assert {n.name: n.engines() for n in nodes} == engines
    assert _vhids(first) == [1, 2]

    for name in ("eth0:2", "eth0:1"):  # the last group's ifdown stops the engine
        _ok(first.ifdown(name), first)
    assert first.engines() == [] and first.supervisors() == []
    assert not (first.run_dir / "carpd" / "eth0.conf").exists()
    assert _holders(nodes, VIPS[1]) == [("n2", "eth0:1:ucarp")]


NATIVE = textwrap.dedent(f"""\
    auto eth0
    iface eth0 inet static
        address 10.77.0.11/24
        ucarp-vid 1
        ucarp-vip {VIPS[1]}
        ucarp-password {PASSWORD}
        ucarp-alias eth0:web

    iface eth0 inet manual
        ucarp-vid 2
        ucarp-vip {VIPS[2]}
        ucarp-password {PASSWORD}
        ucarp-alias eth0:db

    iface eth0:web:ucarp inet static
        address {VIPS[1]}/32

    iface eth0:db:ucarp inet static
        address {VIPS[2]}/32
    """)


def test_repeated_stanzas_of_one_interface_run_every_group_in_one_engine(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(NATIVE)
    _ok(node.ifup("eth0"), node)
    assert wait_for(lambda: _holders([node], VIPS[1]) == [("n1", "eth0:web:ucarp")]
                    and _holders([node], VIPS[2]) == [("n1", "eth0:db:ucarp")], ELECTION), (
        node.addresses(), node.log())
    assert len(node.engines()) == 1
    assert _vhids(node) == [1, 2]
    _ok(node.ifdown("eth0"), node)
    assert node.engines() == [] and node.supervisors() == []
    assert VIPS[1] not in node.addresses() and VIPS[2] not in node.addresses()


def test_the_same_vhid_on_two_aliases_fails_ifup_naming_both_and_starts_nothing(
        lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(debian_alias_form(1, {1: 0, 2: 100}).replace(
        "ucarp-vid 2", "ucarp-vid 1"))
    _ok(node.ifup("eth0"), node)
    result = node.ifup("eth0:1")
    assert result.returncode != 0
    path = node.interfaces
    assert (f"{path}:16: iface eth0:2 inet static: ucarp-vid: '1': vhid 1 on eth0 again, first "
            f"at {path}:5 (iface eth0:1 inet static)") in result.stderr, result.stderr
    assert node.engines() == [] and node.supervisors() == []
    assert not (node.run_dir / "carpd" / "eth0.conf").exists()


def _cut(lab: Lab, node: Node, up: bool) -> None:
    """The node's cable, at the switch: its death (no adverts either way), and its return."""
    port = f"p{node.name.removeprefix('n')}"
    subprocess.run(["ip", "-n", lab.switch, "link", "set", port, "up" if up else "down"],
                   check=True, timeout=10)


def _bring_up(nodes: list[Node], skews: list[dict[int, int]]) -> None:
    for number, (node, skew) in enumerate(zip(nodes, skews, strict=True), start=1):
        node.write_interfaces(debian_alias_form(number, skew))
        for name in ("eth0", "eth0:1", "eth0:2"):
            _ok(node.ifup(name), node)


def _expect(nodes: list[Node], masters: dict[int, str], timeout: float = ELECTION) -> None:
    assert wait_for(lambda: all(_holders(nodes, VIPS[v]) == [(m, f"eth0:{v}:ucarp")]
                                for v, m in masters.items()), timeout), (
        masters, [n.addresses() for n in nodes], [n.log() for n in nodes])


def test_active_active_node_death_moves_both_groups_and_its_return_restores_both(
        lab: Lab) -> None:
    first, second = lab.node(), lab.node()
    nodes = [first, second]
    _bring_up(nodes, [{1: 0, 2: 100}, {1: 100, 2: 0}])
    _expect(nodes, {1: "n1", 2: "n2"})
    engines = second.engines()
    _cut(lab, first, up=False)
    _expect([second], {1: "n2", 2: "n2"})
    _cut(lab, first, up=True)
    _expect(nodes, {1: "n1", 2: "n2"})  # ucarp-master yes: n1 preempts its group back
    assert second.engines() == engines


def test_active_active_passive_the_spare_takes_whichever_group_fails(lab: Lab) -> None:
    nodes = [lab.node(), lab.node(), lab.node()]
    _bring_up(nodes, [{1: 0, 2: 200}, {1: 200, 2: 0}, {1: 100, 2: 100}])
    _expect(nodes, {1: "n1", 2: "n2"})
    _cut(lab, nodes[0], up=False)
    _expect(nodes[1:], {1: "n3", 2: "n2"})
    _cut(lab, nodes[0], up=True)
    _expect(nodes, {1: "n1", 2: "n2"})
    _cut(lab, nodes[1], up=False)
    _expect([nodes[0], nodes[2]], {1: "n1", 2: "n3"})


MANY = [f"10.77.1.{n}" for n in range(1, 100)]


def test_a_group_whose_alias_holds_a_hundred_vips_announces_and_releases_them_all(
        lab: Lab) -> None:
    node = lab.node()
    extra = "".join(f"    up ip addr add {a}/32 dev eth0 label eth0:1:ucarp\n" for a in MANY)
    text = debian_alias_form(1, {1: 0, 2: 0}).replace(
        f"    address {VIPS[1]}/32\n", f"    address {VIPS[1]}/32\n{extra}", 1)
    node.write_interfaces(text)
    sniffer = lab.sniff_arp()
    lines: list[str] = []
    assert sniffer.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(sniffer.stdout.readline, "")),
                              daemon=True)
    reader.start()
    for name in ("eth0", "eth0:1", "eth0:2"):
        _ok(node.ifup(name), node)
    wanted = {VIPS[1], *MANY}
    assert wait_for(lambda: wanted <= set(node.addresses()), ELECTION), node.log()

    def announced() -> set[str]:
        found = set()
        for line in list(lines):
            match = re.search(r"who-has (\S+) (\(\S+\) )?tell (\S+),", line)
            if match and match[1] == match[3]:
                found.add(match[1])
        return found

    assert wait_for(lambda: wanted <= announced(), 10.0), sorted(wanted - announced())
    _ok(node.ifdown("eth0:1"), node)
    left = node.addresses()
    assert not wanted & set(left), sorted(wanted & set(left))
    assert left.get(VIPS[2]) == "eth0:2:ucarp"  # the other group untouched
    assert _vhids(node) == [2]


DEBIAN_HOOK = Path("/etc/network/if-up.d/ucarp")


def _debian_ucarp_ifup(lab: Lab, node: Node, *names: str) -> subprocess.CompletedProcess[str]:
    """``ifup`` on ``node`` with Debian's ucarp hook instead of carpd's, and the node's file as
    /etc/network/interfaces (Debian's vip-up runs a plain ``ifup IFACE:ucarp``)."""
    hooks = node.home / "debian-hooks"
    hooks.mkdir(exist_ok=True)
    shutil.copy(DEBIAN_HOOK, hooks / "ucarp")
    mounts = " && ".join([
        f"mount --bind {node.run_dir} /run", "mkdir -p /run/network",
        f"mount --bind {node.interfaces} /etc/network/interfaces",
        f"mount --bind {hooks} /etc/network/if-up.d",
        *(f"mount --bind {node.home / 'empty'} /etc/network/if-{phase}.d"
          for phase in ("down", "pre-up", "post-down"))])
    return subprocess.run(["ip", "netns", "exec", node.netns, "sh", "-c",
                           f"{mounts} && ifup {' '.join(names)}"],
                          capture_output=True, text=True, timeout=60, check=False)


def _ucarp_daemons(node: Node) -> list[int]:
    """Debian's ucarp daemons on the node, not a child one has forked for a script or while
    going into the background (until it execs or exits, it has its parent's command line)."""
    found = [pid for pid, cmd in node.processes().items() if cmd.startswith("/usr/sbin/ucarp")]
    return [pid for pid in found if _parent(pid) not in found]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


@pytest.mark.ucarp
def test_debians_alias_form_against_debians_ucarp_on_the_peer(lab: Lab) -> None:
    if not DEBIAN_HOOK.exists() or not Path("/usr/share/ucarp/vip-up").exists():
        pytest.skip("Debian's ucarp package (its if-up.d hook and vip-up) is not installed")
    carpd, ucarp = lab.node(), lab.node()
    carpd.write_interfaces(debian_alias_form(1, {1: 0, 2: 100}))
    ucarp.write_interfaces(debian_alias_form(2, {1: 100, 2: 0}))
    for name in ("eth0", "eth0:1", "eth0:2"):
        _ok(carpd.ifup(name), carpd)
    started = _debian_ucarp_ifup(lab, ucarp, "eth0", "eth0:1", "eth0:2")
    assert started.returncode == 0, started.stderr
    assert wait_for(lambda: len(_ucarp_daemons(ucarp)) == 2, 5), ucarp.processes()
    nodes = [carpd, ucarp]
    _expect(nodes, {1: "n1", 2: "n2"})
    _ok(carpd.ifdown("eth0:1"), carpd)  # ucarp takes over on carpd's bow-out
    _expect(nodes, {1: "n2", 2: "n2"}, timeout=2.0)
    _ok(carpd.ifup("eth0:1"), carpd)
    _expect(nodes, {1: "n1", 2: "n2"})


@pytest.mark.ucarp
def test_migrating_debians_ucarp_alias_groups_runs_them_all_in_one_engine(lab: Lab) -> None:
    """Debian's ucarp, one daemon per alias stanza, handed over to one carpd engine for eth0
    by the package's migration (as its postinst runs it)."""
    if not DEBIAN_HOOK.exists() or not Path("/usr/share/ucarp/vip-up").exists():
        pytest.skip("Debian's ucarp package (its if-up.d hook and vip-up) is not installed")
    node = lab.node()
    node.write_interfaces(debian_alias_form(1, {1: 0, 2: 0}))
    started = _debian_ucarp_ifup(lab, node, "eth0", "eth0:1", "eth0:2")
    assert started.returncode == 0, started.stderr
    _expect([node], {1: "n1", 2: "n1"})
    assert wait_for(lambda: len(_ucarp_daemons(node)) == 2, 5), node.processes()

    script = (f"{node._setup()} && mount --bind {node.interfaces} /etc/network/interfaces && "
              f"PYTHONPATH={ROOT / 'src'} {sys.executable} -m carpd.debian.ifupdown.migrate")
    migrated = subprocess.run(["ip", "netns", "exec", node.netns, "sh", "-c", script],
                              capture_output=True, text=True, timeout=120, check=False)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr + node.log()
    assert not [c for c in node.processes().values() if c.startswith("/usr/sbin/ucarp")]
    assert len(node.engines()) == 1, node.processes()
    assert _vhids(node) == [1, 2]
    owners = json.loads((node.run_dir / "carpd" / "eth0.groups").read_text())
    assert {v: o["stanza"] for v, o in owners.items()} == {"1": "eth0:1", "2": "eth0:2"}
    _expect([node], {1: "n1", 2: "n1"})


def test_regen_writes_the_same_conf_of_every_group_as_the_hooks_did(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(debian_alias_form(1, {1: 0, 2: 0}))
    for name in ("eth0", "eth0:1", "eth0:2"):
        _ok(node.ifup(name), node)
    before = (node.run_dir / "carpd" / "eth0.conf").read_text()
    regen = node.sh("carpd-ifupdown regen eth0")
    assert regen.returncode == 0, regen.stderr
    assert "already as its stanza says" in regen.stderr
    assert (node.run_dir / "carpd" / "eth0.conf").read_text() == before
    # an upgrade's new option value is written for every group
    node.write_interfaces(debian_alias_form(1, {1: 10, 2: 20}))
    regen = node.sh("carpd-ifupdown regen eth0")
    assert regen.returncode == 0 and "written again from its stanza" in regen.stderr, regen.stderr
    groups = _conf(node)["groups"]
    assert isinstance(groups, list)
    assert [(g["vhid"], g["advskew"]) for g in groups] == [(1, 10), (2, 20)]
