"""carpctl: check interfaces files against golden output; status, demote and promote."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
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
    assert len(warnings) == 7  # the six stanzas of good.interfaces with a password, one in good.d
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


def test_ifup_of_a_stanza_without_vid_vip_or_password_fails_naming_what_is_missing(
        lab: Lab) -> None:
    node = lab.node()
    node.write_interfaces("auto eth0\niface eth0 inet static\n    address 10.77.0.11/24\n"
                          "    ucarp-advskew 10\n")
    result = node.ifup("eth0")
    assert result.returncode != 0
    assert "carpd: iface eth0 inet static: ucarp-vid, ucarp-vip and ucarp-password (or " \
           "ucarp-passfile): missing: all three are needed once any ucarp-* option is " \
           "given\n" in result.stderr
    assert "Traceback" not in result.stderr
    assert node.engines() == []
    check = node.sh(f"carpctl check {shlex.quote(str(node.interfaces))}")
    assert (check.returncode, check.stdout) == (1, f"{node.interfaces}:2: iface eth0 inet "
                                                   "static: ucarp-vid, ucarp-vip and "
                                                   "ucarp-password (or ucarp-passfile): "
                                                   "missing: all three are needed once any "
                                                   "ucarp-* option is given\n")


def _carp_stanzas(count: int) -> str:
    """``count`` stanzas the way the benchmark writes them: each named by an auto line, with a
    continued option, the default scripts and its IFACE:ucarp stanza."""
    return "".join(
        f"auto e{n}\niface e{n} inet static\n    address 10.1.{n // 250}.{n % 250 + 1}/16\n"
        f"    ucarp-vid {n % 255 + 1}\n    ucarp-vip 10.2.0.1\n    ucarp-password s\n"
        f"    ucarp-xparam one \\\n      two\n"
        f"iface e{n}:ucarp inet static\n    address 10.2.0.1/32\n" for n in range(count))


# CPU seconds of carpctl's check, the best of three, of each file named on the command line
_TIMER = """\
import sys, time
from pathlib import Path
from carpd.debian import carpctl
for name in sys.argv[1:]:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        problems, count = carpctl.check(Path(name))
        best = min(best, time.process_time() - started)
    assert problems == [] and count > 0, (problems[:3], count)
    print(best)
"""


def test_check_time_grows_linearly_with_the_stanzas_with_the_default_scripts_installed(
        lab: Lab) -> None:
    # a complexity check, not a speed limit (bench/parse.py measures the time): four times the
    # stanzas take about four times as long when linear, sixteen when quadratic (0.1.0 was,
    # when the default scripts were installed: their IFACE:ucarp stanza was searched for)
    node = lab.node()
    small, large = 1500, 6000
    files = []
    for count in (small, large):
        path = node.home / f"interfaces-{count}"
        path.write_text(_carp_stanzas(count))
        path.chmod(0o600)
        files.append(shlex.quote(str(path)))
    (node.home / "timer.py").write_text(_TIMER)
    result = node.sh(f"{shlex.quote(sys.executable)} {node.home / 'timer.py'} {' '.join(files)}")
    assert result.returncode == 0, result.stderr
    small_time, large_time = (float(line) for line in result.stdout.split())
    assert large_time / small_time < 8, (
        f"{large} stanzas took {large_time / small_time:.1f} times as long as {small}")
