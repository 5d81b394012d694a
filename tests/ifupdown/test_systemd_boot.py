"""The systemd path: a booted Debian 13 (systemd-nspawn) in a node's network namespace.

Debian 13's own systemd, ifupdown, python3, pydantic and pyroute2 run carpd's hooks from
networking.service at boot; the hook starts carpd@eth0.service with --no-block (no deadlock on
networking's start job), the unit restarts a killed engine after releasing its VIP, and stopping
networking stops the engine before the address goes.  The root file system is lab/rootfs.py's
trixie with systemd (debootstrap, ~1 min; cached per day, and the one tests/package boots too);
each test works on an overlay of it, booted by lab/booted.py.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ifnodes import PASSWORD, ROOT, VIP, Lab, Node, stanza, wait_for

from lab import booted as lab_booted
from lab import rootfs
from lab.rootfs import CLEAN_PATH, Overlay
from lab.tree import console_scripts, write_command

pytestmark = pytest.mark.netns

BOOT = 120.0
ELECTION = 20.0


def _install_carpd(root: Path, interfaces: str, dropin: Path | None = None) -> None:
    """What the package installs, from this tree, with no other change to the system (but the
    drop-in for carpd@.service an administrator may add)."""
    site = root / "usr/lib/python3/dist-packages/carpd"
    shutil.copytree(ROOT / "src/carpd", site, ignore=shutil.ignore_patterns("__pycache__"))
    for command in console_scripts():
        folder = root / ("usr/libexec/carpd" if command == "carpd-ifupdown" else "usr/sbin")
        write_command(folder / command, command, "/usr/bin/python3")
    for phase in ("up", "down"):
        shutil.copy2(ROOT / f"if-{phase}.d/carpd", root / f"etc/network/if-{phase}.d/carpd")
    shutil.copytree(ROOT / "share", root / "usr/share/carpd")
    for unit in (ROOT / "systemd").glob("*.service"):
        shutil.copy2(unit, root / "usr/lib/systemd/system/")
    if dropin is not None:
        folder = root / "etc/systemd/system/carpd@.service.d"
        folder.mkdir(parents=True)
        shutil.copy2(dropin, folder)
    (root / "etc/network/interfaces").write_text(interfaces)
    (root / "etc/hostname").write_text("carpnode\n")


@dataclass
class Booted(lab_booted.Booted):
    """The booted trixie, on the lab's ``node`` (its network namespace)."""

    node: Node

    def state(self, unit: str) -> str:
        return self.unit_state(unit)

    def engine_killed_and_back(self, unit: str, pid: int) -> None:
        """SIGKILL ``unit``'s engine (``pid``): ExecStopPost releases the VIP, Restart= brings
        an engine back, which takes the VIP again."""
        restarts = self.inside(f"systemctl show -p NRestarts --value {unit}").stdout.strip()
        self.inside(f"systemctl kill -s KILL --kill-whom=main {unit}")
        assert wait_for(lambda: not self.node.holds_vip(), 10.0)
        # RestartSteps= grows the delay with each restart since the unit started (1 s, then
        # up to RestartMaxDelaySec=30): wait that delay, as systemd reports it, and the start
        delay = self.inside(f"systemctl show -p RestartUSecNext --value {unit}").stdout.strip()
        wait_for(lambda: self.main_pid(unit) not in (0, pid), 15.0 + _seconds(delay),
                 what=f"{unit} restarted (restarts before: {restarts}, next delay {delay})",
                 detail=lambda: self.inside(f"systemctl status --no-pager {unit}; "
                                            "journalctl -b --no-pager | tail -40").stdout)
        assert wait_for(self.node.holds_vip, ELECTION)

    def networking_stopped(self, unit: str) -> None:
        """Stop networking.service (its ifdown -a): ``unit`` stops and the VIP goes."""
        stopped = self.inside("systemctl stop networking.service")
        assert stopped.returncode == 0, stopped.stderr
        assert self.state(unit) == "inactive"
        assert not self.node.holds_vip()


def _seconds(span: str) -> float:
    """A systemd time span as `systemctl show` prints it ("1s", "2.3s", "5min 30s"), in s."""
    units = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|min|h)\b", span))


def _boot(lab: Lab, tmp_path: Path, interfaces: str, dropin: Path | None = None,
          scripts: dict[str, str] | None = None) -> Iterator[Booted]:
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool, path=CLEAN_PATH) is None:
            pytest.skip(f"needs {tool} (see .ci/apt-packages)")
    overlay = Overlay(tmp_path, [rootfs.trixie(rootfs.SYSTEMD, tmp_path.parent)])
    node = lab.node()
    console = tmp_path / "console.log"
    try:
        root = overlay.root
        _install_carpd(root, interfaces, dropin)
        for path, text in (scripts or {}).items():
            (root / path).write_text(text)
            (root / path).chmod(0o755)
        booted = Booted(node.netns, root, console, lab_booted.nspawn(root, node.netns, console),
                        node)
        try:
            yield booted
        finally:
            booted.power_off()
    finally:
        overlay.unmount()


@pytest.fixture
def booted(lab: Lab, tmp_path: Path) -> Iterator[Booted]:
    yield from _boot(lab, tmp_path, "auto lo\niface lo inet loopback\n\n" + stanza(1))


IP_ONLY_STANZA = """\
ucarp-upscript /usr/local/sbin/vip-ip-up
ucarp-downscript /usr/local/sbin/vip-ip-down
"""
IP_ONLY_SCRIPTS = {
    "usr/local/sbin/vip-ip-up": '#!/bin/sh\nexec ip address replace "$2"/32 dev "$1" label '
                                '"$1":ucarp\n',
    "usr/local/sbin/vip-ip-down": '#!/bin/sh\nip address del "$2"/32 dev "$1" 2>/dev/null; '
                                  'exit 0\n',
}


@pytest.fixture
def booted_strict(lab: Lab, tmp_path: Path) -> Iterator[Booted]:
    """Booted with systemd/strict.conf as carpd@.service.d drop-in, and up and down scripts
    that only run ip(8), as that drop-in asks."""
    interfaces = "auto lo\niface lo inet loopback\n\n" + stanza(1, extra=IP_ONLY_STANZA)
    yield from _boot(lab, tmp_path, interfaces, dropin=ROOT / "systemd" / "strict.conf",
                     scripts=IP_ONLY_SCRIPTS)


def test_systemd_runs_one_unit_per_interface_from_boot_to_networking_stop(
        booted: Booted) -> None:
    node, unit = booted.node, "carpd@eth0.service"
    log = booted.console

    # at boot, networking.service's ifup -a starts the unit without waiting for it
    assert wait_for(lambda: booted.state("networking.service") == "active", BOOT), (
        log.read_text(errors="replace")[-3000:])
    assert wait_for(lambda: booted.state(unit) == "active", 30.0), (
        booted.inside(f"systemctl status {unit}; journalctl -b --no-pager | tail -50").stdout)
    assert wait_for(node.holds_vip, ELECTION), booted.inside("journalctl -b | tail -40").stdout
    assert node.addresses()[VIP] == "eth0:ucarp"

    # its own cgroup: killing networking.service's processes cannot take it along
    pid = booted.main_pid(unit)
    cgroup = booted.inside(f"cat /proc/{pid}/cgroup").stdout
    assert f"/system.slice/system-carpd.slice/{unit}" in cgroup, cgroup
    for host_pid in node.pids():
        cmdline = Path(f"/proc/{host_pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline, cmdline

    # a killed engine: ExecStopPost releases the VIP, Restart= brings the engine back
    booted.engine_killed_and_back(unit, pid)

    # stopping networking runs ifdown -a: the engine stops first, nothing of it is left
    booted.networking_stopped(unit)
    processes = booted.inside("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "carpd" not in processes
    assert booted.inside("ls /run/carpd").stdout.split() in (["eth0.hook"],
                                                             ["eth0.hook", "eth0.log"])

    # and starting it again brings the engine back
    started = booted.inside("systemctl start networking.service")
    assert started.returncode == 0, started.stderr
    assert wait_for(lambda: booted.state(unit) == "active", 30.0)
    assert wait_for(node.holds_vip, ELECTION)


WEB_SERVER_STANDIN = """\
[Unit]
Description=stand-in for nginx: notes when it is told to stop
[Service]
ExecStart=/bin/sleep infinity
ExecStop=/bin/sh -c 'date +%%s.%%N > /var/lib/nginx-stopped; \
    systemctl is-active carpd@eth0.service >> /var/lib/nginx-stopped'
"""


def test_at_poweroff_the_peer_holds_the_vip_before_the_web_server_stops(
        booted: Booted, lab: Lab, tmp_path: Path) -> None:
    node = booted.node
    assert wait_for(lambda: booted.state("carpd@eth0.service") == "active", BOOT)
    assert wait_for(node.holds_vip, ELECTION)
    started = booted.inside(
        f"cat > /etc/systemd/system/nginx.service <<'EOF'\n{WEB_SERVER_STANDIN}EOF\n"
        "systemctl daemon-reload && systemctl start nginx.service")
    assert started.returncode == 0, started.stderr
    peer = lab.node()
    peer.write_interfaces(stanza(2))
    assert peer.ifup("eth0").returncode == 0
    assert wait_for(lambda: peer.engines() != [], 10.0)
    time.sleep(2.0)  # the peer hears the container's adverts and stays BACKUP
    assert node.holds_vip() and not peer.holds_vip()

    watch = peer.watch_for_address(VIP)
    booted.inside("systemctl poweroff")
    booted.nspawn.wait(timeout=120)
    taken = watch.wait(5.0)
    when, carpd_then = (tmp_path / "upper" / "var/lib/nginx-stopped").read_text().split()
    assert taken is not None, "the peer never took the VIP over"
    assert taken < float(when), f"the web server stopped {taken - float(when):.3f} s too early"
    assert carpd_then == "inactive", "the web server began to stop while carpd still drained"


CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_MODULE, CAP_SYS_TIME = 12, 13, 16, 25


def _status(booted: Booted, pid: int) -> dict[str, str]:
    text = booted.inside(f"cat /proc/{pid}/status").stdout
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in text.splitlines())}


def _ask(command: str) -> str:
    """A command to the engine's control socket (one per engine: eth0.sock; carpctl needs
    python3-debian, not installed)."""
    code = ("from carpd.engine.control import request; "
            f"print(request('/run/carpd/eth0.sock', {{'cmd': '{command}'}}))")
    return f'python3 -c "{code}"'


def _exposure(booted: Booted, unit: str) -> float:
    out = booted.inside(f"systemd-analyze security --no-pager {unit} | tail -1").stdout
    match = re.search(r"exposure level for .*: (\d+\.\d)", out)
    assert match, out
    return float(match[1])


def test_the_engine_runs_sandboxed_without_core_dumps_and_the_alias_still_comes_up(
        booted: Booted) -> None:
    node, unit = booted.node, "carpd@eth0.service"
    assert wait_for(lambda: booted.state(unit) == "active", BOOT), (
        booted.inside(f"systemctl status {unit}; journalctl -b --no-pager | tail -50").stdout)
    # vip-up's `ifup eth0:ucarp` works from inside the sandbox
    assert wait_for(node.holds_vip, ELECTION), booted.inside("journalctl -b | tail -40").stdout
    assert node.addresses()[VIP] == "eth0:ucarp"
    assert "eth0:ucarp" in booted.inside("cat /run/network/ifstate*").stdout

    pid = booted.main_pid(unit)
    limits = booted.inside(f"cat /proc/{pid}/limits").stdout
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.M), limits
    status = _status(booted, pid)
    assert status["Umask"] == "0077"
    assert status["Seccomp"] == "2"  # a system call filter (SystemCallArchitectures=native...)
    bounding = int(status["CapBnd"], 16)
    assert not bounding & (1 << CAP_SYS_MODULE | 1 << CAP_SYS_TIME)
    assert bounding & (1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW) == 3 << CAP_NET_ADMIN
    exposure = _exposure(booted, unit)
    print(f"systemd-analyze security {unit}: {exposure}")
    assert exposure <= 7.5


def test_the_strict_drop_in_runs_ip_only_scripts_with_network_capabilities_only(
        booted_strict: Booted) -> None:
    booted, unit = booted_strict, "carpd@eth0.service"
    node = booted.node
    assert wait_for(lambda: booted.state(unit) == "active", BOOT), (
        booted.inside(f"systemctl status {unit}; journalctl -b --no-pager | tail -50").stdout)
    assert wait_for(node.holds_vip, ELECTION), booted.inside("journalctl -b | tail -40").stdout
    pid = booted.main_pid(unit)
    status = _status(booted, pid)
    assert int(status["CapBnd"], 16) == 1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW
    assert status["NoNewPrivs"] == "1"
    exposure = _exposure(booted, unit)
    print(f"systemd-analyze security {unit} with strict.conf: {exposure}")
    assert exposure <= 3.0

    # the engine still writes its runtime folder: a demotion hands the VIP away and persists
    demoted = booted.inside(_ask("demote"))
    assert demoted.returncode == 0, demoted.stdout + demoted.stderr
    assert wait_for(lambda: not node.holds_vip(), ELECTION)
    assert booted.inside("ls /run/carpd").stdout.split().count("eth0.7.demoted") == 1
    assert booted.inside(_ask("promote")).returncode == 0
    assert wait_for(node.holds_vip, ELECTION)

    # a killed engine: the sandboxed ExecStopPost still releases the VIP, Restart= returns it
    booted.engine_killed_and_back(unit, pid)
    booted.networking_stopped(unit)


FAST_RESTARTS = "[Service]\nRestartMaxDelaySec=2\n"
FAST_RETRY = "[Service]\nEnvironment=CARPD_RETRY_DELAY=5\n"


def _dropin(booted: Booted, unit: str, text: str) -> None:
    done = booted.inside(f"mkdir -p /etc/systemd/system/{unit}.d && cat > "
                         f"/etc/systemd/system/{unit}.d/test.conf <<'EOF'\n{text}EOF\n"
                         "systemctl daemon-reload")
    assert done.returncode == 0, done.stderr


def test_the_unit_shows_the_state_and_a_crash_loop_fails_visibly_then_is_retried(
        booted: Booted) -> None:
    node, unit = booted.node, "carpd@eth0.service"
    assert wait_for(lambda: booted.state(unit) == "active", BOOT)
    assert wait_for(node.holds_vip, ELECTION)
    status = lambda: booted.inside(f"systemctl show -p StatusText --value {unit}").stdout  # noqa: E731
    assert wait_for(lambda: re.match(rf"MASTER of {VIP} \(vhid \d+\) since \d\d:\d\d:\d\d",
                                     status()), 10.0), status()

    # The engine cannot start any more (its program is gone): the unit fails after 5 starts,
    # shows in `systemctl --failed`, and is started again once it can.
    _dropin(booted, "carpd@.service", FAST_RESTARTS)
    _dropin(booted, "carpd-retry@.service", FAST_RETRY)
    booted.inside("mv /usr/sbin/carpd /usr/sbin/carpd.away")
    booted.inside(f"systemctl kill -s KILL --kill-whom=main {unit}")
    assert wait_for(lambda: booted.state(unit) == "failed", 60.0), (
        booted.inside(f"systemctl status {unit} | tail -20").stdout)
    assert unit in booted.inside("systemctl --failed --plain --no-legend").stdout
    shown = booted.inside("carpctl status")
    status = shown.stdout
    assert "NOT RUNNING" in status and f"{unit} is failed" in status, shown.stderr
    assert not node.holds_vip()
    booted.inside("mv /usr/sbin/carpd.away /usr/sbin/carpd")
    assert wait_for(lambda: booted.state(unit) == "active", 30.0), (
        booted.inside("journalctl -b --no-pager | tail -30").stdout)
    assert wait_for(node.holds_vip, ELECTION)


def test_stopping_waits_for_the_drain_beyond_the_units_stop_timeout(booted: Booted) -> None:
    node, unit = booted.node, "carpd@eth0.service"
    assert wait_for(lambda: booted.state(unit) == "active", BOOT)
    assert wait_for(node.holds_vip, ELECTION)
    # The default drain is 2 s; the engine extends this 1 s stop timeout by its stop budget.
    _dropin(booted, "carpd@.service", "[Service]\nTimeoutStopSec=1\n")
    stopped = booted.inside(f"systemctl stop {unit}")
    assert stopped.returncode == 0, stopped.stderr
    result = booted.inside(f"systemctl show -p Result --value {unit}").stdout.strip()
    assert result == "success", booted.inside("journalctl -b --no-pager | tail -30").stdout
    assert "drain" in booted.inside(f"journalctl -b -u {unit} --no-pager").stdout
    assert not node.holds_vip()


def test_restarting_networking_restarts_the_engine_and_leaves_one_of_everything(
        booted: Booted) -> None:
    node, unit = booted.node, "carpd@eth0.service"
    assert wait_for(lambda: booted.state(unit) == "active", BOOT)
    assert wait_for(node.holds_vip, ELECTION)
    before = booted.main_pid(unit)
    restarted = booted.inside("systemctl restart networking.service")
    assert restarted.returncode == 0, restarted.stderr
    assert wait_for(lambda: booted.state(unit) == "active" and booted.main_pid(unit) != before,
                    30.0), booted.inside(f"systemctl status {unit} | tail -20").stdout
    assert wait_for(node.holds_vip, ELECTION)
    engines = booted.inside("grep -a -l -e '[/]usr/sbin/carpd' /proc/[0-9]*/cmdline "
                            "2>/dev/null | wc -l").stdout.strip()
    assert engines == "1", booted.inside("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
