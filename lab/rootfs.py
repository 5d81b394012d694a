"""Debian 13 (trixie) root file systems made with debootstrap, one builder and one cache.

A root is ``debootstrap --variant=minbase trixie`` with a list of packages included; nothing
writes to it afterwards (every user mounts an overlay over it).  On a developer's machine each
root is cached per day in ``$CARPD_TEST_CACHE`` (default /var/cache/carpd-tests) as
``root-trixie-LABEL-YYYYMMDD`` (older days' trees of that label are removed); when ``$CI`` is set
each is made fresh, once per run (per process), in the scratch folder the caller names.  Either
way a process builds each root at most once, so the booted tests of tests/ifupdown and
tests/package share :data:`SYSTEMD`'s.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CACHE = Path(os.environ.get("CARPD_TEST_CACHE", "/var/cache/carpd-tests"))

MINBASE: tuple[str, ...] = ()
"""Nothing but minbase: the package's own install pulls its dependencies from the archive."""

SYSTEMD = ("systemd", "systemd-sysv", "dbus", "ifupdown", "iproute2", "python3-pydantic",
           "python3-pyroute2", "python3-debian", "libnftables1")
"""A system to boot under systemd-nspawn, with carpd's dependencies: it installs offline."""

BUILDS: dict[str, float] = {}
"""Seconds each root built by this process took to debootstrap, by label."""

_made: dict[str, Path] = {}


def label(packages: Sequence[str]) -> str:
    """``minbase``, or a digest of the package list (order does not matter)."""
    if not packages:
        return "minbase"
    return hashlib.sha256(",".join(sorted(packages)).encode()).hexdigest()[:8]


def trixie(packages: Sequence[str] = MINBASE, scratch: Path | None = None) -> Path:
    """The root with ``packages``: built at most once per process (see the module's note)."""
    name = label(packages)
    if name not in _made:
        if os.environ.get("CI"):
            folder = Path(tempfile.mkdtemp(prefix="trixie-", dir=scratch))
            _made[name] = _build(folder / "root", packages, name)
        else:
            _made[name] = _cached(name, packages)
    return _made[name]


LEGACY = ("ifupdown-systemd-trixie-", "package-systemd-trixie-", "trixie-minbase-")
"""The names the three builders this one replaced cached their trees under (removed once a day
is over: a tree of older sources may still be using today's)."""


def _cached(name: str, packages: Sequence[str]) -> Path:
    today = f"{datetime.date.today():%Y%m%d}"
    target = CACHE / f"root-trixie-{name}-{today}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    legacy = (old for prefix in LEGACY for old in CACHE.glob(f"{prefix}*"))
    olds = [*CACHE.glob(f"root-trixie-{name}-*"), *(old for old in legacy if today not in old.name)]
    for old in olds:
        if old != target and ".partial" not in old.name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return _build(target, packages, name)


def _build(target: Path, packages: Sequence[str], name: str) -> Path:
    """debootstrap into a partial folder of this process's, then rename it into place (another
    process may have won the race: then its tree is used)."""
    partial = target.with_name(f"{target.name}.partial{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    include = [f"--include={','.join(packages)}"] if packages else []
    started = time.monotonic()
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", *include, "trixie", str(partial), MIRROR],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800, check=False,
        env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8"})
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"debootstrap of trixie ({name}) exited {done.returncode}:\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    BUILDS[name] = time.monotonic() - started
    (partial / ".complete").touch()
    if target.exists() and not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)  # what an interrupted run left
    try:
        partial.rename(target)
    except OSError:
        if not (target / ".complete").exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return target


class Overlay:
    """An overlay mount: lower layers (first is topmost) under a fresh upper layer, all in
    ``base`` (``upper``, ``work``, the mount point ``root``)."""

    def __init__(self, base: Path, lowers: Sequence[Path]) -> None:
        self.upper = base / "upper"
        self.work = base / "work"
        self.root = base / "root"
        for path in (self.upper, self.work, self.root):
            path.mkdir(parents=True)
        lowerdir = ":".join(str(p) for p in lowers)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lowerdir},upperdir={self.upper},workdir={self.work}",
                        str(self.root)], capture_output=True, check=True, timeout=60)
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            for lazy in ([], ["--lazy"]):
                if subprocess.run(["umount", *lazy, str(self.root)], capture_output=True,
                                  check=False, timeout=60).returncode == 0:
                    break
            self.mounted = False
