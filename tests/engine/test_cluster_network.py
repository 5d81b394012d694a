"""A dedicated cluster network (issue 9, item 7): each node has eth0 on the service LAN (br0)
and eth1 on a cluster LAN of its own (br1); the engine runs on eth1 with ``--vip-interface
eth0``.  Adverts only on the cluster LAN; the VIP and its gratuitous ARP only on the service
LAN; failover when a's eth1 loses its cable, when a's eth0 does, and when a dies; a VIP
deleted from eth0 by hand comes back."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from carpd.engine import control
from lab.garp import frame_socket, parse_garp
from lab.netns import CARPD, PASSWORD, VIP, Capture, Daemon, Network, Node, run, wait_for

pytestmark = pytest.mark.netns

ELECTION = 15.0
_SCRIPT = """#!/bin/sh
# {event} on {node}: the VIP goes on (or off) eth0, whatever interface the adverts use ($1)
echo "$(date +%s.%N) {event} $*" >> {log}
ip addr {action} "$2"/32 dev eth0 label eth0:ucarp 2>/dev/null
exit 0
"""


@dataclass
class Cluster:
    net: Network
    lan: Capture
    """Every frame on the cluster LAN (br1)."""
    ports: dict[str, tuple[str, str]]
    """node name -> (its port on br0, its port on br1)."""


def cluster_address(node: Node) -> IPv4Address:
    return IPv4Address(int(node.address) + (1 << 16))  # 10.9.x.y -> 10.10.x.y


def build(net: Network, count: int = 2) -> tuple[Cluster, list[Node]]:
    lan = net.add_lan("br1")
    nodes, ports = [], {}
    for n in range(count):
        node = net.add_node(f"10.9.1.{n + 1}")
        port = net.plug(node, "br1", "eth1", str(cluster_address(node)))
        ports[node.name] = (node.port, port)
        nodes.append(node)
    return Cluster(net, lan, ports), nodes


def start(node: Node, advskew: int, preempt: bool = True) -> Daemon:
    """carpd on ``node``: adverts on eth1, the VIP on eth0."""
    directory = node.network.directory / f"{node.name}-cluster-{len(node.daemons)}"
    directory.mkdir()
    passfile = directory / "password"
    passfile.touch(mode=0o600)
    passfile.write_bytes(PASSWORD + b"\n")
    scripts = {}
    for event, action in (("up", "add"), ("down", "del")):
        script = directory / f"{event}.sh"
        script.write_text(_SCRIPT.format(event=event, node=node.name, action=action,
                                         log=directory / "events.log"))
        script.chmod(0o755)
        scripts[event] = str(script)
    command = [*CARPD, "-i", "eth1", "--vip-interface", "eth0", "-s",
               str(cluster_address(node)), "-v", "1", "-o", str(passfile), "-a", str(VIP),
               "-k", str(advskew), "-u", scripts["up"], "-d", scripts["down"], "-f", "none",
               "--drain", "0", "--state-dir", str(directory / "state"),
               *(["-P"] if preempt else [])]
    with open(directory / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(["ip", "netns", "exec", node.ns, *command],
                                   stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                   start_new_session=True)
    daemon = Daemon("carpd", node, 1, VIP, process, directory, command)
    node.daemons.append(daemon)
    node.network.daemons.append(daemon)
    return daemon


def status(daemon: Daemon) -> dict[str, object]:
    return control.request(daemon.directory / "state" / "eth1.1.sock", {"cmd": "status"})


def state(daemon: Daemon) -> object:
    try:
        return status(daemon)["state"]
    except (OSError, ValueError):
        return None


def addresses(node: Node, ifname: str) -> set[IPv4Address]:
    out = node.exec("ip", "-j", "-4", "addr", "show", "dev", ifname).stdout
    return {IPv4Address(a["local"]) for link in json.loads(out) for a in link["addr_info"]}


def holders(nodes: list[Node]) -> list[str]:
    return [n.name for n in nodes if n.has(VIP)]


def expect_holder(nodes: list[Node], name: str, timeout: float = ELECTION) -> None:
    assert wait_for(lambda: holders(nodes) == [name], timeout), (
        holders(nodes), [d.log() for n in nodes for d in n.daemons])


def set_port(net: Network, port: str, up: bool) -> None:
    run("ip", "-n", net.switch, "link", "set", port, "up" if up else "down")


class GarpSniffer:
    """The gratuitous ARP requests (sender address) seen on a node's interface."""

    def __init__(self, node: Node, ifname: str) -> None:
        self._sock = frame_socket(node, ifname)
        self.seen: list[IPv4Address] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._sock], [], [], 0.1)[0]:
                continue
            if (garp := parse_garp(self._sock.recv(2048))) is not None:
                self.seen.append(garp.address)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def test_adverts_go_on_the_cluster_lan_only_and_the_vip_and_its_arp_on_the_service_lan(
        net: Network) -> None:
    cluster, (a, b) = build(net)
    sniffers = {(n.name, i): GarpSniffer(n, i) for n in (a, b) for i in ("eth0", "eth1")}
    try:
        da, db = start(a, 0), start(b, 100)
        expect_holder([a, b], "a")
        assert wait_for(lambda: state(da) == "MASTER" and state(db) == "BACKUP", 5)
        since = time.time()
        time.sleep(3.5)
    finally:
        for sniffer in sniffers.values():
            sniffer.close()
    adverts = cluster.lan.frames(since=since)
    assert {f.source for f in adverts} == {cluster_address(a)}, adverts
    assert all(f.valid_for(1, PASSWORD) for f in adverts) and len(adverts) >= 2
    assert net.capture.frames() == [], "no CARP frame on the service LAN"
    assert VIP in addresses(a, "eth0") and VIP not in addresses(a, "eth1")
    assert VIP in sniffers[("a", "eth0")].seen, "gratuitous ARP on the VIP's interface"
    assert VIP not in sniffers[("a", "eth1")].seen, "no gratuitous ARP on the cluster LAN"
    reply = status(da)
    assert (reply["interface"], reply["vip_interface"]) == ("eth1", "eth0")
    assert [e.args for e in da.ups()] == [("eth0", str(VIP))]  # the scripts get the VIP's


def test_b_takes_over_when_as_cluster_link_goes_and_a_preempts_when_it_returns(
        net: Network) -> None:
    cluster, (a, b) = build(net)
    da, db = start(a, 0), start(b, 100)
    expect_holder([a, b], "a")
    set_port(net, cluster.ports["a"][1], up=False)  # a's eth1 loses carrier
    expect_holder([a, b], "b")
    assert state(db) == "MASTER" and state(da) != "MASTER"
    set_port(net, cluster.ports["a"][1], up=True)
    expect_holder([a, b], "a")
    assert wait_for(lambda: state(db) == "BACKUP", 5)


def test_b_takes_over_when_as_service_link_goes(net: Network) -> None:
    cluster, (a, b) = build(net)
    da, db = start(a, 0), start(b, 100)
    expect_holder([a, b], "a")
    set_port(net, cluster.ports["a"][0], up=False)  # a's eth0 (the VIP's) loses carrier
    assert wait_for(lambda: state(db) == "MASTER", ELECTION), (da.log(), db.log())
    expect_holder([a, b], "b")
    assert "unhealthy" in str(status(da)["why"])


def test_b_takes_over_when_a_dies_and_as_watchdog_clears_the_vip_from_its_eth0(
        net: Network) -> None:
    _cluster, (a, b) = build(net)
    da, db = start(a, 0), start(b, 100)
    expect_holder([a, b], "a")
    os.kill(da.pid, signal.SIGKILL)
    assert wait_for(lambda: state(db) == "MASTER", ELECTION), db.log()
    expect_holder([a, b], "b", 5)


def test_a_vip_deleted_from_the_vip_interface_while_master_comes_back(net: Network) -> None:
    _cluster, (a,) = build(net, 1)
    da = start(a, 0)
    expect_holder([a], "a")
    a.remove_address(VIP)
    assert wait_for(lambda: a.has(VIP), 5.0), da.log()
    assert state(da) == "MASTER"
    assert "was deleted from eth0 while MASTER" in da.log()
