"""carpctl with engines of several groups (issue 9, item 9): one socket per interface
(``IFACE.sock``) answers for every group; ``status``/``metrics`` list each group,
``demote``/``promote IFACE [VHID]`` reach every group or one, through that socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ctlserver import Served
from test_metrics import status_reply

from carpd.debian import carpctl
from carpd.engine import control


class GroupsEngine(Served):
    """The control side of an engine of the interface, running ``vhids``; records requests."""

    def __init__(self, state_dir: Path, interface: str, vhids: list[int]) -> None:
        self.groups = {v: status_reply(v, interface=interface) for v in vhids}
        self.interface = interface
        self.requests: list[dict[str, Any]] = []
        super().__init__(control.socket_path(state_dir, interface), self._answer)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        vhid = request.get("vhid")
        chosen = [g for v, g in self.groups.items() if vhid in (None, v)]
        if not chosen:
            return {"ok": False, "error": f"no group with vhid {vhid}"}
        for group in chosen:
            if request.get("cmd") == "demote":
                group["demoted"], group["state"] = True, "BACKUP"
        reply = {"ok": True, "interface": self.interface, "pid": 4242, "groups": chosen}
        return {**chosen[0], **reply} if len(chosen) == 1 else reply


@pytest.fixture
def engine(state_dir: Path) -> Iterator[GroupsEngine]:
    started = GroupsEngine(state_dir, "eth0", [1, 2, 3])
    try:
        yield started
    finally:
        started.close()


def run(state_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = carpctl.main(["--state-dir", str(state_dir), "--dpkg-status", "/nonexistent",
                         *argv])
    return code, capsys.readouterr().out


def test_status_lists_every_group_of_the_interfaces_engine(
        state_dir: Path, engine: GroupsEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(state_dir, capsys, "status", "eth0", "--json")
    assert code == 0
    assert [(r["interface"], r["vhid"]) for r in json.loads(out)] == [
        ("eth0", 1), ("eth0", 2), ("eth0", 3)]
    code, out = run(state_dir, capsys, "status", "eth0", "2", "--json")
    assert [r["vhid"] for r in json.loads(out)] == [2]
    code, out = run(state_dir, capsys, "status")
    assert code == 0 and len([line for line in out.splitlines() if line.startswith("eth0 ")]) == 3


def test_demote_with_a_vhid_asks_the_interfaces_socket_for_that_group_only(
        state_dir: Path, engine: GroupsEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(state_dir, capsys, "demote", "eth0", "2")
    assert code == 0, out
    assert engine.requests[-1] == {"cmd": "demote", "vhid": 2}
    assert out.strip() == "eth0 vhid 2: demoted, now BACKUP"
    assert [engine.groups[v]["demoted"] for v in (1, 2, 3)] == [False, True, False]


def test_demote_without_a_vhid_reaches_every_group(
        state_dir: Path, engine: GroupsEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(state_dir, capsys, "demote", "eth0")
    assert code == 0, out
    assert engine.requests[-1] == {"cmd": "demote"}
    assert out.splitlines() == [f"eth0 vhid {v}: demoted, now BACKUP" for v in (1, 2, 3)]


def test_a_vhid_the_engine_does_not_run_is_no_engine(
        state_dir: Path, engine: GroupsEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out = run(state_dir, capsys, "status", "eth0", "9")
    assert code == carpctl.EXIT_NO_ENGINE


def test_metrics_has_one_series_per_group(
        state_dir: Path, engine: GroupsEngine, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(state_dir, capsys, "metrics", "eth0")
    assert code == 0
    ups = [line for line in out.splitlines() if line.startswith("carpd_up{")]
    assert ups == [f'carpd_up{{interface="eth0",vhid="{v}",vip="10.0.0.{v}"}} 1'
                   for v in (1, 2, 3)]


def test_a_configured_groups_engine_that_does_not_run_lists_each_group_down(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (state_dir / "eth7.conf").write_text(json.dumps({"interface": "eth7", "groups": [
        {"vhid": 4, "addr": "10.0.0.4"}, {"vhid": 5, "addr": "10.0.0.5"}]}))
    code, out = run(state_dir, capsys, "metrics")
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("carpd_up{")] == [
        'carpd_up{interface="eth7",vhid="4",vip="10.0.0.4"} 0',
        'carpd_up{interface="eth7",vhid="5",vip="10.0.0.5"} 0']
