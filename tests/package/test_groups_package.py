"""Several VIP groups on one interface through the installed package and real ifupdown (issue 9):
trixie nodes (chroots in network namespaces on one bridge) with the installed .deb, each group on
an alias stanza as Debian's ucarp users write it (eth0:1, eth0:2 and their eth0:N:ucarp stanzas).

Active-active (two nodes, each MASTER of one group): `ifdown eth0:1` moves group 1 alone; a node's
death moves its group to the peer and its return (booted again: `ifup -a`) takes it back.
Active-active-passive: a third node takes whichever group's MASTER dies. One group's alias
holding 100 VIPs: all announced, all released, all moved. And Debian's own ucarp (the trixie
.deb, its if-up.d hook) on the peer of an installed carpd. The same layouts with the tree's
sources instead of the package are in tests/ifupdown/test_groups_netns.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pkgtools import (
    NET,
    Installed,
    Node,
    Overlay,
    Stage,
    forbid_service_starts,
    in_root,
    record,
    run,
)

from conftest import Lab, chroot_node
from lab.poll import Timeout, wait_for

ELECTION = 20.0
"""A group's first MASTER, or a dead MASTER's successor: the master-down interval (3 advbases
and the skew) plus a loaded machine's slack."""
MOVE = 5.0
"""A planned move (the MASTER bows out: its peer takes over on that advert, at once)."""
VIPS = {1: f"{NET}.101", 2: f"{NET}.102"}
MANY = [f"198.51.100.{n}" for n in range(1, 100)]
"""The 99 more addresses of group 1's alias in the 100-VIP layout (TEST-NET-2, only ever inside
the namespaces made here)."""


def password(vhid: int) -> str:
    return f"groups-pw-{vhid}"  # ucarp takes 16 characters at most


def alias_form(number: int, skews: dict[int, int], alias_lines: str = "") -> str:
    """Node ``number``'s /etc/network/interfaces: eth0 plain, one alias stanza per group with
    this node's source address for it, preempt on every group, and the eth0:N:ucarp stanzas
    the group's MASTER brings up (``alias_lines`` added to eth0:1:ucarp's); all up at boot."""
    text = f"""\
auto eth0 eth0:1 eth0:2
iface eth0 inet static
    address {NET}.{10 + number}/24
"""
    for vhid, vip in VIPS.items():
        text += f"""
iface eth0:{vhid} inet static
    address {NET}.{10 * vhid + 20 + number}/24
    ucarp-vid {vhid}
    ucarp-vip {vip}
    ucarp-password {password(vhid)}
    ucarp-advskew {skews[vhid]}
    ucarp-advbase 1
    ucarp-master yes

iface eth0:{vhid}:ucarp inet static
    address {vip}/32
"""
        if vhid == 1:
            text += alias_lines
    return text


# ---------------------------------------------------------------------------------------------
# The nodes


@dataclass
class Cluster:
    """Trixie nodes in network namespaces on one bridge; nothing is up until a test says so."""

    lab: Lab
    base: Path
    nodes: list[Node] = field(default_factory=list)

    def node(self, layers: Installed, number: int, text: str) -> Node:
        """Node ``number`` (named a, b, c...; address .1N), ``text`` as its interfaces file."""
        name = "abcdefgh"[number - 1]
        node = chroot_node(self.lab, layers, self.base, name, 10 + number, 0, False)
        self.nodes.append(node)
        (node.root / "etc/network/interfaces").write_text(text)
        return node

    def close(self) -> None:
        """End every node's processes at once (SIGKILL: no drain to wait for), then remove the
        namespaces and the overlays."""
        try:
            for node in self.nodes:
                with contextlib.suppress(Timeout):  # what is left goes with its namespace
                    kill(node, freeze(node))
        finally:
            self.lab.close()
            for node in self.nodes:
                node.overlay.unmount()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Its namespaces, processes and overlays go, whatever the test did."""
    made = Cluster(Lab(), tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def with_ucarp(trixie: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """trixie with Debian's ucarp installed from the trixie archive (its /etc/network/if-up.d/
    ucarp and /usr/share/ucarp/vip-up, vip-down), and ifupdown: a peer as Debian's ucarp users
    run it today."""
    overlay = Overlay(tmp_path_factory.mktemp("ucarp"), [trixie])
    try:
        forbid_service_starts(overlay.root)
        with Stage("apt-get install ucarp ifupdown in trixie (the Debian ucarp peer)"):
            in_root(overlay.root, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                   "ucarp", "ifupdown", "iproute2"])
    finally:
        overlay.unmount()
    return Installed(layer=overlay.upper, lowers=(overlay.upper, trixie), deb_in_root="")


def up(*nodes: Node) -> None:
    """`ifup -a` on each node, as at boot: eth0, then eth0:1 and eth0:2 (their groups)."""
    for node in nodes:
        node.run("ifup", "-a")


def freeze(node: Node) -> set[int]:
    """SIGSTOP every process of the node (a child forked meanwhile is stopped on the next
    pass): none of them acts any more, the supervisor and the watchdog included."""
    frozen: set[int] = set()
    while fresh := set(node.processes()) - frozen:
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= fresh
    return frozen


def kill(node: Node, frozen: set[int]) -> None:
    """SIGKILL the node's frozen processes, by PID; they are all gone within 10 s."""
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not node.processes(), 10, what=f"{node.name}'s processes gone",
             detail=node.processes)


def die(node: Node) -> None:
    """The node dies: its processes frozen at once, its link down, then they are killed; no
    bow-out, no down action, nothing said on the network."""
    frozen = freeze(node)
    run(["ip", "-n", node.netns, "link", "set", "eth0", "down"])
    kill(node, frozen)


def boot_again(node: Node) -> None:
    """The dead node starts again: no address on eth0, /run empty (a tmpfs at boot), `ifup -a`."""
    run(["ip", "-n", node.netns, "addr", "flush", "dev", "eth0"])
    for folder in ("run/network", "run/carpd"):
        for entry in (node.root / folder).glob("*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    up(node)


# ---------------------------------------------------------------------------------------------
# What the nodes hold and say


def addresses(node: Node) -> dict[str, str]:
    """address -> label of the IPv4 addresses of the node's eth0."""
    out = run(["ip", "-n", node.netns, "-o", "-4", "addr", "show", "dev", "eth0"]).output
    found = {}
    for line in out.splitlines():
        match = re.search(r"inet (\S+)/\d+ .*? (\S+)\\", line + "\\")
        if match:
            found[match[1]] = match[2]
    return found


def holders(nodes: Sequence[Node], vip: str) -> list[tuple[str, str]]:
    """(node, label) of each node holding ``vip``."""
    seen = [(node.name, addresses(node)) for node in nodes]
    return [(name, held[vip]) for name, held in seen if vip in held]


def log_tail(node: Node) -> str:
    path = node.root / "run/carpd/eth0.log"
    return path.read_text(errors="replace")[-1500:] if path.exists() else "(no carpd log)"


def situation(nodes: Sequence[Node]) -> str:
    return "\n".join(f"{node.name}: {addresses(node)}\n{log_tail(node)}" for node in nodes)


def seconds_until(condition: Callable[[], object], timeout: float, what: str,
                  detail: Callable[[], object] | None = None) -> float:
    """Seconds it took for ``condition`` to hold (:func:`lab.poll.wait_for`'s ``Timeout``
    after ``timeout``)."""
    started = time.monotonic()
    wait_for(condition, timeout, what=what, detail=detail)
    return time.monotonic() - started


def expect(nodes: Sequence[Node], masters: dict[int, Node], timeout: float = ELECTION) -> float:
    """Wait until each group's VIP is on its MASTER alone (among ``nodes``), labelled as its
    eth0:N:ucarp stanza puts it; returns how long that took."""
    wanted = {vhid: [(node.name, f"eth0:{vhid}:ucarp")] for vhid, node in masters.items()}
    shown = {vhid: node.name for vhid, node in masters.items()}
    return seconds_until(lambda: all(holders(nodes, VIPS[v]) == w for v, w in wanted.items()),
                         timeout, f"the groups' VIPs on {shown} alone", lambda: situation(nodes))


def groups(node: Node) -> dict[int, dict[str, Any]]:
    """`carpctl status eth0 --json` on the node: vhid -> its group's status."""
    result = node.run("carpctl", "status", "eth0", "--json", check=False)
    replies = json.loads(result.output[result.output.index("["):])
    return {int(reply["vhid"]): reply for reply in replies}


def steady(status: dict[str, Any]) -> tuple[str, int]:
    """What changes when a group changes state: its state and how many transitions it made
    (a group restarted would count from 0 again, a group that moved at least 2 more)."""
    return (status["state"], status["transitions"])


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def engines(*nodes: Node) -> dict[str, list[int]]:
    """The engine's PID on each node (one engine per interface: one each), not a child it
    forked to run a script, which has its command line until it execs."""
    found = {}
    for node in nodes:
        pids = node.engines()
        found[node.name] = [pid for pid in pids if _parent(pid) not in pids]
    assert all(len(pids) == 1 for pids in found.values()), found
    return found


# ---------------------------------------------------------------------------------------------
# Active-active


def active_active(cluster: Cluster, installed: Installed) -> tuple[Node, Node]:
    """a MASTER of group 1, b of group 2 (each the better advskew of its group, preempting)."""
    a = cluster.node(installed, 1, alias_form(1, {1: 0, 2: 100}))
    b = cluster.node(installed, 2, alias_form(2, {1: 100, 2: 0}))
    with Stage("groups: ifup -a on two nodes of two groups"):
        up(a, b)
    record("groups: active-active, both groups elected",
           expect([a, b], {1: a, 2: b}))
    return a, b


def test_active_active_ifdown_of_one_alias_on_its_master_moves_that_group_alone(
        cluster: Cluster, installed: Installed) -> None:
    a, b = active_active(cluster, installed)
    pids = engines(a, b)
    conf = json.loads((a.root / "run/carpd/eth0.conf").read_text())
    assert [g["vhid"] for g in conf["groups"]] == [1, 2], conf
    group2 = {node.name: steady(groups(node)[2]) for node in (a, b)}

    a.run("ifdown", "eth0:1")
    record("groups: ifdown eth0:1 on its MASTER -> group 1 on the peer",
           expect([a, b], {1: b, 2: b}, timeout=MOVE))
    assert engines(a, b) == pids, "an engine was restarted"
    assert {node.name: steady(groups(node)[2]) for node in (a, b)} == group2, \
        "group 2 changed state"
    assert sorted(groups(a)) == [2]  # a runs group 2 alone now
    conf = json.loads((a.root / "run/carpd/eth0.conf").read_text())
    assert [g["vhid"] for g in conf["groups"]] == [2], conf
    assert VIPS[1] not in addresses(a) and f"{NET}.31" not in addresses(a)

    a.run("ifup", "eth0:1")  # back: it preempts its group again, alone
    expect([a, b], {1: a, 2: b}, timeout=ELECTION)
    assert engines(a, b) == pids
    assert {node.name: steady(groups(node)[2]) for node in (a, b)} == group2
    assert groups(a)[1]["state"] == "MASTER" and groups(b)[1]["state"] == "BACKUP"


def test_active_active_node_death_moves_its_group_to_the_peer_and_its_return_takes_it_back(
        cluster: Cluster, installed: Installed) -> None:
    a, b = active_active(cluster, installed)
    pids = engines(b)
    group2 = steady(groups(b)[2])

    die(a)
    record("groups: MASTER of group 1 dead -> group 1 on the peer",
           expect([b], {1: b, 2: b}))
    assert {vhid: g["state"] for vhid, g in groups(b).items()} == {1: "MASTER", 2: "MASTER"}

    with Stage("groups: the dead node boots again (ifup -a)"):
        boot_again(a)
    record("groups: the dead node booted again -> both groups back in place",
           expect([a, b], {1: a, 2: b}))
    assert engines(b) == pids, "the survivor's engine was restarted"
    assert steady(groups(b)[2]) == group2, "group 2 moved"
    assert {vhid: g["state"] for vhid, g in groups(a).items()} == {1: "MASTER", 2: "BACKUP"}
    assert {vhid: g["state"] for vhid, g in groups(b).items()} == {1: "BACKUP", 2: "MASTER"}


# ---------------------------------------------------------------------------------------------
# Active-active-passive


def test_active_active_passive_the_spare_takes_whichever_groups_master_dies(
        cluster: Cluster, installed: Installed) -> None:
    a = cluster.node(installed, 1, alias_form(1, {1: 0, 2: 200}))
    b = cluster.node(installed, 2, alias_form(2, {1: 200, 2: 0}))
    spare = cluster.node(installed, 3, alias_form(3, {1: 100, 2: 100}))
    with Stage("groups: ifup -a on three nodes of two groups"):
        up(a, b, spare)
    expect([a, b, spare], {1: a, 2: b})
    pids = engines(b, spare)

    die(a)
    record("groups: MASTER of group 1 of three nodes dead -> group 1 on the spare",
           expect([b, spare], {1: spare, 2: b}))
    assert groups(b)[1]["state"] == "BACKUP"  # the spare's better advskew won it

    boot_again(a)
    expect([a, b, spare], {1: a, 2: b})

    die(b)
    record("groups: MASTER of group 2 of three nodes dead -> group 2 on the spare",
           expect([a, spare], {1: a, 2: spare}))
    assert groups(a)[2]["state"] == "BACKUP"
    assert engines(spare) == {spare.name: pids[spare.name]}, "the spare's engine restarted"


# ---------------------------------------------------------------------------------------------
# A hundred VIPs in one group


class ArpSniffer:
    """tcpdump of every ARP frame on the bridge (run in the lab's hub namespace), with the
    Ethernet source: (source MAC, address) of each gratuitous ARP request seen."""

    def __init__(self, hub: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", hub, "tcpdump", "-i", "br0", "-n", "-e", "-l", "-U", "arp"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for _ in range(5):  # tcpdump says so once its capture is open
            if "listening on" in self.proc.stderr.readline():
                break
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def gratuitous(self, since: int = 0) -> set[tuple[str, str]]:
        found = set()
        for line in self.lines[since:]:
            match = re.match(r"\S+ (\S+) > .*who-has (\S+) (\(\S+\) )?tell (\S+),", line)
            if match and match[2] == match[4]:
                found.add((match[1], match[2]))
        return found

    def close(self) -> None:
        self.proc.kill()  # by its PID: the one process this started
        self.proc.wait()
        self._reader.join(5)


def mac(node: Node) -> str:
    out = run(["ip", "-n", node.netns, "-o", "link", "show", "dev", "eth0"]).output
    found = re.search(r"link/ether (\S+)", out)
    assert found is not None, out
    return found[1]


def test_a_group_whose_alias_holds_a_hundred_vips_announces_releases_and_moves_them_all(
        cluster: Cluster, installed: Installed) -> None:
    extra = "".join(f"    up ip addr add {address}/32 dev eth0 label eth0:1:ucarp\n"
                    for address in MANY)
    a = cluster.node(installed, 1, alias_form(1, {1: 0, 2: 100}, extra))
    b = cluster.node(installed, 2, alias_form(2, {1: 100, 2: 0}, extra))
    wanted = {VIPS[1], *MANY}
    sniffer = ArpSniffer(cluster.lab.hub)
    try:
        up(a, b)
        expect([a, b], {1: a, 2: b})

        def labelled(node: Node) -> set[str]:
            return {address for address, label in addresses(node).items()
                    if label == "eth0:1:ucarp"}

        # the alias's address first, then its `up` lines
        wait_for(lambda: labelled(a) == wanted, MOVE, what="the alias's 100 VIPs on a",
                 detail=lambda: sorted(labelled(a) ^ wanted))
        assert not wanted & set(addresses(b))

        def announced(node: Node, since: int = 0) -> set[str]:
            source = mac(node)
            return {address for seen, address in sniffer.gratuitous(since) if seen == source}

        wait_for(lambda: wanted <= announced(a), 10, what="every VIP announced by a",
                 detail=lambda: sorted(wanted - announced(a)))
        pids = engines(a, b)
        group2 = steady(groups(b)[2])

        mark = len(sniffer.lines)
        a.run("ifdown", "eth0:1")
        left = set(addresses(a))
        assert not wanted & left, f"still on a after ifdown eth0:1: {sorted(wanted & left)}"
        wait_for(lambda: labelled(b) == wanted, 2 * MOVE, what="the alias's 100 VIPs on b",
                 detail=lambda: sorted(labelled(b) ^ wanted))
        wait_for(lambda: wanted <= announced(b, mark), 10, what="every VIP announced by b",
                 detail=lambda: sorted(wanted - announced(b, mark)))
        assert engines(a, b) == pids
        assert steady(groups(b)[2]) == group2
        assert addresses(b)[VIPS[2]] == "eth0:2:ucarp"
    finally:
        sniffer.close()


# ---------------------------------------------------------------------------------------------
# Debian's ucarp on the peer


def ucarp_daemons(node: Node) -> list[int]:
    found = []
    for pid in node.processes():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)").endswith(
                    "/usr/sbin/ucarp"):
                found.append(pid)
    return sorted(found)


def test_debians_alias_form_with_debians_ucarp_on_the_peer(
        cluster: Cluster, installed: Installed, with_ucarp: Installed) -> None:
    a = cluster.node(installed, 1, alias_form(1, {1: 0, 2: 100}))
    peer = cluster.node(with_ucarp, 2, alias_form(2, {1: 100, 2: 0}))
    assert (peer.root / "etc/network/if-up.d/ucarp").exists()
    assert not (peer.root / "usr/sbin/carpd").exists()
    up(a, peer)
    assert len(ucarp_daemons(peer)) == 2  # Debian's hook: one ucarp per alias stanza
    expect([a, peer], {1: a, 2: peer})
    pids = engines(a)
    group2 = steady(groups(a)[2])

    a.run("ifdown", "eth0:1")  # ucarp takes group 1 over on carpd's bow-out
    record("groups: ifdown eth0:1 on carpd -> group 1 on Debian's ucarp",
           expect([a, peer], {1: peer, 2: peer}, timeout=MOVE))
    assert steady(groups(a)[2]) == group2 and group2[0] == "BACKUP", "group 2 changed state"

    a.run("ifup", "eth0:1")  # preempt: carpd takes it back from ucarp
    expect([a, peer], {1: a, 2: peer})
    assert engines(a) == pids
    assert len(ucarp_daemons(peer)) == 2
