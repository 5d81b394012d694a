"""The installed package on Debian 13: apt-get install in a debootstrapped trixie, then two nodes
in network namespaces running it through real ifup/ifdown: failover, upgrade, remove, purge."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pkgtools import CARPD, Installed, Node, Overlay, Pair, Stage, in_root, record

# How long a VIP may be on no node while it moves: one handover (the MASTER bows out, the
# BACKUP takes over on the bow-out advertisement, without waiting for the master-down timeout).
HANDOVER = 0.5


@dataclass
class VipWatch:
    """Samples which nodes hold the VIP, every few milliseconds, in a thread."""

    pair: Pair
    samples: list[tuple[float, bool, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> VipWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            a, b = (node.holds() for node in self.pair.nodes)
            self.samples.append((time.monotonic(), a, b))

    def longest_gap(self) -> float:
        """Longest time no node held the VIP (between the samples around it)."""
        longest, since, last = 0.0, None, None
        for t, a, b in self.samples:
            if not (a or b):
                if since is None:
                    since = last if last is not None else t
            elif since is not None:
                longest = max(longest, t - since)
                since = None
            last = t
        if since is not None and last is not None:
            longest = max(longest, last - since)
        return longest

    def longest_overlap(self) -> float:
        """Longest time both nodes held the VIP (a draining MASTER keeps it, ARP for it
        dropped, for a moment after the BACKUP took over)."""
        longest, since = 0.0, None
        for t, a, b in self.samples:
            if a and b:
                since = t if since is None else since
                longest = max(longest, t - since)
            else:
                since = None
        return longest

    def first(self, node_index: int, after: float = 0.0) -> float | None:
        for t, *held in self.samples:
            if t >= after and held[node_index]:
                return t
        return None


def ifup_both(pair: Pair) -> Node:
    """ifup eth0 on both nodes; a (advskew 0, preempt) ends up MASTER: returns it."""
    with Stage("ifup eth0 on both nodes"):
        for node in pair.nodes:
            node.run("ifup", "eth0")
    for node in pair.nodes:
        assert len(node.engines()) == 1, (node.name, node.processes())
    with Stage("first MASTER holds the VIP (after the master-down interval)"):
        pair.wait_holder(pair.a)
    return pair.a


def test_installed_carpd_runs_on_trixies_python(installed: Installed, tmp_path: Path) -> None:
    overlay = Overlay(tmp_path / "check", installed.lowers)
    try:
        result = in_root(overlay.root, [CARPD, "--help"])
        assert "--interface" in result.output and "--config" in result.output
        result = in_root(overlay.root, ["carpctl", "--help"])
        assert "usage" in result.output.lower()
        result = in_root(overlay.root, ["python3", "-c",
                                        "from carpd.debian_status import ifupdown_status; "
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
        deadline = ended + 2 * HANDOVER
        while time.monotonic() < deadline and not backup.holds():
            time.sleep(0.01)
    taken = watch.first(1, after=started)
    assert taken is not None, "the backup never took the VIP"
    record("handover: ifdown on the MASTER started -> VIP on the BACKUP", taken - started)
    record("handover: ifdown on the MASTER took", ended - started)
    record("handover: longest time the VIP was on no node", watch.longest_gap())
    record("handover: longest time the VIP was on both nodes", watch.longest_overlap())
    assert watch.longest_gap() <= HANDOVER, f"VIP on no node for {watch.longest_gap():.3f} s"
    assert taken - started <= max(ended - started, 0) + HANDOVER
    assert master.engines() == []
    assert not master.holds()
    assert pair.holders() == [backup]


def test_upgrade_restarts_engines_and_the_vip_is_away_no_longer_than_a_handover(
        pair: Pair) -> None:
    master = ifup_both(pair)
    before = {node.name: node.engines() for node in pair.nodes}
    with VipWatch(pair) as watch:
        with Stage("upgrade (dpkg -i of the same version) on the MASTER"):
            master.run("dpkg", "-i", master.deb_in_root, timeout=180)
        pair.wait_holder(master, timeout=15)
        time.sleep(0.5)
    after = {node.name: node.engines() for node in pair.nodes}
    record("upgrade: longest time the VIP was on no node", watch.longest_gap())
    record("upgrade: longest time the VIP was on both nodes", watch.longest_overlap())
    assert len(after[master.name]) == 1
    assert after[master.name] != before[master.name], "the engine was not restarted"
    assert after[pair.b.name] == before[pair.b.name]
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
