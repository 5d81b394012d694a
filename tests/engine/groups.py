"""Helpers for engines that run several VIP groups (``carpd --config`` with ``"groups"``)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from carpd.engine import control
from lab.netns import CARPD, PASSWORD, Daemon, Event, Network, Node

VIPS = {1: IPv4Address("10.9.1.101"), 2: IPv4Address("10.9.1.102"),
        3: IPv4Address("10.9.1.103")}

_SCRIPT = """#!/bin/sh
# group {vhid} on {node}: log the event with a timestamp, then {action} the VIP
echo "$(date +%s.%N) {event} $*" >> {log}
{extra}
ip addr {action} "$2"/32 dev {dev} label {dev}:ucarp 2>/dev/null
exit 0
"""


@dataclass
class GroupsEngine:
    """One carpd process of a node running the groups of its --config file."""

    daemon: Daemon
    config: Path
    state_dir: Path

    @property
    def pid(self) -> int:
        return self.daemon.pid

    def events(self, vhid: int) -> list[Event]:
        path = self.daemon.directory / f"events.{vhid}.log"
        if not path.exists():
            return []
        events = []
        for line in path.read_text().splitlines():
            when, event, *args = line.split()
            events.append(Event(float(when), event, tuple(args)))
        return events

    def request(self, **request: Any) -> dict[str, Any]:
        return control.request(control.socket_path(self.state_dir, "eth0"), request)

    def groups(self) -> dict[int, dict[str, Any]]:
        reply = self.request(cmd="status")
        return {int(g["vhid"]): g for g in reply["groups"]}

    def state(self, vhid: int) -> str | None:
        try:
            group = self.groups().get(vhid)
        except (OSError, ValueError):
            return None
        return None if group is None else str(group["state"])

    def masters(self) -> dict[int, str | None]:
        """The master each group hears ({} while the engine does not answer yet)."""
        try:
            return {vhid: g["master"] for vhid, g in self.groups().items()}
        except (OSError, ValueError):
            return {}

    def rewrite(self, groups: Sequence[dict[str, Any]]) -> None:
        write_config(self.config, self.state_dir, self.daemon.node, groups,
                     self.daemon.directory)

    def log(self) -> str:
        return self.daemon.log()


def group(vhid: int, **keys: Any) -> dict[str, Any]:
    """One group's keys (the scripts are added by :func:`start_groups`)."""
    return {"vhid": vhid, "addr": str(VIPS[vhid]), "drain": 0, **keys}


def _scripts(directory: Path, node: Node, vhid: int, hang_up: bool,
             dev: str = "eth0") -> dict[str, str]:
    paths = {}
    for event, action in (("up", "add"), ("down", "del")):
        script = directory / f"{event}.{vhid}.sh"
        extra = "sleep 60" if hang_up and event == "up" else ""
        script.write_text(_SCRIPT.format(vhid=vhid, node=node.name, event=event, action=action,
                                         log=directory / f"events.{vhid}.log", extra=extra,
                                         dev=dev))
        script.chmod(0o755)
        paths[event] = str(script)
    return paths


def write_config(path: Path, state_dir: Path, node: Node, groups: Sequence[dict[str, Any]],
                 directory: Path) -> None:
    entries = []
    for entry in groups:
        entry = dict(entry)
        hang = bool(entry.pop("hang_up", False))
        dev = str(entry.pop("script_dev", "eth0"))
        scripts = _scripts(directory, node, int(entry["vhid"]), hang, dev)
        entries.append({"srcip": str(node.address), "password": PASSWORD.decode(),
                        "upscript": scripts["up"], "downscript": scripts["down"], **entry})
    config = {"interface": "eth0", "facility": "none", "state_dir": str(state_dir),
              "groups": entries}
    temporary = path.with_suffix(".tmp")
    temporary.touch(mode=0o600)
    temporary.write_text(json.dumps(config))
    os.replace(temporary, path)


def start_groups(net: Network, node: Node, groups: Sequence[dict[str, Any]],
                 state_dir: Path | None = None) -> GroupsEngine:
    directory = net.directory / f"{node.name}-groups-{len(node.daemons)}"
    directory.mkdir()
    state_dir = state_dir or directory / "state"
    config = directory / "carpd.json"
    write_config(config, state_dir, node, groups, directory)
    command = [*CARPD, "--config", str(config)]
    with open(directory / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(["ip", "netns", "exec", node.ns, *command],
                                   stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                   start_new_session=True)
    first = groups[0]
    daemon = Daemon("carpd", node, int(first["vhid"]), VIPS[int(first["vhid"])], process,
                    directory, command)
    node.daemons.append(daemon)
    net.daemons.append(daemon)
    return GroupsEngine(daemon, config, state_dir)
