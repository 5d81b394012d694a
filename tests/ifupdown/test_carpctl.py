"""carpctl: check interfaces files against golden output; status, demote and promote."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from ifnodes import GOLDEN, VIP, Lab, Node, stanza, wait_for

pytestmark = pytest.mark.netns

ELECTION = 15.0


def _golden(node: Node, mode: int = 0o600) -> Path:
    """A copy of golden/ whose files have ``mode`` (a checkout's are world-readable, which
    carpctl warns of where they hold a ucarp-password)."""
    copy = node.home / "golden"
    shutil.copytree(GOLDEN, copy)
    for path in copy.rglob("*"):
        if path.is_file():
            path.chmod(mode)
    return copy


def _check(node: Node, name: str, mode: int = 0o600) -> tuple[int, str, str]:
    # as installed: /usr/share/carpd/vip-up exists in the node; paths relative to golden/
    folder = _golden(node, mode)
    result = node.sh(f"cd {shlex.quote(str(folder))} && carpctl check {name}.interfaces")
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(("name", "status"), [("good", 0), ("bad", 1)])
def test_check_reports_what_the_golden_file_expects(lab: Lab, name: str, status: int) -> None:
    returncode, out, _err = _check(lab.node(), name)
    assert out == (GOLDEN / f"{name}.expected").read_text()
    assert returncode == status


def test_check_warns_of_a_password_everyone_can_read_without_failing(lab: Lab) -> None:
    returncode, out, _err = _check(lab.node(), "good", mode=0o644)
    warnings = [line for line in out.splitlines() if ": warning: " in line]
    assert returncode == 0
    assert "good.interfaces:13: iface eth0 inet static: warning: ucarp-password: good.interfaces "\
           "is readable by every user (mode 644), so is the password: chmod o-r it, or move " \
           "the password to a root-only file named by ucarp-passfile" in warnings
    assert len(warnings) == 3  # the two stanzas of good.interfaces, one in good.d
    assert [line for line in out.splitlines() if ": warning: " not in line] == (
        GOLDEN / "good.expected").read_text().splitlines()


def test_check_says_how_many_problems_on_stderr(lab: Lab) -> None:
    _returncode, out, err = _check(lab.node(), "bad")
    assert err == f"bad.interfaces: {len(out.splitlines())} problem(s)\n"


def test_check_of_the_default_file_that_does_not_exist_fails(lab: Lab) -> None:
    node = lab.node()
    result = node.sh("carpctl check /nonexistent/interfaces")
    assert result.returncode == 1
    assert result.stdout == "cannot read /nonexistent/interfaces: No such file or directory\n"


def test_status_demote_and_promote_through_the_control_socket(lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces(stanza(1))
    assert node.ifup("eth0").returncode == 0, node.log()
    assert wait_for(node.holds_vip, ELECTION), node.log()

    status = node.sh("carpctl status eth0 --json")
    assert status.returncode == 0, status.stderr
    (reply,) = json.loads(status.stdout)
    assert (reply["interface"], reply["vhid"], reply["vip"], reply["state"]) == (
        "eth0", 7, VIP, "MASTER")
    table = node.sh("carpctl status").stdout.splitlines()
    assert table[0].split() == ["IFACE", "VHID", "VIP", "STATE", "FOR", "MASTER", "DEMOTED",
                                "PID"]
    assert table[1].split()[:4] == ["eth0", "7", VIP, "MASTER"]

    demoted = node.sh("carpctl demote eth0")
    assert demoted.returncode == 0, demoted.stderr
    assert json.loads(node.sh("carpctl status eth0 --json").stdout)[0]["demoted"] is True
    promoted = node.sh("carpctl promote eth0")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(node.sh("carpctl status eth0 --json").stdout)[0]["demoted"] is False


def test_status_of_an_interface_without_engine_says_so(lab: Lab) -> None:
    result = lab.node().sh("carpctl status eth0")
    assert result.returncode == 3
    assert result.stderr == "carpctl: no carpd engine on eth0 (no control socket in /run/carpd)\n"
    assert lab.nodes[0].sh("carpctl demote eth0").returncode == 3
