"""`carpctl status` shows configured engines that are not running, and why; whether each VIP
really is on its interface (read over netlink in a namespace of the test's own); the ifupdown2
note only where it matters."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_metrics import Engine, status_reply

from carpd.debian import carpctl
from lab.netns import in_netns, run


def test_a_configured_engine_that_does_not_run_is_listed_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "eth9.conf").write_text("{}\n")
    (tmp_path / "eth9.log").write_text(
        "12:00:01 carpd-supervisor[eth9]: the engine exited (exit status 1): starting it "
        "again in 8 s\n")
    code = carpctl.main(["--state-dir", str(tmp_path), "--dpkg-status", "/nonexistent",
                         "status"])
    out = capsys.readouterr().out
    assert code == 1
    assert "eth9" in out and "NOT RUNNING" in out
    if not Path("/run/systemd/system").is_dir():
        assert "the engine exited (exit status 1)" in out


def test_a_configured_engine_killed_with_its_socket_left_behind_is_not_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    (tmp_path / "eth9.conf").write_text("{}\n")
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(tmp_path / "eth9.7.sock"))  # bound, never listening: refused
    leftover.close()
    code = carpctl.main(["--state-dir", str(tmp_path), "--dpkg-status", "/nonexistent",
                         "status"])
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT RUNNING" in out


def test_an_interface_with_no_engine_configured_is_not_listed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = carpctl.main(["--state-dir", str(tmp_path), "--dpkg-status", "/nonexistent",
                         "status"])
    assert code == carpctl.EXIT_NO_ENGINE
    assert "NOT RUNNING" not in capsys.readouterr().out


# -- whether the VIP is really on the interface, read from the kernel in a namespace ----------

VIP = "10.9.1.100"


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace of its own with ``eth0`` (a veth whose peer stays in it too, up,
    10.9.1.1/24), deleted after."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("needs ip(8) from iproute2 to make a network namespace")
    name = f"carpst{os.getpid()}{secrets.token_hex(2)}"
    try:
        run("ip", "netns", "add", name)
    except subprocess.CalledProcessError as error:  # root in a container that may not
        pytest.skip(f"cannot make a network namespace here: {error.stderr.strip()}")
    try:
        run("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        run("ip", "-n", name, "addr", "add", "10.9.1.1/24", "dev", "eth0")
        run("ip", "-n", name, "link", "set", "eth0", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def status_in(namespace: str, state_dir: Path, capsys: pytest.CaptureFixture[str],
              *argv: str) -> tuple[int, str]:
    """carpctl status run in ``namespace`` (its netlink socket reads that namespace)."""
    with in_netns(namespace):
        code = carpctl.main(["--state-dir", str(state_dir), "--dpkg-status", "/nonexistent",
                             "status", *argv])
    return code, capsys.readouterr().out


@pytest.mark.netns
@pytest.mark.parametrize(("state", "vip_added", "line"), [
    ("MASTER", True, None),
    ("MASTER", False, f"  vip: MASTER, but {VIP} is not on eth0"),
    ("BACKUP", True, f"  vip: BACKUP, but {VIP} is on eth0 (left behind, or added by someone "
                     "else)"),
    ("BACKUP", False, None),
])
def test_status_tells_when_the_vip_on_the_interface_contradicts_the_state(
        namespace: str, state_dir: Path, engines: list[Engine],
        capsys: pytest.CaptureFixture[str], state: str, vip_added: bool,
        line: str | None) -> None:
    if vip_added:
        run("ip", "-n", namespace, "addr", "add", f"{VIP}/32", "dev", "eth0", "label",
            "eth0:ucarp")
    engines.append(Engine(state_dir, status_reply(7, state=state, vip=VIP, health=[])))
    code, out = status_in(namespace, state_dir, capsys)
    assert code == 0
    assert out.splitlines()[2:] == ([line] if line else [])
    code, out = status_in(namespace, state_dir, capsys, "--json")
    assert [reply["vip_present"] for reply in json.loads(out)] == [vip_added]


@pytest.mark.netns
def test_vip_present_is_null_when_the_interface_is_not_there(
        namespace: str, state_dir: Path, engines: list[Engine],
        capsys: pytest.CaptureFixture[str]) -> None:
    engines.append(Engine(state_dir, status_reply(7, interface="eth5", vip=VIP, health=[])))
    code, out = status_in(namespace, state_dir, capsys, "--json")
    assert [reply["vip_present"] for reply in json.loads(out)] == [None]
    _code, table = status_in(namespace, state_dir, capsys)
    assert len(table.splitlines()) == 2  # nothing to contradict


# -- the ifupdown2 note, only where it matters ------------------------------------------------

IFUPDOWN2 = """\
Package: ifupdown2
Status: install ok installed
Architecture: all
Version: 3.0.0-1.2
Provides: ifupdown
Description: Network Interface Management tool similar to ifupdown
 ifupdown2 is ifupdown re-written in Python.
"""
STANZAS = """\
auto eth0
iface eth0 inet static
    address 10.9.1.1/24
    ucarp-vid 7
    ucarp-vip 10.9.1.100
    ucarp-password s3cret

iface eth0:ucarp inet static
    address 10.9.1.100/32
"""


def carpctl_under_ifupdown2(tmp_path: Path, state_dir: Path, *argv: str) -> int:
    dpkg_status = tmp_path / "status"
    dpkg_status.write_text(IFUPDOWN2)
    return carpctl.main(["--state-dir", str(state_dir), "--dpkg-status", str(dpkg_status),
                         *argv])


def test_status_notes_ifupdown2_when_the_hooks_configured_an_engine(
        tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (state_dir / "eth0.conf").write_text("{}\n")
    carpctl_under_ifupdown2(tmp_path, state_dir, "status")
    assert "note: ifupdown2 3.0.0-1.2 is installed" in capsys.readouterr().err


def test_status_of_engines_run_by_hand_has_no_ifupdown2_note(
        tmp_path: Path, state_dir: Path, engines: list[Engine],
        capsys: pytest.CaptureFixture[str]) -> None:
    engines.append(Engine(state_dir, status_reply(7, interface="carpt-none0", health=[])))
    assert carpctl_under_ifupdown2(tmp_path, state_dir, "status") == 0
    assert "ifupdown2" not in capsys.readouterr().err


def test_check_notes_ifupdown2_only_for_a_file_with_ucarp_stanzas(
        tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_stanzas, without = tmp_path / "with", tmp_path / "without"
    with_stanzas.write_text(STANZAS)
    without.write_text("auto lo\niface lo inet loopback\n")
    carpctl_under_ifupdown2(tmp_path, state_dir, "check", str(with_stanzas))
    assert "note: ifupdown2" in capsys.readouterr().err
    assert carpctl_under_ifupdown2(tmp_path, state_dir, "check", str(without)) == 0
    assert "ifupdown2" not in capsys.readouterr().err


# -- a hand-over in progress ----------------------------------------------------------------------

def test_status_shows_the_connections_a_drain_waits_for_and_the_forwarding() -> None:
    base = {"interface": "eth0", "vhid": 1, "vip": "10.0.0.100", "since": 0, "pid": 1}
    draining = {**base, "state": "INIT",
                "drain": {"connections": 3, "left": 57.2, "to": "10.0.0.2"}}
    forwarding = {**base, "state": "MASTER",
                  "forwarding": {"to": "10.0.0.1", "connections": 1, "left": 57.0}}
    table = carpctl._table([draining, forwarding])
    assert "drain: 3 connections left, 57 s at most; telling 10.0.0.2" in table
    assert "forwarding: 10.0.0.1's connections go on to it while it drains: 1 connection " \
           "left there" in table


def test_a_draining_group_holding_its_vip_is_no_contradiction() -> None:
    reply = {"state": "INIT", "vip": "10.0.0.100", "interface": "eth0", "vip_present": True,
             "drain": {"connections": 1, "left": 30.0, "to": None}}
    assert carpctl._vip_contradiction(reply) is None
    assert carpctl._vip_contradiction({**reply, "drain": None}) is not None
