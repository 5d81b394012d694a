"""The installed package on a booted Debian 13 (systemd as PID 1): the hook runs the engine as
carpd@IFACE.service, so an upgrade must restart that unit and a removal must stop it, each with
the VIP away no longer than a handover (the peer is a chroot node running the same package)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pkgtools import HANDOVER, UNIT, Built, Pair, Stage, VipWatch, record, up_with_a_master
from test_upgrade import newer


def test_under_systemd_upgrade_restarts_the_unit_and_remove_stops_it(
        systemd_pair: Pair, built: Built, tmp_path: Path) -> None:
    a, b = up_with_a_master(
        systemd_pair, "systemd: boot until networking.service and carpd@eth0.service are active")
    first = a.main_pid(UNIT)

    # a newer version: a reinstall of the same one restarts nothing (test_upgrade.py)
    shutil.copy2(newer(built, built.deb, tmp_path), a.root / "root/carpd_upgrade.deb")
    with VipWatch(systemd_pair) as watch:
        with Stage("systemd: upgrade (dpkg -i of a newer version) on the MASTER"):
            a.run("dpkg", "-i", "/root/carpd_upgrade.deb", timeout=180)
        systemd_pair.wait_holder(a, timeout=20)
    record("systemd upgrade: longest time the VIP was on no node", watch.longest_gap())
    assert a.unit_state(UNIT) == "active"
    assert a.main_pid(UNIT) not in (0, first), "the unit was not restarted"
    assert watch.longest_gap() <= HANDOVER, f"VIP on no node for {watch.longest_gap():.3f} s"

    assert any("/usr/sbin/carpd" in line for line in a.carpd_processes())
    with VipWatch(systemd_pair) as watch:
        with Stage("systemd: apt-get remove carpd on the MASTER"):
            a.run("apt-get", "remove", "-y", "-q", "carpd", timeout=180)
        systemd_pair.wait_holder(b, timeout=5)
    record("systemd remove: longest time the VIP was on no node", watch.longest_gap())
    assert watch.longest_gap() <= HANDOVER, f"VIP on no node for {watch.longest_gap():.3f} s"
    assert a.unit_state(UNIT) != "active"
    assert a.carpd_processes() == []
    assert not a.holds()

    # the hooks stay but do nothing: networking restarts without starting anything
    restarted = a.run("systemctl", "restart", "networking.service", check=False)
    assert restarted.returncode == 0, restarted.output
    time.sleep(1.0)
    assert a.carpd_processes() == []
    assert systemd_pair.holders() == [b]

    with Stage("systemd: apt-get purge carpd"):
        a.run("apt-get", "purge", "-y", "-q", "carpd", timeout=180)
    for path in ("etc/network/if-up.d/carpd", "etc/network/if-down.d/carpd", "run/carpd",
                 "var/lib/carpd", "usr/libexec/carpd", "usr/lib/systemd/system/carpd@.service",
                 "usr/lib/python3/dist-packages/carpd"):
        assert not (a.root / path).exists(), path
