"""Moving a running pair from Debian's ucarp to carpd, one node at a time, without losing the VIP.

Two trixie nodes run Debian's ucarp (the .deb from the trixie archive) from their interfaces
files, started by `ifup eth0` through ucarp's own if-up hook.  Then carpd is installed with apt on
the BACKUP, then on the MASTER, as an administrator would: apt removes ucarp (carpd conflicts with
it), whose daemons outlive it, and /usr/libexec/carpd/migrate hands each over to carpd.  All the
while a sampler records which nodes hold the VIP and another how many CARP daemons (ucarp or
carpd engines) run on each node.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from itertools import pairwise
from pathlib import Path

import pytest
from pkgtools import (
    NET,
    REPO,
    VHID,
    Built,
    Node,
    Overlay,
    Pair,
    Stage,
    VipWatch,
    forbid_service_starts,
    in_root,
    interfaces_file,
    record,
)

from carpd import wire
from carpd.ifupdown import migrate
from conftest import Lab

MIGRATE = "usr/libexec/carpd/migrate"
MAX_TIME_ON_NO_NODE = 1.0
"""The issue's bound for the whole pair migrated node by node."""


# -- what migrate reads of a ucarp command line (pure) --------------------------------------

def test_migrate_reads_the_command_line_of_debians_ucarp_hook_but_not_its_password() -> None:
    argv = ["/usr/sbin/ucarp", "-i", "eth0", "-s", "10.0.0.2", "-B", "-z", "-v", "3", "-p",
            "s3cret", "-a", "10.0.0.1", "-u", "/usr/share/ucarp/vip-up", "-d",
            "/usr/share/ucarp/vip-down", "-P", "-k", "100", "-b", "2", "-M"]
    args = migrate.parse_ucarp_args(argv)
    assert args == migrate.UcarpArgs("eth0", 3, IPv4Address("10.0.0.1"),
                                      IPv4Address("10.0.0.2"), 2, 100, True)
    assert "s3cret" not in repr(args)
    assert args.interval == 2 + 100 / 256


def test_migrate_reads_ucarps_long_options_and_wraps_values_as_ucarp_does() -> None:
    argv = ["ucarp", "--interface=eth1", "--vhid=300", "--pass=x", "--addr=10.0.0.9",
            "--advskew=300"]
    args = migrate.parse_ucarp_args(argv)
    assert args is not None
    assert (args.interface, args.vhid, args.advskew, args.srcip, args.broadcast) == \
        ("eth1", 300 & 0xFF, 300 & 0xFF, None, False)


def test_migrate_leaves_a_command_line_it_cannot_read_alone() -> None:
    assert migrate.parse_ucarp_args(["ucarp", "-i", "eth0", "-v", "3"]) is None  # no -a
    assert migrate.parse_ucarp_args(["ucarp", "-i", "eth0", "-v", "x", "-a", "10.0.0.1"]) \
        is None
    assert migrate.parse_ucarp_args(["ucarp", "--bogus", "-i", "eth0"]) is None


def test_the_two_bow_out_counters_are_half_a_circle_apart_so_one_is_always_newer() -> None:
    # the second bow-out's counter, for any newest counter a carpd peer may hold
    for newest in (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x1234_5678_9ABC_DEF0):
        for first in (0, 5, 2**63 + 7, 2**64 - 1):
            if first in (newest, (newest + migrate.HALF_CIRCLE) % wire.COUNTER_MODULUS):
                continue
            second = (first + migrate.HALF_CIRCLE) % wire.COUNTER_MODULUS
            assert wire.counter_newer(first, newest) != wire.counter_newer(second, newest)


# -- the pair -------------------------------------------------------------------------------

@dataclass(frozen=True)
class UcarpLayer:
    upper: Path
    lowers: tuple[Path, ...]
    deb_in_root: str


@pytest.fixture(scope="session")
def ucarp_layer(trixie: Path, built: Built,
                tmp_path_factory: pytest.TempPathFactory) -> UcarpLayer:
    """trixie with Debian's ucarp installed and carpd's .deb in /tmp, its dependencies in apt's
    cache only (the nodes have no network to fetch them): carpd is installed once to fetch
    them, then removed by installing ucarp, purged, and its dependencies autoremoved."""
    overlay = Overlay(tmp_path_factory.mktemp("ucarp-layer"), [trixie])
    deb = f"/tmp/{built.deb.name}"
    try:
        shutil.copy2(built.deb, overlay.root / deb.lstrip("/"))
        forbid_service_starts(overlay.root)
        with Stage("migrate: trixie with ucarp, carpd's dependencies cached"):
            for argv in (["apt-get", "install", "-y", "-q", "--no-install-recommends", deb],
                         ["apt-get", "install", "-y", "-q", "--no-install-recommends", "ucarp",
                          "ifupdown", "iproute2"],
                         ["dpkg", "--purge", "carpd"],
                         ["apt-get", "autoremove", "--purge", "-y", "-q"]):
                in_root(overlay.root, argv, timeout=900)
    finally:
        overlay.unmount()
    return UcarpLayer(overlay.upper, (overlay.upper, trixie), deb)


def _ucarp_node(lab: Lab, layer: UcarpLayer, base: Path, name: str, host: int, advskew: int,
                preempt: bool) -> Node:
    overlay = Overlay(base / name, layer.lowers)
    node = Node(name, lab.node_netns(name), overlay, f"{NET}.{host}", layer.deb_in_root)
    (node.root / "etc/network/interfaces").write_text(
        interfaces_file(node.address, advskew, preempt))
    (node.root / "run/network").mkdir(parents=True, exist_ok=True)
    (node.root / "usr/sbin/policy-rc.d").unlink()
    return node


@pytest.fixture
def ucarp_pair(ucarp_layer: UcarpLayer, tmp_path: Path) -> Iterator[Pair]:
    """a (advskew 0, ucarp-master yes) and b (advskew 100), Debian's ucarp on both, not up yet."""
    lab = Lab()
    nodes: list[Node] = []
    try:
        nodes.append(_ucarp_node(lab, ucarp_layer, tmp_path, "a", 11, 0, True))
        nodes.append(_ucarp_node(lab, ucarp_layer, tmp_path, "b", 12, 100, False))
        yield Pair(nodes[0], nodes[1])
    finally:
        for node in nodes:
            node.stop_everything()
        lab.close()
        for node in nodes:
            node.overlay.unmount()


# -- watching the daemons -------------------------------------------------------------------

def ucarp_daemons(node: Node) -> list[int]:
    found = []
    for pid in node.processes():
        try:
            program = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if program.removesuffix(" (deleted)").endswith("/usr/sbin/ucarp"):
            found.append(pid)
    return sorted(found)


def daemons(node: Node) -> int:
    """CARP daemons on the node (the pair has one vhid): ucarp's and carpd's engines."""
    return len(ucarp_daemons(node)) + len(node.engines())


@dataclass
class DaemonWatch:
    """The most CARP daemons seen on each node at once, sampled in a thread."""

    nodes: tuple[Node, ...]
    most: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> DaemonWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.nodes:
                self.most[node.name] = max(self.most.get(node.name, 0), daemons(node))
            self.samples += 1
            time.sleep(0.01)


def time_on_no_node(watch: VipWatch) -> float:
    """Total time no node held the VIP, counting each sampling interval that touches such a
    moment as wholly without it (an upper bound)."""
    total = 0.0
    for (t0, a0, b0), (t1, a1, b1) in pairwise(watch.samples):
        if not (a0 or b0) or not (a1 or b1):
            total += t1 - t0
    return total


def on_both(watch: VipWatch) -> int:
    return sum(1 for _t, a, b in watch.samples if a and b)


def sampling_interval(watch: VipWatch) -> float:
    times = [t for t, _a, _b in watch.samples]
    return max((b - a for a, b in pairwise(times)), default=0.0)


def install_carpd(node: Node) -> str:
    """apt install ./carpd.deb (ucarp goes), then migrate (from the tree if the package does
    not ship it yet: debian/rules does not install it yet)."""
    output = node.run("apt-get", "install", "-y", "-q", "--no-install-recommends",
                      node.deb_in_root, timeout=300).output
    assert "The following packages will be REMOVED" in output and "ucarp" in output, output
    script = node.root / MIGRATE
    if not script.exists():
        script.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "debian/carpd-migrate", script)
        script.chmod(0o755)
    return output + node.run(f"/{MIGRATE}", timeout=120).output


def engine_state(node: Node) -> str:
    replies = json.loads(node.run("carpctl", "status", "--json").output)
    states = [reply.get("state") for reply in replies] if isinstance(replies, list) \
        else [replies.get("state")]
    assert len(states) == 1, replies
    return str(states[0])


def test_a_ucarp_pair_migrated_node_by_node_keeps_the_vip_on_exactly_one_node(
        ucarp_pair: Pair) -> None:
    a, b = ucarp_pair.a, ucarp_pair.b
    assert isinstance(a, Node) and isinstance(b, Node)
    with Stage("migrate: ifup eth0 with Debian's ucarp on both"):
        for node in (a, b):
            node.run("ifup", "eth0")
        ucarp_pair.wait_holder(a)
    assert [len(ucarp_daemons(n)) for n in (a, b)] == [1, 1]
    assert [n.engines() for n in (a, b)] == [[], []]

    outputs = {}
    with DaemonWatch((a, b)) as counting, VipWatch(ucarp_pair) as watch:
        time.sleep(0.5)
        for node in (b, a):  # the BACKUP first, then the MASTER
            with Stage(f"migrate: apt install carpd + migrate on {node.name}"):
                outputs[node.name] = install_carpd(node)
            assert ucarp_daemons(node) == [], outputs[node.name]
            assert len(node.engines()) == 1, outputs[node.name]
        time.sleep(4.0)  # a's engine preempts b (ucarp-master yes, advskew 0)
    log = "\n".join(f"--- {name}:\n{text}" for name, text in outputs.items())
    no_node, both = time_on_no_node(watch), on_both(watch)
    record("migrate: total time the VIP was on no node", no_node)
    record("migrate: samples with the VIP on both nodes", both)
    record("migrate: longest VIP sampling interval", sampling_interval(watch))
    record("migrate: most CARP daemons on one node at once", max(counting.most.values()))
    assert counting.samples > 100
    assert counting.most == {"a": 1, "b": 1}, f"two daemons for one vhid: {counting.most}\n{log}"
    assert both == 0, f"the VIP was on both nodes in {both} samples\n{log}"
    assert no_node <= MAX_TIME_ON_NO_NODE, f"the VIP was on no node for {no_node:.3f} s\n{log}"
    assert f"vhid {VHID}: ucarp" in outputs["a"] and "is MASTER" in outputs["a"], log
    assert "took over after" in outputs["a"], log
    assert "is BACKUP" in outputs["b"], log
    assert "pkg-test-secret" not in log

    states = sorted(engine_state(node) for node in (a, b))
    assert states == ["BACKUP", "MASTER"], log
    assert ucarp_pair.holders() == [a]
