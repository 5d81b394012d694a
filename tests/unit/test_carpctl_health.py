"""carpctl against real control sockets: demote --persistent, promote and status of one group,
and why a group is BACKUP.

Each engine here is a real :class:`carpd.engine.control.ControlServer` on a unix socket, served from
a thread, answering with the replies the control protocol documents."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from ctlserver import Served

from carpd.debian import carpctl
from carpd.engine import control

WHY_DEMOTED = "demoted (persistent) since 12:03:04"
WHY_UNHEALTHY = ("unhealthy: check '/usr/share/carpd/checks/http-url http://127.0.0.1/' failing "
                 "since 12:03:04 (exit 7): curl: (7) Failed to connect")


def status_reply(vhid: int, **changes: Any) -> dict[str, Any]:
    """A status reply as the control protocol documents it, of a healthy MASTER."""
    reply: dict[str, Any] = {
        "ok": True, "interface": "eth0", "vhid": vhid, "vip": f"10.0.0.{vhid}",
        "srcip": "10.0.0.100", "state": "MASTER", "since": 1_700_000_000.0, "demoted": False,
        "master": None, "master_since": None, "pid": 4242, "sent": 10, "accepted": 0,
        "rejected": {}, "demotion": None, "healthy": True, "health": [], "why": None}
    reply.update(changes)
    return reply


DEMOTED: dict[str, Any] = {"state": "BACKUP", "demoted": True, "why": WHY_DEMOTED,
           "demotion": {"persistent": True, "until": None, "since": 1_700_000_000.0}}
UNHEALTHY: dict[str, Any] = {"state": "BACKUP", "healthy": False, "why": WHY_UNHEALTHY, "health": [
    {"kind": "script", "name": "/usr/share/carpd/checks/http-url http://127.0.0.1/",
     "healthy": False, "since": 1_700_000_000.0, "rc": 7,
     "output": "curl: (7) Failed to connect"},
    {"kind": "interface", "name": "eth1", "healthy": True, "since": 1_700_000_000.0,
     "rc": None, "output": ""}]}


class FakeEngine(Served):
    """The control side of one engine: records each request, answers as told."""

    def __init__(self, state_dir: Path, vhid: int, *, before_issue_11: bool = False,
                 **reply: Any) -> None:
        self.requests: list[dict[str, Any]] = []
        self.before_issue_11 = before_issue_11  # no persistent demotions, no "demotion" field
        self.reply = status_reply(vhid, **reply)
        super().__init__(control.socket_path(state_dir, "eth0", vhid), self._handle)

    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        reply = copy.deepcopy(self.reply)
        if request.get("cmd") == "demote" and self.before_issue_11:
            reply.update(state="BACKUP", demoted=True)
            del reply["demotion"]
        elif request.get("cmd") == "demote":
            persistent = bool(request.get("persistent"))
            reply.update(state="BACKUP", demoted=True, demotion={
                "persistent": persistent, "until": None, "since": 1_700_000_000.0})
        return reply


def carpctl_run(state_dir: Path, *argv: str) -> int:
    return carpctl.main(["--state-dir", str(state_dir), "--dpkg-status", "/nonexistent",
                         *argv])


def test_demote_persistent_asks_for_a_persistent_demotion(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    engines.append(FakeEngine(state_dir, 7))
    assert carpctl_run(state_dir, "demote", "eth0", "--persistent") == 0
    assert engines[0].requests == [{"cmd": "demote", "persistent": True}]
    assert capsys.readouterr().out == "eth0 vhid 7: demoted (persistent), now BACKUP\n"


def test_a_plain_demote_asks_for_a_plain_one(state_dir: Path, engines: list[FakeEngine],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    engines.append(FakeEngine(state_dir, 7))
    assert carpctl_run(state_dir, "demote", "eth0") == 0
    assert engines[0].requests == [{"cmd": "demote"}]
    assert capsys.readouterr().out == "eth0 vhid 7: demoted, now BACKUP\n"


def test_demote_persistent_fails_when_the_engine_did_not_make_it_persistent(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    engines.append(FakeEngine(state_dir, 7, before_issue_11=True))
    assert carpctl_run(state_dir, "demote", "eth0", "--persistent") == 1
    assert "did not record the demotion as persistent" in capsys.readouterr().err


def test_promote_with_a_vhid_asks_only_that_groups_engine(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    engines += [FakeEngine(state_dir, 7, **DEMOTED), FakeEngine(state_dir, 8, **DEMOTED)]
    assert carpctl_run(state_dir, "promote", "eth0", "8") == 0
    assert (engines[0].requests, engines[1].requests) == ([], [{"cmd": "promote"}])
    assert capsys.readouterr().out.startswith("eth0 vhid 8: promoted, now ")


def test_demote_without_a_vhid_asks_every_group_on_the_interface(
        state_dir: Path, engines: list[FakeEngine]) -> None:
    engines += [FakeEngine(state_dir, 7), FakeEngine(state_dir, 8)]
    assert carpctl_run(state_dir, "demote", "eth0", "--persistent") == 0
    assert [e.requests for e in engines] == [[{"cmd": "demote", "persistent": True}]] * 2


def test_status_with_a_vhid_shows_only_that_group(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    engines += [FakeEngine(state_dir, 7), FakeEngine(state_dir, 8, **UNHEALTHY)]
    assert carpctl_run(state_dir, "status", "eth0", "8", "--json") == 0
    (reply,) = json.loads(capsys.readouterr().out)
    assert reply["vhid"] == 8
    assert engines[0].requests == []


def test_status_of_a_vhid_without_engine_says_which(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    engines.append(FakeEngine(state_dir, 7))
    assert carpctl_run(state_dir, "status", "eth0", "9") == carpctl.EXIT_NO_ENGINE
    assert capsys.readouterr().err == (f"carpctl: no carpd engine on eth0 vhid 9 (no control "
                                       f"socket in {state_dir})\n")


def test_status_shows_why_each_group_is_backup_under_its_row(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    engines += [FakeEngine(state_dir, 7, **DEMOTED), FakeEngine(state_dir, 8, **UNHEALTHY),
                FakeEngine(state_dir, 9)]
    assert carpctl_run(state_dir, "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["IFACE", "VHID", "VIP", "STATE", "FOR", "MASTER", "DEMOTED",
                                "PID"]
    assert lines[1].split()[:4] == ["eth0", "7", "10.0.0.7", "BACKUP"]
    assert lines[2] == f"  why: {WHY_DEMOTED}"
    assert lines[3].split()[:4] == ["eth0", "8", "10.0.0.8", "BACKUP"]
    assert lines[4] == f"  why: {WHY_UNHEALTHY}"
    assert lines[5].split()[:4] == ["eth0", "9", "10.0.0.9", "MASTER"]
    # a healthy MASTER needs no why; the fake VIP is not on this host's eth0
    assert lines[6:] in ([], ["  vip: MASTER, but 10.0.0.9 is not on eth0"])


def test_a_why_carrying_a_checks_line_breaks_and_escapes_stays_on_one_line(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    why = "unhealthy: check '/bin/check' failing since 12:03:04 (exit 1): a\nb\r\x1b[2Jc"
    engines.append(FakeEngine(state_dir, 7, state="BACKUP", healthy=False, why=why))
    assert carpctl_run(state_dir, "status", "eth0") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("  why: unhealthy: check '/bin/check' failing since 12:03:04 (exit 1): "
                        "a b  [2Jc")
    assert len(lines) == 3


def test_status_json_passes_demotion_health_and_why_through(
        state_dir: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]) -> None:
    engines += [FakeEngine(state_dir, 7, **DEMOTED), FakeEngine(state_dir, 8, **UNHEALTHY)]
    assert carpctl_run(state_dir, "status", "eth0", "--json") == 0
    replies = json.loads(capsys.readouterr().out)
    fields = ("demotion", "healthy", "health", "why")
    assert [{k: r[k] for k in fields} for r in replies] == [
        {k: e.reply[k] for k in fields} for e in engines]


@pytest.mark.parametrize("vhid", ["0", "256", "seven"])
def test_a_vhid_out_of_range_is_refused(state_dir: Path, vhid: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        carpctl_run(state_dir, "demote", "eth0", vhid)
    assert caught.value.code == 2
    assert f"{vhid!r}: a VHID is a number from 1 to 255" in capsys.readouterr().err
