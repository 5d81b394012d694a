"""The installed package on Debian 13: apt-get install in a debootstrapped trixie, then two nodes
in network namespaces running it through real ifup/ifdown: failover, upgrade, remove, purge."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from pkgtools import (
    CARPD,
    HANDOVER,
    Built,
    Installed,
    Overlay,
    Pair,
    Stage,
    VipWatch,
    ifup_both,
    in_root,
    record,
)
from test_upgrade import newer

from lab.poll import Timeout, wait_for


def test_installed_carpd_runs_on_trixies_python(installed: Installed, tmp_path: Path) -> None:
    overlay = Overlay(tmp_path / "check", installed.lowers)
    try:
        result = in_root(overlay.root, [CARPD, "--help"])
        assert "--interface" in result.output and "--config" in result.output
        for command in ("/usr/sbin/carpctl", "/usr/libexec/carpd/carpd-ifupdown"):
            result = in_root(overlay.root, [command, "--help"])
            assert result.output.startswith(f"usage: {Path(command).name}"), result.output
        result = in_root(overlay.root, ["python3", "-c",
                                        "from carpd.debian.debian_status import ifupdown_status; "
                                        "print(ifupdown_status().flavour)"])
        assert result.output.strip() == "ifupdown"
        hooks = [overlay.root / "etc/network/if-up.d/carpd",
                 overlay.root / "etc/network/if-down.d/carpd"]
        assert all(hook.stat().st_mode & 0o777 == 0o755 for hook in hooks)
    finally:
        overlay.unmount()


def test_ucarp_and_carpd_are_never_installed_together(installed: Installed,
                                                      tmp_path: Path) -> None:
    overlay = Overlay(tmp_path / "ucarp", installed.lowers)
    try:
        with Stage("apt-get install ucarp over carpd"):
            result = in_root(overlay.root, ["apt-get", "install", "-y", "-q",
                                            "--no-install-recommends", "ucarp"])
        assert "The following packages will be REMOVED" in result.output
        states = in_root(overlay.root, ["dpkg-query", "-W", "-f",
                                        "${Package} ${db:Status-Status}\n", "carpd", "ucarp"],
                         check=False).output.split("\n")
        assert "ucarp installed" in states
        assert "carpd installed" not in states
    finally:
        overlay.unmount()


def test_ifdown_on_master_hands_the_vip_to_the_backup_within_half_a_second(pair: Pair) -> None:
    master = ifup_both(pair)
    backup = pair.b
    with VipWatch(pair) as watch:
        time.sleep(0.2)
        started = time.monotonic()
        with Stage("ifdown eth0 on the MASTER"):
            master.run("ifdown", "eth0")
        ended = time.monotonic()
        with contextlib.suppress(Timeout):  # the VipWatch says when it came, if it did
            wait_for(backup.holds, max(0.0, ended + 2 * HANDOVER - time.monotonic()), 0.01)
    taken = watch.first(1, after=started)
    assert taken is not None, "the backup never took the VIP"
    record("handover: ifdown on the MASTER started -> VIP on the BACKUP", taken - started)
    record("handover: ifdown on the MASTER took", ended - started)
    record("handover: longest time the VIP was on no node", watch.longest_gap())
    record("handover: longest time the VIP was on both nodes", watch.longest_overlap())
    assert watch.longest_gap() <= HANDOVER, f"VIP on no node for {watch.longest_gap():.3f} s"
    # The MASTER bows out as soon as the hook stops it (ifdown itself returns later, after the
    # engine's drain), so the BACKUP holds the VIP within a handover of the ifdown.
    assert taken - started <= HANDOVER, f"VIP on the BACKUP {taken - started:.3f} s after ifdown"
    assert master.engines() == []
    assert not master.holds()
    assert pair.holders() == [backup]


def test_upgrade_restarts_engines_and_the_vip_is_away_no_longer_than_a_handover(
        pair: Pair, built: Built, tmp_path: Path) -> None:
    master = ifup_both(pair)
    before = {node.name: node.engines() for node in pair.nodes}
    outputs = master.outputs()
    # a newer version: a reinstall of the same one restarts nothing (test_upgrade.py)
    shutil.copy2(newer(built, built.deb, tmp_path), master.root / "root/carpd_upgrade.deb")
    with VipWatch(pair) as watch:
        with Stage("upgrade (dpkg -i of a newer version) on the MASTER"):
            master.run("dpkg", "-i", "/root/carpd_upgrade.deb", timeout=180)
        pair.wait_holder(master, timeout=15)
        time.sleep(0.5)
    after = {node.name: node.engines() for node in pair.nodes}
    record("upgrade: longest time the VIP was on no node", watch.longest_gap())
    record("upgrade: longest time the VIP was on both nodes", watch.longest_overlap())
    assert len(after[master.name]) == 1
    assert after[master.name] != before[master.name], "the engine was not restarted"
    assert after[pair.b.name] == before[pair.b.name]
    assert master.outputs() == outputs, "the restarted processes lost their log"
    assert watch.longest_gap() <= HANDOVER, f"VIP on no node for {watch.longest_gap():.3f} s"


def test_remove_stops_engines_ifup_then_starts_nothing_and_purge_leaves_nothing(
        pair: Pair) -> None:
    master = ifup_both(pair)
    owned = [line for line in master.run("dpkg-query", "-L", "carpd").output.splitlines()
             if line.startswith("/")]
    with VipWatch(pair) as watch:
        with Stage("apt-get remove carpd on the MASTER"):
            master.run("apt-get", "remove", "-y", "-q", "carpd", timeout=180)
        pair.wait_holder(pair.b, timeout=5)
    record("remove: longest time the VIP was on no node", watch.longest_gap())
    assert watch.longest_gap() <= HANDOVER, f"VIP on no node for {watch.longest_gap():.3f} s"
    assert master.processes() == {}, master.processes()
    assert not master.holds()
    leftovers = sorted(p.name for p in (master.root / "run/carpd").glob("*")
                       if not p.name.endswith(".demoted")) \
        if (master.root / "run/carpd").exists() else []
    assert leftovers == []

    # The hooks stay (conffiles) but do nothing, silently.
    assert (master.root / "etc/network/if-up.d/carpd").exists()
    for command in ("ifdown", "ifup"):
        result = master.run(command, "-v", "eth0")
        assert "carpd" not in result.output.replace("/etc/network/if-up.d/carpd", "") \
            .replace("/etc/network/if-down.d/carpd", ""), result.output
    time.sleep(1.0)
    assert master.processes() == {}
    assert pair.holders() == [pair.b]

    with Stage("apt-get purge carpd"):
        master.run("apt-get", "purge", "-y", "-q", "carpd", timeout=180)
    status = master.run("dpkg-query", "-W", "-f", "${db:Status-Status}", "carpd", check=False)
    assert status.returncode == 1 and "no packages found" in status.output, status.output
    left = [path for path in owned if (master.root / path.lstrip("/")).is_file()]
    assert left == []
    for path in ("etc/network/if-up.d/carpd", "etc/network/if-down.d/carpd", "run/carpd",
                 "var/lib/carpd", "usr/libexec/carpd", "usr/share/carpd", "usr/share/doc/carpd",
                 "usr/lib/python3/dist-packages/carpd"):
        assert not (master.root / path).exists(), path
