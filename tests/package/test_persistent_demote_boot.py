"""Maintenance that survives a reboot, from the installed package on a booted Debian 13: the
MASTER (a, systemd-nspawn, carpd@eth0.service started by networking.service) is demoted with
`carpctl demote eth0 --persistent` and stays demoted, its peer (b, a chroot node) holding the
VIP, across a restart of the unit, a reinstall and an upgrade of the package and a reboot of
the container, until `carpctl promote`; a purge removes the state under /var/lib/carpd."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pkgtools import UNIT, VHID, Booted, Built, Node, Pair, Stage, VipWatch, ctl_status, run

PERSISTED = f"var/lib/carpd/demoted/eth0.{VHID}"
# a has advskew 0 and preempt: undemoted, it takes the VIP back from b within its master-down
# interval (3 x advbase 1 s) of starting; watching this long shows that it does not.
WATCH = 5.0


def wait_engine(a: Booted, other_than: int = 0) -> int:
    """Wait until carpd@eth0 is active with a main PID other than other_than and its engine
    answers on its control socket; returns that PID."""
    a.wait(lambda: a.unit_state(UNIT) == "active" and a.main_pid(UNIT) not in (0, other_than),
           60, f"{UNIT} active (again)")
    a.wait(lambda: answers(a), 30, "the engine answering")
    return a.main_pid(UNIT)


def answers(a: Booted) -> bool:
    try:
        return "error" not in ctl_status(a)
    except (AssertionError, ValueError):  # no engine yet, or no JSON
        return False


def assert_still_demoted(pair: Pair, a: Booted, b: Node, when: str) -> None:
    """Over WATCH seconds the VIP stays on b only, and a's engine says it is BACKUP because of
    the persistent demotion."""
    with VipWatch(pair) as watch:
        time.sleep(WATCH)
    assert not any(held_a for _, held_a, _ in watch.samples), f"{when}: the VIP went to a"
    assert pair.holders() == [b], f"{when}: the VIP is on {[n.name for n in pair.holders()]}"
    shown = ctl_status(a)
    assert shown["state"] == "BACKUP" and shown["demoted"] is True, (when, shown)
    assert shown["demotion"]["persistent"] is True, (when, shown)
    assert str(shown["why"]).startswith("demoted (persistent)"), (when, shown)
    text = a.run("carpctl", "status", "eth0").output
    assert "why: demoted (persistent)" in text, (when, text)
    assert (a.root / PERSISTED).is_file(), when


def newer_version(built: Built, folder: Path) -> tuple[Path, str]:
    """The built .deb as a later version (dpkg-deb -R, the control file's Version plus
    "+upgrade1", dpkg-deb -b): to dpkg an upgrade, to carpd the same code. Returns the .deb and
    its version."""
    tree = folder / "tree"
    run(["dpkg-deb", "-R", str(built.deb), str(tree)])
    control = tree / "DEBIAN/control"
    text = control.read_text()
    line = next(line for line in text.splitlines() if line.startswith("Version: "))
    version = line.removeprefix("Version: ") + "+upgrade1"
    control.write_text(text.replace(line, f"Version: {version}"))
    deb = folder / f"carpd_{version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)])
    return deb, version


def test_a_persistent_demotion_survives_unit_restart_upgrade_and_reboot_until_promoted(
        systemd_pair: Pair, built: Built, tmp_path: Path) -> None:
    pair = systemd_pair
    newer, version = newer_version(built, tmp_path)
    a, b = pair.a, pair.b
    # the fixture powers a off, as it runs then: rebooted or not (Booted.power_off)
    assert isinstance(a, Booted) and isinstance(b, Node)
    with Stage("persistent demotion: boot until carpd@eth0.service answers"):
        a.wait_booted()
        pid = wait_engine(a)
    b.run("ifup", "eth0")
    pair.wait_holder(a, timeout=20)
    assert ctl_status(a)["demotion"] is None and ctl_status(a)["why"] is None

    demoted = a.run("carpctl", "demote", "eth0", "--persistent", check=False)
    assert demoted.returncode == 0, demoted.output
    pair.wait_holder(b, timeout=5)
    persisted = a.root / PERSISTED
    assert persisted.is_file()
    mode, owner = persisted.stat().st_mode & 0o777, persisted.stat().st_uid  # checked last
    assert_still_demoted(pair, a, b, "demoted")

    restarted = a.run("systemctl", "restart", UNIT, check=False)
    assert restarted.returncode == 0, restarted.output
    pid = wait_engine(a, other_than=pid)
    assert_still_demoted(pair, a, b, "after systemctl restart")

    with Stage("persistent demotion: dpkg -i of the same .deb"):
        a.run("dpkg", "-i", a.deb_in_root, timeout=180)
    pid = wait_engine(a)  # the same version: postinst may leave the engine running
    assert_still_demoted(pair, a, b, "after reinstalling the package")

    upgrade = f"/root/{newer.name}"
    shutil.copy2(newer, a.root / upgrade.lstrip("/"))
    with Stage("persistent demotion: dpkg -i of a newer version"):
        a.run("dpkg", "-i", upgrade, timeout=180)
    assert a.run("dpkg-query", "-W", "-f", "${Version}", "carpd").output == version
    pid = wait_engine(a, other_than=pid)  # an upgrade restarts the engine on the new code
    assert_still_demoted(pair, a, b, "after upgrading the package")

    a.run("touch", "/run/before-reboot")
    with Stage("persistent demotion: reboot (power off, boot the same root)"):
        a.reboot()
        a.wait_booted("networking.service active after the reboot")
        wait_engine(a)
    assert a.run("test", "-e", "/run/before-reboot", check=False).returncode == 1, \
        "not a new boot: /run was kept"
    assert_still_demoted(pair, a, b, "after a reboot")

    promoted = a.run("carpctl", "promote", "eth0", check=False)
    assert promoted.returncode == 0, promoted.output
    pair.wait_holder(a, timeout=10)  # advskew 0 and preempt: it takes the VIP back
    shown = ctl_status(a)
    assert shown["demoted"] is False and shown["demotion"] is None, shown
    assert shown["why"] is None and shown["state"] == "MASTER", shown
    assert not persisted.exists()

    # demoted again, then purged: nothing of carpd's state is left
    a.run("carpctl", "demote", "eth0", "--persistent")
    assert persisted.is_file()
    with Stage("persistent demotion: dpkg --purge carpd"):
        a.run("dpkg", "--purge", "carpd", timeout=180)
    assert not (a.root / "var/lib/carpd").exists()
    assert (oct(mode), owner) == (oct(0o644), 0), "the persistent marker's mode and owner"

