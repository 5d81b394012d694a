"""Several groups per interface on the systemd path: a booted Debian 13 (systemd-nspawn) whose
networking.service brings up Debian's alias form at boot (see test_systemd_boot.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from ifnodes import Lab, wait_for
from test_groups_netns import VIPS, debian_alias_form
from test_systemd_boot import BOOT, ELECTION, Booted, _boot

pytestmark = pytest.mark.netns

UNIT = "carpd@eth0.service"


@pytest.fixture
def booted_aliases(lab: Lab, tmp_path: Path) -> Iterator[Booted]:
    text = debian_alias_form(1, {1: 0, 2: 0}).replace("auto eth0\n", "auto eth0 eth0:1 eth0:2\n")
    yield from _boot(lab, tmp_path, "auto lo\niface lo inet loopback\n\n" + text)


def _labels(booted: Booted) -> dict[str, str]:
    found = booted.node.addresses()
    return {vip: found[vip] for vip in VIPS.values() if vip in found}


def test_at_boot_one_unit_runs_every_alias_group_and_ifdown_of_one_leaves_the_other(
        booted_aliases: Booted) -> None:
    booted = booted_aliases
    assert wait_for(lambda: booted.state("networking.service") == "active", BOOT), (
        booted.console.read_text(errors="replace")[-3000:])
    # eth0:2's hook finds eth0:1's unit still starting (--no-block): it waits, then reloads
    expected = {VIPS[1]: "eth0:1:ucarp", VIPS[2]: "eth0:2:ucarp"}
    assert wait_for(lambda: _labels(booted) == expected, ELECTION), (
        booted.inside("journalctl -b --no-pager | tail -60").stdout)
    conf = json.loads(booted.inside("cat /run/carpd/eth0.conf").stdout)
    assert [g["vhid"] for g in conf["groups"]] == [1, 2]
    pid = booted.main_pid(UNIT)

    down = booted.inside("ifdown eth0:1")
    assert down.returncode == 0, down.stderr
    assert _labels(booted) == {VIPS[2]: "eth0:2:ucarp"}
    assert booted.main_pid(UNIT) == pid  # the engine runs on, with group 2

    stopped = booted.inside("systemctl stop networking.service")
    assert stopped.returncode == 0, stopped.stderr
    assert booted.state(UNIT) == "inactive"
    assert _labels(booted) == {}
