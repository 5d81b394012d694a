"""The maintainer scripts run as root: what any user can set (a process's command line,
environment, working folder) must never make them signal a process or run code as root.

Bait: processes of user nobody that look like carpd's own, one `python3 -m
carpd.debian.ifupdown.main supervise eth9` with PYTHONPATH leading to a module of the user's own,
one whose argv[0] is /usr/sbin/carpd. Each writes a marker naming its uid when it runs, and another
when it gets a signal. Installing, upgrading and removing the package must leave them running,
untouched, and never run the module as root, while carpd's own supervisor is still restarted and
stopped."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from pkgtools import NET, PASSWORD, Built, Node, Pair, Stage
from test_upgrade import newer

from lab.poll import wait_for

NOBODY = 65534
BAIT_DIR = "/tmp/x"

# carpd/debian/ifupdown/main.py of the user's own: also run as the fake engine (role "engine").
BAIT = """\
import os, signal, sys, time

role = "engine" if sys.argv[1:2] == ["engine"] else "supervisor"

def mark(what):
    with open(f"/tmp/x/{role}-{what}-as-{os.getuid()}", "a") as f:
        f.write(f"{os.getpid()}\\n")

def on_signal(signum, frame):
    mark(f"signal{signum}")
    sys.exit(0)

for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, on_signal)
mark("ran")
while True:
    time.sleep(3600)
"""


@dataclass
class Bait:
    node: Node
    supervisor: int = 0
    engine: int = 0

    @property
    def folder(self) -> Path:
        return self.node.root / BAIT_DIR.lstrip("/")

    def plant(self) -> None:
        package = self.folder / "carpd" / "debian" / "ifupdown"
        package.mkdir(parents=True)
        for init in (self.folder / "carpd", package.parent, package):
            (init / "__init__.py").write_text("")
        (package / "main.py").write_text(BAIT)
        for path in (self.folder, self.folder / "carpd", package.parent, package):
            os.chown(path, NOBODY, NOBODY)
            path.chmod(0o755)

    def start(self) -> None:
        as_nobody = "setsid -f setpriv --reuid=nobody --regid=nogroup --clear-groups --"
        quiet = "</dev/null >/dev/null 2>&1"
        self.node.run("sh", "-c", f"{as_nobody} env PYTHONPATH={BAIT_DIR} python3 -m "
                      f"carpd.debian.ifupdown.main supervise eth9 {quiet}")
        self.node.run("sh", "-c", f"{as_nobody} bash -c 'exec -a /usr/sbin/carpd python3 "
                      f"{BAIT_DIR}/carpd/debian/ifupdown/main.py engine' {quiet}")
        wait_for(lambda: len(self.markers()) >= 2, 10, what="both lookalikes' markers",
                 detail=self.markers)
        assert self.markers() == ["engine-ran-as-65534", "supervisor-ran-as-65534"]
        for pid, argv in self.node.processes().items():
            if argv[:5] == ["python3", "-m", "carpd.debian.ifupdown.main", "supervise", "eth9"]:
                self.supervisor = pid
            elif argv[:1] == ["/usr/sbin/carpd"] and argv[-1:] == ["engine"]:
                self.engine = pid
        assert self.supervisor and self.engine, self.node.processes()

    def markers(self) -> list[str]:
        return sorted(path.name for path in self.folder.iterdir() if "-as-" in path.name)

    def assert_untouched(self, when: str) -> None:
        """Both still running as nobody, never signalled, never run again (as root or not)."""
        as_root = [name for name in self.markers() if name.endswith("-as-0")]
        assert as_root == [], f"{when}: nobody's module ran as root"
        assert self.markers() == ["engine-ran-as-65534", "supervisor-ran-as-65534"], when
        for pid in (self.supervisor, self.engine):
            assert _running_as(pid) == NOBODY, f"{when}: bait pid {pid} is gone"


def _running_as(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields["State"].split()[0] == "Z":
        return None
    return int(fields["Uid"].split()[0])


@pytest.fixture(scope="module")
def upgrade_deb(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This tree's .deb as a newer version (a reinstall of the same version restarts
    nothing)."""
    return newer(built, built.deb, tmp_path_factory.mktemp("upgrade"))


def _upgrade(node: Node, deb: Path) -> str:
    shutil.copy2(deb, node.root / "root/carpd_upgrade.deb")
    return node.run("dpkg", "-i", "/root/carpd_upgrade.deb", timeout=180).output


def _root_supervisors(node: Node) -> list[int]:
    return sorted(pid for pid, argv in node.processes().items()
                  if "carpd.debian.ifupdown.main" in argv[:3] and _running_as(pid) == 0)


def _root_engines(node: Node) -> list[int]:
    return [pid for pid in node.engines() if _running_as(pid) == 0]


def _bait_beside_carpds_own_supervisor(pair: Pair) -> tuple[Node, Bait, int]:
    node = pair.a
    assert isinstance(node, Node)
    node.run("ifup", "eth0")
    (supervisor,) = _root_supervisors(node)
    bait = Bait(node)
    bait.plant()
    bait.start()
    return node, bait, supervisor


def test_upgrade_restarts_carpds_own_supervisor_but_never_signals_nor_runs_lookalikes(
        pair: Pair, upgrade_deb: Path) -> None:
    node, bait, supervisor = _bait_beside_carpds_own_supervisor(pair)
    with Stage("trust: upgrade (dpkg -i of a newer version) beside nobody's bait"):
        upgrade = _upgrade(node, upgrade_deb)
    bait.assert_untouched("after the upgrade")
    restarted = _root_supervisors(node)
    assert len(restarted) == 1 and restarted != [supervisor], \
        f"carpd's own supervisor was not restarted:\n{upgrade}"
    assert len(_root_engines(node)) == 1
    for pid in (bait.supervisor, bait.engine):
        assert f"pid {pid} (uid {NOBODY}) looks like carpd" in upgrade, upgrade


def test_remove_stops_carpds_own_supervisor_and_install_starts_nothing_lookalikes_untouched(
        pair: Pair) -> None:
    node, bait, _ = _bait_beside_carpds_own_supervisor(pair)
    with Stage("trust: apt-get remove beside nobody's bait"):
        remove = node.run("apt-get", "remove", "-y", "-q", "carpd", timeout=180).output
    bait.assert_untouched("after the removal")
    assert _root_supervisors(node) == [] and _root_engines(node) == [], remove
    for pid in (bait.supervisor, bait.engine):
        assert f"pid {pid} (uid {NOBODY}) looks like carpd" in remove, remove

    with Stage("trust: purge, then install (dpkg -i) beside nobody's bait"):
        node.run("dpkg", "--purge", "carpd", timeout=180)
        node.run("dpkg", "-i", node.deb_in_root, timeout=180)
    bait.assert_untouched("after a fresh install")


def _start_by_hand(node: Node, vhid: int) -> int:
    """`carpd -B` on eth0 as an administrator would start it: its pid (from its pidfile)."""
    passfile = node.root / "root/carpd-pass"
    passfile.write_text(PASSWORD + "\n")
    passfile.chmod(0o600)
    node.run("carpd", "-B", "-i", "eth0", "-s", node.address, "-v", str(vhid),
             "-o", "/root/carpd-pass", "-a", f"{NET}.101", "-f", "none")
    pidfile = node.root / f"run/carpd/eth0.{vhid}.pid"
    wait_for(pidfile.exists, 10, what=f"{pidfile} written")
    return int(pidfile.read_text())


def test_an_engine_started_by_hand_runs_on_after_an_upgrade_with_a_note_and_remove_stops_it(
        pair: Pair, upgrade_deb: Path) -> None:
    node = pair.a
    assert isinstance(node, Node)
    node.run("ifup", "eth0")
    by_hand = _start_by_hand(node, 9)
    assert _running_as(by_hand) == 0

    with Stage("trust: upgrade beside an engine started by hand"):
        upgrade = _upgrade(node, upgrade_deb)
    assert f"pid {by_hand} runs the old code; restart it yourself" in upgrade, upgrade
    assert _running_as(by_hand) == 0, f"the engine started by hand is gone:\n{upgrade}"
    assert len(_root_engines(node)) == 2

    with Stage("trust: apt-get remove beside an engine started by hand"):
        remove = node.run("apt-get", "remove", "-y", "-q", "carpd", timeout=180).output
    assert _running_as(by_hand) is None, remove
    assert _root_engines(node) == []
