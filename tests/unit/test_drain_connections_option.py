"""``ucarp-drain-connections`` / ``--drain-connections``: from the stanza to the conf, and the
time a stop may take (the engine's EXTEND_TIMEOUT_USEC, the hook's and carpd-engines' wait)
follows the longer of it and the drain.  Pure: files in a temporary folder."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from carpd.config import load
from carpd.debian.ifupdown import runtime
from carpd.debian.ifupdown import stanza as ucarp
from carpd.engine.group import params

BASE = {"ucarp-vid": "1", "ucarp-vip": "10.0.0.101", "ucarp-password": "secret",
        "ucarp-upscript": "/bin/true", "ucarp-downscript": "/bin/true"}


def _conf(tmp_path: Path, **extra: str) -> Path:
    group = ucarp.group({**BASE, **extra}, name="eth1", check_interface=False)
    paths = runtime.Paths("eth1", tmp_path)
    runtime.write_private(paths.conf, runtime.conf_text([group]))
    return paths.conf


def test_the_stop_budget_follows_drain_connections(tmp_path: Path) -> None:
    conf = _conf(tmp_path, **{"ucarp-drain-connections": "600"})
    [engine] = runtime.groups_from_conf(conf)
    assert engine.drain_connections == 600.0
    assert runtime.stop_budget(conf) == load.stop_budget(600.0, 30.0) == 645.0


def test_a_drain_longer_than_drain_connections_still_counts(tmp_path: Path) -> None:
    conf = _conf(tmp_path, **{"ucarp-drain": "90", "ucarp-drain-connections": "10"})
    assert runtime.stop_budget(conf) == load.stop_budget(90.0, 30.0)


def test_without_drain_connections_the_budget_is_as_before(tmp_path: Path) -> None:
    assert runtime.stop_budget(_conf(tmp_path)) == load.stop_budget(2.0, 30.0)


def test_the_command_line_option_reaches_the_core() -> None:
    options = load.from_command_line(
        ["-i", "eth0", "-s", "10.0.0.1", "-v", "1", "-p", "x", "-a", "10.0.0.101",
         "--drain-connections", "60"])
    assert params(options, IPv4Address("10.0.0.1")).drain_connections == 60.0
