"""Helpers for tests/package (its fixtures are in conftest.py).

The Debian package, end to end: the .deb built from this tree, a debootstrapped Debian 13
(trixie) with the package installed, and pairs of trixie nodes in network namespaces that run
the *installed* package through real ifup/ifdown.

Layout on disk (all under pytest's temporary folder unless said otherwise):
- a copy of the tree, built with dpkg-buildpackage (so the repository stays clean);
- debootstrap --variant=minbase trixie, cached per day in $CARPD_TEST_CACHE (default
  /var/cache/carpd-tests) on a developer's machine, made fresh when $CI is set;
- the package installed with apt-get in an overlay over it (the cached tree stays pristine);
- one overlay per node over that, so each node has its own /etc/network/interfaces, /run
  (ifupdown state, /run/carpd) and dpkg database, in its own network namespace; the nodes'
  eth0 are veths on a bridge in a third namespace. Nothing is added to the host's network.

Every chroot command runs in a private mount namespace (`ip netns exec` makes one; elsewhere
`unshare --mount`) that mounts /proc and /sys for it, so nothing is left mounted on the host but
the overlays, which the fixtures unmount. Engines are found by their root directory and stopped
by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR = "http://deb.debian.org/debian"
CACHE = Path(os.environ.get("CARPD_TEST_CACHE", "/var/cache/carpd-tests"))
CARPD = "/usr/sbin/carpd"

# Seconds each stage took, printed at the end of the run.
STAGES: dict[str, float] = {}

NEEDS = ("dpkg-buildpackage", "debootstrap", "lintian", "ip", "unshare", "chroot")


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


def debootstrap(target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", "trixie", str(partial), MIRROR], timeout=900)
    partial.rename(target)


class Overlay:
    """An overlay mount: lower layers (first is topmost) under a fresh upper layer."""

    def __init__(self, base: Path, lowers: Sequence[Path]) -> None:
        self.upper = base / "upper"
        self.work = base / "work"
        self.root = base / "root"
        for path in (self.upper, self.work, self.root):
            path.mkdir(parents=True)
        lowerdir = ":".join(str(p) for p in lowers)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lowerdir},upperdir={self.upper},workdir={self.work}", str(self.root)])
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            if run(["umount", str(self.root)], check=False).returncode != 0:
                run(["umount", "--lazy", str(self.root)], check=False)
            self.mounted = False


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


@dataclass
class Node:
    name: str
    netns: str
    overlay: Overlay
    address: str
    deb_in_root: str
    extra: dict[str, str] = field(default_factory=dict)

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

    def holds(self, address: str = VIP) -> bool:
        out = run(["ip", "-n", self.netns, "-4", "-o", "addr", "show", "dev", "eth0"]).output
        return f" {address}/" in out

    def stop_everything(self) -> None:
        """Finalizer: end what runs in this root (engines, stray scripts), by PID."""
        pids = list(self.processes())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_state(p) not in (None, "Z") for p in pids):
            time.sleep(0.05)
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
    a: Node
    b: Node

    @property
    def nodes(self) -> tuple[Node, Node]:
        return (self.a, self.b)

    def holders(self) -> list[Node]:
        return [node for node in self.nodes if node.holds()]

    def wait_single_holder(self, timeout: float = 15.0) -> Node:
        deadline = time.monotonic() + timeout
        holders: list[Node] = []
        while time.monotonic() < deadline:
            holders = self.holders()
            if len(holders) == 1:
                return holders[0]
            time.sleep(0.05)
        raise AssertionError(f"after {timeout} s the VIP is on {[n.name for n in holders]}")

    def wait_holder(self, node: Node, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.holders() == [node]:
                return
            time.sleep(0.05)
        raise AssertionError(f"after {timeout} s the VIP is on "
                             f"{[n.name for n in self.holders()]}, not only on {node.name}")


