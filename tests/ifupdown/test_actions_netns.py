"""The up and down actions: Debian's defaults with a gratuitous ARP for each address the alias
adds, custom scripts with ucarp's arguments, and carpctl demote handing the VIP over."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import threading

import pytest
from ifnodes import VIP, Lab, stanza, wait_for

pytestmark = pytest.mark.netns

ELECTION = 15.0
EXTRA = "10.77.0.2"


def test_master_sends_gratuitous_arp_for_every_address_the_alias_added(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(stanza(1, alias_extra=f"""\
        up ip addr add {EXTRA}/32 dev eth0 label eth0:ucarp
        down ip addr del {EXTRA}/32 dev eth0
        """))
    sniffer = lab.sniff_arp()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(sniffer.stdout.readline, "")),
                              daemon=True)
    reader.start()
    assert node.ifup("eth0").returncode == 0, node.log()
    assert wait_for(node.holds_vip, ELECTION), node.log()
    # ifup adds the VIP (the alias's address) before it runs the alias's up commands
    assert wait_for(lambda: node.addresses().get(EXTRA) == "eth0:ucarp", 5.0), node.addresses()

    def announced(address: str) -> bool:
        quoted = re.escape(address)
        pattern = re.compile(rf"(who-has {quoted} (\(\S+\) )?tell {quoted},|Reply {quoted} is-at)")
        return any(pattern.search(line) for line in list(lines))

    assert wait_for(lambda: announced(VIP) and announced(EXTRA), 5.0), lines
    assert node.ifdown("eth0").returncode == 0
    assert EXTRA not in node.addresses() and VIP not in node.addresses()


def test_engine_killed_releases_every_address_of_the_alias(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(stanza(1, alias_extra=f"""\
        up ip addr add {EXTRA}/32 dev eth0 label eth0:ucarp
        """))  # no down command: only carpd can take it away
    assert node.ifup("eth0").returncode == 0, node.log()
    assert wait_for(lambda: EXTRA in node.addresses(), ELECTION), node.log()
    (engine,) = node.engines()
    os.kill(engine, signal.SIGKILL)
    assert wait_for(lambda: not {VIP, EXTRA} & set(node.addresses()), 5.0), node.log()


def test_custom_scripts_get_ucarps_arguments(lab: Lab) -> None:
    node = lab.node()
    calls = node.home / "calls"
    for name in ("up", "down"):
        script = node.home / f"{name}.sh"
        script.write_text(f'#!/bin/sh\nprintf "%s|" {name} "$#" "$@" >> {calls}\n'
                          f'echo >> {calls}\n')
        script.chmod(0o755)
    node.write_interfaces(stanza(1, extra=textwrap.dedent(f"""\
        ucarp-upscript {node.home / 'up.sh'}
        ucarp-downscript {node.home / 'down.sh'}
        ucarp-xparam two  words*
        """)))
    assert node.ifup("eth0").returncode == 0, node.log()
    expected_up = f"up|3|eth0|{VIP}|two  words*|"
    assert wait_for(lambda: calls.exists() and expected_up in calls.read_text(), ELECTION)
    assert node.ifdown("eth0").returncode == 0
    assert calls.read_text().splitlines() == [
        f"down|3|eth0|{VIP}|two  words*|", expected_up, f"down|3|eth0|{VIP}|two  words*|"]


def test_carpctl_demote_on_the_master_hands_the_vip_to_the_peer(lab: Lab) -> None:
    nodes = []
    for number in (1, 2):
        node = lab.node()
        node.write_interfaces(stanza(number))
        assert node.ifup("eth0").returncode == 0, node.log()
        nodes.append(node)
    assert wait_for(lambda: sum(n.holds_vip() for n in nodes) == 1, ELECTION)
    master = next(n for n in nodes if n.holds_vip())
    backup = next(n for n in nodes if n is not master)
    assert master.sh("carpctl demote eth0").returncode == 0
    assert wait_for(lambda: backup.holds_vip() and not master.holds_vip(), ELECTION), (
        master.log(), backup.log())
