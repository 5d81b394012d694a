"""Upgrades of the installed package: from the released 0.1.0 (built here from git history) to
this tree's, on nodes holding a VIP.

- An upgrade restarts carpd's own engines, one at a time, each on a /run/carpd/IFACE.conf the
  new code writes again from its stanza (so a conf in an option model the new carpd no longer
  takes cannot keep a node out of the cluster), with the VIP held by the cluster throughout.
- A reinstall of the same version and `dpkg-reconfigure carpd` restart nothing.
- postinst prints `carpctl check`'s problems and still succeeds; it runs the ucarp migration
  (/usr/libexec/carpd/migrate, if there is one) on a first install or an upgrade only.
- prerm's stop on remove/deconfigure is undone by postinst abort-remove/abort-deconfigure (and by
  configure after a deconfigure); abort-upgrade finds nothing stopped and stops nothing.
- Under systemd, with dpkg run as apt-daily-upgrade.service (unattended-upgrades' unit: apt's
  own, its ExecStart replaced by a drop-in), the engine is restarted as carpd@eth0.service,
  outside that unit's cgroup, outlives it, and is never killed.

The new package is this tree's .deb; while debian/changelog still names 0.1.0-1 (the version
released), it is repacked as 0.1.0-1+upgrade1 (the same files) so that dpkg sees an upgrade.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkgtools import (
    CACHE,
    HANDOVER,
    NET,
    REPO,
    UNIT,
    Booted,
    Built,
    Installed,
    Node,
    Overlay,
    Pair,
    Stage,
    VipWatch,
    in_root,
    record,
    run,
    up_with_a_master,
)

from conftest import booted_pair, chroot_node, chroot_pair
from lab.poll import wait_for

OLD_COMMIT = "3e95c8dec05b4d18c504e9fec99774859149d4de"
"""carpd 0.1.0 as released (debian/changelog 0.1.0-1)."""
CONF = "run/carpd/eth0.conf"
DRAIN = 2.0  # ucarp-drain's default: a MASTER handing over keeps the VIP this long, ARP dropped
OBSOLETE = "obsolete_option"


def _have_old_commit() -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"], cwd=REPO,
                          capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(not _have_old_commit(),
                                reason=f"0.1.0 ({OLD_COMMIT[:7]}) is not in this clone's "
                                       "history (a shallow clone?): nothing to upgrade from")


# ---------------------------------------------------------------------------------------------
# The two packages


def deb_field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).output.strip()


def build_old(target: Path) -> Path:
    """0.1.0's .deb, built from `git archive` of its commit as pkgtools builds the tree."""
    work = target.parent / f"{target.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree = work / "carpd-0.1.0"
    archive = subprocess.run(["git", "archive", "--prefix=carpd-0.1.0/", OLD_COMMIT], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, timeout=900)
    (deb,) = work.glob("carpd_*_all.deb")
    shutil.copy2(deb, target)
    shutil.rmtree(work, ignore_errors=True)
    return target


def newer(built: Built, old: Path, folder: Path) -> Path:
    """This tree's .deb with a version above old's: itself, or repacked as VERSION+upgrade1."""
    version = deb_field(built.deb, "Version")
    compare = ["dpkg", "--compare-versions", version, "gt", deb_field(old, "Version")]
    if run(compare, check=False).returncode == 0:
        return built.deb
    unpacked = folder / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    run(["dpkg-deb", "-R", str(built.deb), str(unpacked)])
    control = unpacked / "DEBIAN/control"
    control.write_text(control.read_text().replace(f"Version: {version}\n",
                                                   f"Version: {version}+upgrade1\n"))
    deb = folder / f"carpd_{version}+upgrade1_all.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", str(unpacked), str(deb)])
    return deb


@pytest.fixture(scope="session")
def old_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """carpd_0.1.0-1_all.deb from git history: fresh under CI, else cached per commit."""
    with Stage(f"upgrade: build 0.1.0 ({OLD_COMMIT[:7]}) from git history"):
        if os.environ.get("CI"):
            return build_old(tmp_path_factory.mktemp("old") / "carpd_0.1.0.deb")
        cached = CACHE / f"carpd-0.1.0-{OLD_COMMIT[:12]}.deb"
        if not cached.is_file():
            CACHE.mkdir(parents=True, exist_ok=True)
            build_old(cached)
        return cached


@pytest.fixture(scope="session")
def new_deb(built: Built, old_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return newer(built, old_deb, tmp_path_factory.mktemp("new"))


NEW_IN_ROOT = "/root/carpd_new.deb"
OLD_IN_ROOT = "/root/carpd_old.deb"


@pytest.fixture(scope="session")
def old_installed(installed: Installed, old_deb: Path, new_deb: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """trixie with 0.1.0 freshly installed (over the layer with this tree's package: purged
    first, its dependencies stay, so no download), both .debs in /root."""
    overlay = Overlay(tmp_path_factory.mktemp("old-installed"), list(installed.lowers))
    try:
        shutil.copy2(old_deb, overlay.root / OLD_IN_ROOT.lstrip("/"))
        shutil.copy2(new_deb, overlay.root / NEW_IN_ROOT.lstrip("/"))
        with Stage("upgrade: purge this tree's carpd, dpkg -i 0.1.0 in trixie"):
            in_root(overlay.root, ["dpkg", "--purge", "carpd"])
            in_root(overlay.root, ["dpkg", "-i", OLD_IN_ROOT])
    finally:
        overlay.unmount()
    return Installed(layer=overlay.upper, lowers=(overlay.upper, *installed.lowers),
                     deb_in_root=OLD_IN_ROOT)


@pytest.fixture
def old_pair(old_installed: Installed, tmp_path: Path) -> Iterator[Pair]:
    """As conftest's `pair`, with 0.1.0 installed: a (advskew 0, preempt), b (advskew 100)."""
    with chroot_pair(lambda lab, *node: chroot_node(lab, old_installed, tmp_path, *node)) as (
            _, a, b):
        yield Pair(a, b)


# ---------------------------------------------------------------------------------------------
# What the VIP did


def totals(watch: VipWatch) -> tuple[float, float]:
    """Seconds in all the VIP was on no node, and on both, between samples."""
    none = both = 0.0
    for (t0, a, b), (t1, _, _) in zip(watch.samples, watch.samples[1:], strict=False):
        none += (t1 - t0) if not (a or b) else 0.0
        both += (t1 - t0) if (a and b) else 0.0
    return none, both


def report(what: str, watch: VipWatch) -> tuple[float, float]:
    none, both = totals(watch)
    record(f"{what}: VIP on no node, longest", watch.longest_gap())
    record(f"{what}: VIP on no node, in all", none)
    record(f"{what}: VIP on both nodes (the drain), longest", watch.longest_overlap())
    record(f"{what}: VIP on both nodes (the drain), in all", both)
    return none, both


def timeline(watch: VipWatch) -> str:
    """Where the VIP was, at each change (seconds from the first sample)."""
    lines, last = [], None
    start = watch.samples[0][0] if watch.samples else 0.0
    for t, a, b in watch.samples:
        if (a, b) != last:
            lines.append(f"{t - start:8.3f} s  a={'VIP' if a else '-'}  b={'VIP' if b else '-'}")
            last = (a, b)
    return "\n".join(lines)


def logs(pair: Pair) -> str:
    """The supervisors' and engines' logs of chroot nodes."""
    parts = []
    for node in pair.nodes:
        if isinstance(node, Node):
            log = node.root / "run/carpd/eth0.log"
            text = log.read_text(errors="replace") if log.exists() else "(none)"
            parts.append(f"--- {node.name}: /run/carpd/eth0.log\n{text[-4000:]}")
    return "\n".join(parts)


def assert_held_throughout(what: str, watch: VipWatch, handovers: int) -> None:
    none, both = report(what, watch)
    where = f"\n{timeline(watch)}\n{logs(watch.pair)}"
    assert watch.longest_gap() <= HANDOVER, \
        f"{what}: VIP on no node for {watch.longest_gap():.3f} s{where}"
    assert none <= handovers * HANDOVER, f"{what}: VIP on no node for {none:.3f} s in all{where}"
    # a MASTER handing over keeps the VIP for its drain, ARP for it dropped (README)
    assert watch.longest_overlap() <= DRAIN + 1.0, f"{what}: VIP on both nodes too long{where}"


# ---------------------------------------------------------------------------------------------
# Chroot nodes (carpd's own supervisors)


def supervised(node: Node) -> dict[int, list[str]]:
    return {pid: argv for pid, argv in node.carpd_processes().items()}


def conf(node: Node) -> dict[str, object]:
    data = json.loads((node.root / CONF).read_text())
    assert isinstance(data, dict)
    return data


def age_conf(node: Node) -> None:
    """Give the running engine's conf an option the new carpd's model no longer has, as a conf
    written by an older carpd would (the running engine read it at its start)."""
    path = node.root / CONF
    data = conf(node)
    data[OBSOLETE] = True
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)


def up_backup_first(pair: Pair) -> None:
    """ifup b, then a: a (the quicker master-down) becomes MASTER while b listens, so b has
    heard a by the time a holds the VIP (a BACKUP acts only on the bow-out of the master it
    hears)."""
    for node in (pair.b, pair.a):
        assert isinstance(node, Node)
        node.run("ifup", "eth0")
    pair.wait_holder(pair.a)


def wait_heard(node: Node, master: str, timeout: float = 10.0) -> None:
    """Until node's engine names master as the MASTER it hears (carpctl status --json)."""
    def status() -> str:
        return node.run("carpctl", "status", "eth0", "--json", check=False).output

    def hears() -> bool:
        with contextlib.suppress(ValueError):
            replies = json.loads(status())
            return any(isinstance(r, dict) and r.get("master") == master for r in replies)
        return False

    wait_for(hears, timeout, 0.1, what=f"{node.name} hearing {master} as MASTER", detail=status)


BROKEN_STANZA = """
iface eth1 inet manual
    ucarp-vid 300
    ucarp-vip 192.0.2.200
    ucarp-password x
"""


def test_rolling_upgrade_from_0_1_0_restarts_each_engine_on_a_fresh_conf_vip_held_throughout(
        old_pair: Pair) -> None:
    a, b = old_pair.a, old_pair.b
    assert isinstance(a, Node) and isinstance(b, Node)
    up_backup_first(old_pair)
    before = {node.name: supervised(node) for node in (a, b)}
    age_conf(b)
    with (a.root / "etc/network/interfaces").open("a") as interfaces:
        interfaces.write(BROKEN_STANZA)

    with VipWatch(old_pair) as watch:
        with Stage("upgrade: dpkg -i 0.1.0 -> new on the BACKUP, then on the MASTER"):
            upgrade_b = b.run("dpkg", "-i", NEW_IN_ROOT, timeout=180).output
            upgrade_a = a.run("dpkg", "-i", NEW_IN_ROOT, timeout=180).output
        old_pair.wait_holder(a, timeout=20)
    assert_held_throughout("rolling upgrade 0.1.0 -> new (chroots)", watch, handovers=2)

    for node, output in ((a, upgrade_a), (b, upgrade_b)):
        after = supervised(node)
        assert len(after) == 2 and not set(after) & set(before[node.name]), \
            f"{node.name}: not restarted once:\n{output}"
        assert OBSOLETE not in conf(node), f"{node.name}: conf not written again:\n{output}"
    assert "eth0.conf written again from its stanza" in upgrade_b, upgrade_b
    # the old MASTER's bow-out (a random counter, as 0.1.0 draws them) or the one sent again
    # for it with counters the upgraded peer takes
    assert f"eth0: hand-over: {b.address} took over on the" in upgrade_a, upgrade_a
    # postinst prints carpctl check's problems, and the upgrade still succeeds
    assert "carpctl check /etc/network/interfaces found problems" in upgrade_a, upgrade_a
    assert "ucarp-vid: '300'" in upgrade_a, upgrade_a

    running = {node.name: supervised(node) for node in (a, b)}
    with (VipWatch(old_pair) as watch,
          Stage("upgrade: reinstall of the same version and dpkg-reconfigure, both nodes")):
        for node in (a, b):
            node.run("dpkg", "-i", NEW_IN_ROOT, timeout=180)
            node.run("dpkg-reconfigure", "carpd", timeout=180)
    assert {node.name: supervised(node) for node in (a, b)} == running, "something restarted"
    assert old_pair.holders() == [a]
    assert watch.longest_gap() == 0.0 and watch.longest_overlap() == 0.0


def stub_migrate(node: Node) -> Path:
    """/usr/libexec/carpd/migrate replaced by one that leaves a mark: the mark's path."""
    script = node.root / "usr/libexec/carpd/migrate"
    if script.exists():
        script.rename(script.with_name("migrate.real"))
    script.write_text("#!/bin/sh\necho \"$$\" >> /root/migrated\n")
    script.chmod(0o755)
    return node.root / "root/migrated"


def test_postinst_migrates_from_ucarp_on_first_install_and_upgrade_but_not_reconfigure(
        old_pair: Pair) -> None:
    a = old_pair.a
    assert isinstance(a, Node)
    a.run("dpkg", "-i", NEW_IN_ROOT, timeout=180)
    marks = stub_migrate(a)
    postinst = "/var/lib/dpkg/info/carpd.postinst"
    new_version = deb_field(a.root / NEW_IN_ROOT.lstrip("/"), "Version")

    a.run("dpkg-reconfigure", "carpd")
    a.run(postinst, "configure", new_version)
    assert not marks.exists(), "migrated on a reconfigure or a reinstall"
    a.run(postinst, "configure", "0.1.0-1")
    assert len(marks.read_text().split()) == 1, "not migrated on an upgrade"
    a.run(postinst, "configure", "")
    assert len(marks.read_text().split()) == 2, "not migrated on a first install"


def test_abort_paths_bring_back_what_prerm_stopped_and_abort_upgrade_stops_nothing(
        old_pair: Pair) -> None:
    a, b = old_pair.a, old_pair.b
    assert isinstance(a, Node) and isinstance(b, Node)
    for node in (a, b):
        node.run("dpkg", "-i", NEW_IN_ROOT, timeout=180)
    up_backup_first(old_pair)
    version = deb_field(a.root / NEW_IN_ROOT.lstrip("/"), "Version")
    scripts = "/var/lib/dpkg/info/carpd"

    for stop, back in ((("remove",), ("abort-remove",)),
                       (("deconfigure", "in-favour", "x", "1"),
                        ("abort-deconfigure", "in-favour", "x", "1")),
                       (("deconfigure", "in-favour", "x", "1"), ("configure", version))):
        with Stage(f"upgrade: prerm {stop[0]}, postinst {back[0]}"):
            a.run(f"{scripts}.prerm", *stop, timeout=120)
            assert supervised(a) == {} and old_pair.holders() == [b], stop
            a.run(f"{scripts}.postinst", *back, timeout=120)
            assert len(supervised(a)) == 2, f"postinst {back[0]} did not bring the engine back"
            old_pair.wait_holder(a, timeout=20)
        assert not (a.root / "run/carpd/prerm-stopped").exists()

    running = supervised(a)
    a.run(f"{scripts}.prerm", "upgrade", "9.9", timeout=120)
    a.run(f"{scripts}.postinst", "abort-upgrade", "9.9", timeout=120)
    assert supervised(a) == running and old_pair.holders() == [a]


def test_a_failed_removal_runs_abort_remove_and_the_engine_comes_back(old_pair: Pair) -> None:
    """dpkg itself: prerm stops the engine, then fails (its py3clean fails here); dpkg runs
    postinst abort-remove, which starts the engine again."""
    a, b = old_pair.a, old_pair.b
    assert isinstance(a, Node) and isinstance(b, Node)
    for node in (a, b):
        node.run("dpkg", "-i", NEW_IN_ROOT, timeout=180)
    up_backup_first(old_pair)
    py3clean = a.root / "usr/bin/py3clean"
    py3clean.rename(py3clean.with_name("py3clean.real"))
    py3clean.write_text("#!/bin/sh\nexit 1\n")
    py3clean.chmod(0o755)
    with VipWatch(old_pair) as watch:
        with Stage("upgrade: dpkg -r carpd whose prerm fails"):
            removal = a.run("dpkg", "-r", "carpd", check=False, timeout=180)
        old_pair.wait_holder(a, timeout=20)
    assert removal.returncode != 0, removal.output
    assert len(supervised(a)) == 2, removal.output
    status = a.run("dpkg-query", "-W", "-f", "${db:Status-Status}", "carpd").output
    assert status == "installed", status
    assert_held_throughout("failed removal", watch, handovers=2)


# ---------------------------------------------------------------------------------------------
# A booted trixie: carpd@eth0.service, upgraded from apt-daily-upgrade.service


@pytest.fixture
def old_systemd_pair(old_deb: Path, new_deb: Path, installed: Installed, trixie_systemd: Path,
                     tmp_path: Path) -> Iterator[Pair]:
    """As conftest's `systemd_pair`, with 0.1.0 installed on the booted a (MASTER); b a chroot
    node with this tree's package (a cluster mid-upgrade), not up yet."""
    def install(root: Path) -> str:
        shutil.copy2(old_deb, root / OLD_IN_ROOT.lstrip("/"))
        shutil.copy2(new_deb, root / NEW_IN_ROOT.lstrip("/"))
        with Stage("upgrade: dpkg -i 0.1.0 in booted-to-be trixie"):
            in_root(root, ["dpkg", "-i", OLD_IN_ROOT])
        return OLD_IN_ROOT

    yield from booted_pair(install, installed, trixie_systemd, tmp_path)


UNATTENDED = f"""\
# unattended-upgrades' unit (from apt, KillMode=process) running dpkg -i itself
[Service]
ExecStartPre=
ExecStart=
ExecStart=/usr/bin/dpkg -i {NEW_IN_ROOT}
"""

AGE_CONF = f"""
import json, os
data = json.load(open("/{CONF}"))
data["{OBSOLETE}"] = True
fd = os.open("/{CONF}", os.O_WRONLY | os.O_TRUNC)
os.write(fd, json.dumps(data).encode())
"""
"""age_conf inside the booted container (its /run is its own)."""


def unit_property(a: Booted, name: str) -> str:
    return a.run("systemctl", "show", "-p", name, "--value", UNIT).output.strip()


def test_upgrade_from_apt_daily_upgrade_service_restarts_the_unit_which_outlives_it(
        old_systemd_pair: Pair) -> None:
    a, b = up_with_a_master(old_systemd_pair,
                            "upgrade: boot 0.1.0 until carpd@eth0.service is active")
    wait_heard(b, f"{NET}.11")
    first = a.main_pid(UNIT)
    a.run("python3", "-c", AGE_CONF)

    dropin = a.root / "etc/systemd/system/apt-daily-upgrade.service.d/dpkg.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text(UNATTENDED)
    a.run("systemctl", "daemon-reload")

    with VipWatch(old_systemd_pair) as watch:
        with Stage("upgrade: dpkg -i new as apt-daily-upgrade.service"):
            started = a.run("systemctl", "start", "apt-daily-upgrade.service", check=False,
                            timeout=180)
        old_systemd_pair.wait_holder(a, timeout=20)
    upgrade = a.run("journalctl", "--no-pager", "-o", "cat", "-u", "apt-daily-upgrade.service")
    assert started.returncode == 0, started.output + upgrade.output
    assert_held_throughout("upgrade 0.1.0 -> new under apt-daily-upgrade.service", watch,
                           handovers=2)
    assert a.run("dpkg-query", "-W", "-f", "${Version}", "carpd").output.strip() \
        == deb_field(a.root / NEW_IN_ROOT.lstrip("/"), "Version"), upgrade.output
    time.sleep(1.0)  # the upgrade's unit is over: its cgroup is gone
    assert a.unit_state("apt-daily-upgrade.service") in ("inactive", "unknown")
    assert a.unit_state(UNIT) == "active"
    restarted = a.main_pid(UNIT)
    assert restarted not in (0, first), f"{UNIT} was not restarted:\n{upgrade.output}"
    assert unit_property(a, "NRestarts") == "0", "the engine died and systemd restarted it"
    cgroup = a.run("cat", f"/proc/{restarted}/cgroup").output
    assert UNIT in cgroup and "apt-daily-upgrade" not in cgroup, cgroup
    assert OBSOLETE not in a.run("cat", f"/{CONF}").output, "conf not written again"
    assert f"eth0: hand-over: {NET}.12 took over on the" in upgrade.output, upgrade.output

    with Stage("upgrade: dpkg-reconfigure and a reinstall under systemd"):
        a.run("dpkg-reconfigure", "carpd", timeout=180)
        a.run("dpkg", "-i", NEW_IN_ROOT, timeout=180)
    assert a.main_pid(UNIT) == restarted, "a reconfigure or reinstall restarted the engine"
    assert old_systemd_pair.holders() == [a]

    scripts = "/var/lib/dpkg/info/carpd"
    with Stage("upgrade: prerm remove, postinst abort-remove under systemd"):
        a.run(f"{scripts}.prerm", "remove", timeout=120)
        assert a.unit_state(UNIT) != "active" and old_systemd_pair.holders() == [b]
        a.run(f"{scripts}.postinst", "abort-remove", timeout=120)
        assert a.unit_state(UNIT) == "active", "abort-remove did not start the unit again"
        old_systemd_pair.wait_holder(a, timeout=20)
