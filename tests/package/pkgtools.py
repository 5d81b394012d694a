"""Helpers for tests/package (its fixtures are in conftest.py).

The Debian package, end to end: the .deb built from this tree, a debootstrapped Debian 13
(trixie) with the package installed, and pairs of trixie nodes in network namespaces that run
the *installed* package through real ifup/ifdown.

Layout on disk (all under pytest's temporary folder unless said otherwise):
- a copy of the tree, built with dpkg-buildpackage (so the repository stays clean);
- debootstrap --variant=minbase trixie (lab/rootfs.py: cached per day in $CARPD_TEST_CACHE,
  default /var/cache/carpd-tests, on a developer's machine; made fresh once per run when $CI
  is set);
- the package installed with apt-get in an overlay over it (the cached tree stays pristine);
- one overlay per node over that, so each node has its own /etc/network/interfaces, /run
  (ifupdown state, /run/carpd) and dpkg database, in its own network namespace; the nodes'
  eth0 are veths on a bridge in a third namespace. Nothing is added to the host's network.
  Such a node runs no init: the hooks run the engines under carpd's own supervisor;
- for the systemd path, lab.rootfs's trixie with systemd and the package's dependencies (the
  same tree tests/ifupdown boots), the package installed in an overlay of it, booted with
  systemd-nspawn (lab/booted.py) in a node's network namespace: there the hooks start
  carpd@IFACE.service.

Every chroot command runs in a private mount namespace (`ip netns exec` makes one; elsewhere
`unshare --mount`) that mounts /proc and /sys for it, so nothing is left mounted on the host but
the overlays, which the fixtures unmount. Engines are found by their root directory and stopped
by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lab import booted
from lab import netns as lab_netns
from lab.booted import power_off
from lab.poll import Timeout, wait_for
from lab.rootfs import CACHE, CLEAN_PATH, Overlay
from lab.tree import REPO

# at home in lab/; the tests import them from here
__all__ = ["CACHE", "CLEAN_PATH", "REPO", "Overlay", "power_off"]

CARPD = "/usr/sbin/carpd"

# Seconds each stage took, printed at the end of the run.
STAGES: dict[str, float] = {}

NEEDS = ("dpkg-buildpackage", "debootstrap", "lintian", "ip", "unshare", "chroot", "nsenter",
         "systemd-nspawn")


def record(name: str, seconds: float) -> None:
    """A measurement to show with the stages' timings."""
    STAGES[name] = seconds


class Stage:
    """Time a stage: `with Stage("build"): ...`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = 0.0

    def __enter__(self) -> Stage:
        self.started = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        STAGES[self.name] = time.monotonic() - self.started


def clean_env(**extra: str) -> dict[str, str]:
    """No pyenv shims, no venv: Debian's own tools, as a package build and a system have."""
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive"}
    env.update(extra)
    return env


@dataclass
class Result:
    argv: list[str]
    returncode: int
    output: str

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(f"{' '.join(self.argv)} exited {self.returncode}:\n{self.output}")
        return self


def run(argv: Sequence[str], *, timeout: float = 600, check: bool = True,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
    """Run a command with its output in a file, not a pipe: a daemon it leaves behind may keep
    inherited descriptors open, and reading a pipe would wait for it."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"carpd-pkg-{uuid.uuid4().hex}.log"
    try:
        with open(log, "w+b") as out:
            proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, env=env or clean_env(), cwd=cwd,
                                  timeout=timeout, check=False)
            out.seek(0)
            result = Result(list(argv), proc.returncode, out.read().decode(errors="replace"))
    finally:
        log.unlink(missing_ok=True)
    return result.check() if check else result


# ---------------------------------------------------------------------------------------------
# Build


@dataclass(frozen=True)
class Built:
    tree: Path      # the copy of the source tree that was built
    deb: Path
    changes: Path   # of the binary build
    dsc: Path       # the source package, built too so that lintian checks it as well
    log: str


def tree_files() -> list[str]:
    """The tree's files as git sees them: tracked and untracked, minus ignored ones (the venv,
    caches, build output)."""
    listing = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout
    return [name for name in os.fsdecode(listing).split("\0") if name]


def copy_tree(target: Path) -> None:
    """Copy the tree to build: this repository's files as git sees them, or, when
    $CARPD_PKG_SOURCE names another folder (to try a change without touching the repository),
    that folder's, less the usual build and cache folders."""
    other = os.environ.get("CARPD_PKG_SOURCE")
    if other:
        shutil.copytree(other, target, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", "build", ".pybuild"))
        return
    for name in tree_files():
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet in the index
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest, follow_symlinks=False)


CHROOT = 'r="$1"; shift; mount -t proc proc "$r/proc" && mount -t sysfs sysfs "$r/sys" ' \
         '&& exec chroot "$r" "$@"'


def in_root(root: Path, argv: Sequence[str], *, netns: str | None = None,
            timeout: float = 600, check: bool = True) -> Result:
    """Run argv chrooted in root, in a private mount namespace with /proc and /sys mounted
    (in network namespace netns if given, else the host's, which apt needs)."""
    prefix = ["ip", "netns", "exec", netns] if netns else ["unshare", "--mount",
                                                           "--propagation", "slave"]
    return run([*prefix, "sh", "-c", CHROOT, "sh", str(root), *argv], timeout=timeout,
               check=check)


def forbid_service_starts(root: Path) -> None:
    """policy-rc.d: maintainer scripts may not start services in this chroot, as in any image
    build (carpd has none it starts at install: its units are templates)."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)


@dataclass(frozen=True)
class Installed:
    layer: Path      # the overlay's upper layer holding the installed package
    lowers: tuple[Path, ...]
    deb_in_root: str


# ---------------------------------------------------------------------------------------------
# Nodes


NET = "192.0.2"      # TEST-NET-1, only ever inside the namespaces made here
VIP = f"{NET}.100"
VHID = 7
PASSWORD = "pkg-test-secret"


def interfaces_file(address: str, advskew: int, preempt: bool) -> str:
    """The stanza users of Debian's ucarp already have (see shared/spec/debian.md)."""
    return f"""\
iface eth0 inet static
    address {address}
    netmask 255.255.255.0
    ucarp-vid {VHID}
    ucarp-vip {VIP}
    ucarp-password {PASSWORD}
    ucarp-advskew {advskew}
    ucarp-advbase 1
    ucarp-master {"yes" if preempt else "no"}

iface eth0:ucarp inet static
    address {VIP}
    netmask 255.255.255.255
"""


def _root_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None


def _argv_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(part) for part in raw.split(b"\0") if part]


def netns_holds(netns: str, address: str = VIP) -> bool:
    """Whether eth0 in network namespace netns has address."""
    return address in lab_netns.labels(netns)


class Host(Protocol):
    """A node the VIP can be on: a chroot run through ifup (Node) or a booted system (Booted)."""

    name: str
    netns: str

    def holds(self, address: str = VIP) -> bool: ...


@dataclass
class Node(lab_netns.Host):
    overlay: Overlay
    address: str
    deb_in_root: str

    @property
    def root(self) -> Path:
        return self.overlay.root

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> Result:
        return in_root(self.root, argv, netns=self.netns, check=check, timeout=timeout)

    def processes(self) -> dict[int, list[str]]:
        """Every process whose root is this node's root: {pid: argv}."""
        mine = str(self.root)
        found = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and _root_of(int(name)) == mine:
                argv = _argv_of(int(name))
                if argv:
                    found[int(name)] = argv
        return found

    def engines(self) -> list[int]:
        return sorted(pid for pid, argv in self.processes().items()
                      if CARPD in argv[:2] and _state(pid) != "Z")

    def carpd_processes(self) -> dict[int, list[str]]:
        """The engines and their supervisors (not the scripts they run)."""
        return {pid: argv for pid, argv in self.processes().items()
                if CARPD in argv[:2] or "carpd.debian.ifupdown.main" in argv[:3]}

    def outputs(self) -> list[tuple[str, int]]:
        """(command line, inode of what its stdout is) of the engines and supervisors in this
        root, sorted: where each writes its log."""
        found = []
        for pid, argv in self.carpd_processes().items():
            try:
                inode = os.stat(f"/proc/{pid}/fd/1").st_ino
            except OSError:
                continue
            found.append((" ".join(argv), inode))
        return sorted(found)

    def holds(self, address: str = VIP) -> bool:
        return super().holds(address)

    def stop_everything(self) -> None:
        """Finalizer: end what runs in this root (engines, stray scripts), by PID."""
        pids = list(self.processes())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(Timeout):
            wait_for(lambda: all(_state(p) in (None, "Z") for p in pids), 10)
        for pid in pids:
            if _state(pid) not in (None, "Z"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@dataclass
class Pair:
    a: Host
    b: Host

    @property
    def nodes(self) -> tuple[Host, Host]:
        return (self.a, self.b)

    def holders(self) -> list[Host]:
        return [node for node in self.nodes if node.holds()]

    def wait_holder(self, node: Host, timeout: float = 15.0) -> None:
        wait_for(lambda: self.holders() == [node], timeout, what=f"the VIP on {node.name} alone",
                 detail=lambda: f"it is on {[n.name for n in self.holders()]}")


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
    nodes = [node for node in pair.nodes if isinstance(node, Node)]
    assert len(nodes) == 2
    with Stage("ifup eth0 on both nodes"):
        for node in nodes:
            node.run("ifup", "eth0")
    for node in nodes:
        assert len(node.engines()) == 1, (node.name, node.processes())
    with Stage("first MASTER holds the VIP (after the master-down interval)"):
        pair.wait_holder(nodes[0])
    return nodes[0]


# ---------------------------------------------------------------------------------------------
# A booted trixie (systemd as PID 1)


UNIT = "carpd@eth0.service"
"""The unit the hook runs eth0's engine as under systemd."""
BOOT = 120.0
"""How long a booted trixie may take until networking.service is active."""


@dataclass
class Booted(booted.Booted):
    """A trixie booted with systemd-nspawn in network namespace netns, its root an overlay."""

    name: str
    overlay: Overlay
    deb_in_root: str

    def wait_booted(self, what: str = "networking.service active") -> None:
        """Wait until networking.service is active: eth0 is up and the hook has run."""
        self.wait(lambda: self.unit_state("networking.service") == "active", BOOT, what)

    def wait_unit(self, unit: str = UNIT, timeout: float = 30) -> None:
        self.wait(lambda: self.unit_state(unit) == "active", timeout, f"{unit} active")

    def holds(self, address: str = VIP) -> bool:
        return netns_holds(self.netns, address)

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> Result:
        """Run argv inside the container (all its namespaces, its root)."""
        return run(self.enter(*argv), check=check, timeout=timeout)

    def carpd_processes(self) -> list[str]:
        """Command lines of carpd's processes in the container."""
        out = self.run("sh", "-c", "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; "
                       "echo; done 2>/dev/null").output
        return [line for line in out.splitlines()
                if "/usr/sbin/carpd" in line or "carpd.debian.ifupdown" in line
                or "carpd-ifupdown" in line]


def ctl_status(node: Node | Booted) -> dict[str, Any]:
    """`carpctl status eth0 --json` on the node: its one engine's reply."""
    result = node.run("carpctl", "status", "eth0", "--json", check=False)
    replies = json.loads(result.output[result.output.index("["):])
    assert len(replies) == 1, replies
    reply: dict[str, Any] = replies[0]
    return reply


def up_with_a_master(pair: Pair, stage: str) -> tuple[Booted, Node]:
    """systemd_pair's a booted until its engine's unit is active, then b up: a MASTER."""
    a, b = pair.a, pair.b
    assert isinstance(a, Booted) and isinstance(b, Node)
    with Stage(stage):
        a.wait_booted()
        a.wait_unit()
    b.run("ifup", "eth0")
    pair.wait_holder(a, timeout=20)
    return a, b


def boot_node_a(overlay: Overlay, netns: str, console: Path, hostname: str,
                deb_in_root: str) -> Booted:
    """Boot the trixie in ``overlay`` (its policy-rc.d lifted, eth0 as node a's: 192.0.2.11,
    advskew 0, preempt) under systemd-nspawn in ``netns``, its console in ``console``."""
    root = overlay.root
    (root / "usr/sbin/policy-rc.d").unlink()
    (root / "etc/hostname").write_text(f"{hostname}\n")
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nauto eth0\n"
        + interfaces_file(f"{NET}.11", 0, True))
    return Booted(netns, root, console, booted.nspawn(root, netns, console), name="a",
                  overlay=overlay, deb_in_root=deb_in_root)

