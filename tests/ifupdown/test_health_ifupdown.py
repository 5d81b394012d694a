"""Health tracking through the real ifup/ifdown (issue 11): a stanza with ``ucarp-track-script``
and ``ucarp-track-interface`` starts an engine that tracks both, and the MASTER failing either
moves the VIP: the eth0:ucarp alias goes down on it and up on the peer.

Each node has a second veth, ``eth1`` (the tracked interface), whose other end sits unplugged in
the lab's switch namespace: setting that end down takes eth1's carrier away.  Each node's check
script fails while the file ``sick`` in the node's folder exists.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest
from ifnodes import VIP, Lab, Node, stanza, wait_for

from lab.netns import Capture

pytestmark = pytest.mark.netns

ELECTION = 15.0
"""Generous: master-down is ~3 s, the CI machine is loaded."""
INTERVAL = 0.5
FALL = 2
SLACK = 1.0
"""Scheduling on a loaded CI machine, and the up action (ifup eth0:ucarp) itself."""
DRAIN = 2.0

CHECK = """#!/bin/sh
if [ -e "$1" ]; then echo "service down"; exit 7; fi
exit 0
"""

TRACK = """\
ucarp-track-script {check}
ucarp-track-script /bin/true
ucarp-track-interval {interval}
ucarp-track-fall {fall}
ucarp-track-rise 2
ucarp-track-interface eth1
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _tracked_link(lab: Lab, node: Node) -> str:
    """``eth1`` in ``node``, its other end (returned) up and unplugged in the switch
    namespace."""
    peer = f"t{node.name}"
    _ip("link", "add", "eth1", "netns", node.netns, "type", "veth", "peer", "name", peer,
        "netns", lab.switch)
    _ip("-n", lab.switch, "link", "set", peer, "up")
    _ip("-n", node.netns, "link", "set", "eth1", "up")
    assert wait_for(lambda: node.sh("cat /sys/class/net/eth1/carrier").stdout == "1\n", 5)
    return peer


def _check_script(node: Node) -> str:
    """The check command (the script and its argument) for ``node``."""
    path = node.home / "check"
    path.write_text(CHECK)
    path.chmod(0o755)
    return f"{path} {node.home / 'sick'}"


def _status(node: Node) -> dict[str, Any]:
    result = node.sh("carpctl status eth0 --json")
    assert result.returncode == 0, result.stderr + node.log()
    (reply,) = json.loads(result.stdout)
    assert isinstance(reply, dict)
    return reply


def _up_tracked_pair(lab: Lab) -> tuple[dict[str, str], dict[str, str]]:
    peers, checks = {}, {}
    for number in (1, 2):
        node = lab.node()
        peers[node.name] = _tracked_link(lab, node)
        checks[node.name] = _check_script(node)
        node.write_interfaces(stanza(number, extra=TRACK.format(
            check=checks[node.name], interval=INTERVAL, fall=FALL)))
        result = node.ifup("eth0")
        assert result.returncode == 0, result.stderr + node.log()
    return peers, checks


@pytest.fixture
def wire(lab: Lab) -> Iterator[Capture]:
    """The adverts on the lab's bridge (lab/netns.py's capture, kernel timestamps)."""
    capture = Capture(lab.switch)
    try:
        yield capture
    finally:
        capture.close()


def _address(node: Node) -> IPv4Address:
    return IPv4Address(f"10.77.0.{10 + int(node.name.removeprefix('n'))}")


@pytest.mark.parametrize("cause", ["script", "carrier"])
def test_failing_check_or_lost_carrier_on_the_master_moves_the_eth0_ucarp_alias(
        lab: Lab, wire: Capture, cause: str) -> None:
    peers, checks = _up_tracked_pair(lab)
    assert wait_for(lambda: sum(n.holds_vip() for n in lab.nodes) == 1, ELECTION), (
        [n.addresses() for n in lab.nodes], [n.log() for n in lab.nodes])
    master = next(n for n in lab.nodes if n.holds_vip())
    backup = next(n for n in lab.nodes if n is not master)
    assert master.addresses()[VIP] == "eth0:ucarp"
    for node in lab.nodes:
        reply = _status(node)
        assert reply["healthy"] is True, reply
        tracked = {(entry["kind"], entry["name"]) for entry in reply["health"]}
        assert tracked == {("script", checks[node.name]), ("script", "/bin/true"),
                           ("interface", "eth1")}, reply

    watch = backup.watch_for_address(VIP)
    failed = time.time()
    if cause == "script":
        (master.home / "sick").touch()
        bound = FALL * INTERVAL + INTERVAL + SLACK
    else:
        _ip("-n", lab.switch, "link", "set", peers[master.name], "down")
        bound = 2.0
    added = watch.wait(timeout=bound + 5)
    assert added is not None, backup.log()
    print(f"the peer had the VIP {added - failed:.3f} s after the {cause} failed")
    assert added - failed < bound, (master.log(), backup.log())
    # the master bowed out, and the peer took over at that (not at the master's next advert)
    bow = wire.wait_frame(lambda f: f.source == _address(master) and f.bow_out, 1, failed)
    first = wire.wait_frame(lambda f: f.source == _address(backup), 1, failed)
    assert failed <= bow.time <= first.time < bow.time + 0.5
    assert backup.addresses()[VIP] == "eth0:ucarp"
    assert wait_for(lambda: not master.holds_vip(), DRAIN + SLACK + 1), master.log()
    assert "eth0:ucarp" in (backup.state / "ifstate").read_text()
    assert wait_for(lambda: "eth0:ucarp" not in (master.state / "ifstate").read_text(), 5)

    reply = _status(master)
    assert (reply["state"], reply["healthy"]) == ("BACKUP", False), reply
    assert (checks[master.name] if cause == "script" else "eth1") in reply["why"]
    assert _status(backup)["state"] == "MASTER"
    time.sleep(3)  # and it stays that way
    assert [n.holds_vip() for n in lab.nodes] == [n is backup for n in lab.nodes]
