"""Fixtures for tests/package; the helpers and the layout on disk are in pkgtools.py."""

from __future__ import annotations

import datetime
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkgtools import (
    CACHE,
    CLEAN_PATH,
    NEEDS,
    NET,
    STAGES,
    Built,
    Installed,
    Node,
    Overlay,
    Pair,
    Stage,
    copy_tree,
    debootstrap,
    forbid_service_starts,
    in_root,
    interfaces_file,
    run,
)

ROOT_FIXTURES = {"built", "trixie", "installed", "trixie_lintian", "pair"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, saying why, the tests that build, debootstrap or run nodes where that cannot be
    done (CI runs as root with .ci/apt-packages installed, so it runs them all)."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("needs root (debootstrap, chroot, overlay mounts, network namespaces)")
    missing = [tool for tool in NEEDS if shutil.which(tool, path=CLEAN_PATH) is None]
    if missing:
        reasons.append("needs " + ", ".join(missing) + " (see .ci/apt-packages)")
    if not reasons:
        return
    skip = pytest.mark.skip(reason="; ".join(reasons))
    for item in items:
        if ROOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STAGES:
        terminalreporter.section("carpd package stages (seconds)")
        for name, seconds in STAGES.items():
            terminalreporter.write_line(f"{seconds:8.2f}  {name}")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The package built from a copy of the tree: the source package (from an orig tarball
    of the tree without debian/, for lintian), then the binary one with
    `dpkg-buildpackage -us -uc -b`, both as Debian's own tools run them (clean PATH)."""
    work = tmp_path_factory.mktemp("build")
    copy = work / "tree"
    copy_tree(copy)
    version = run(["dpkg-parsechangelog", "-S", "Version"], cwd=copy).output.strip()
    upstream = version.rsplit("-", 1)[0]
    tree = work / f"carpd-{upstream}"
    copy.rename(tree)
    with Stage("build: orig tarball + dpkg-buildpackage -S -us -uc (source)"):
        run(["tar", "--exclude", f"{tree.name}/debian", "-cJf",
             str(work / f"carpd_{upstream}.orig.tar.xz"), tree.name], cwd=work)
        run(["dpkg-buildpackage", "-S", "-us", "-uc"], cwd=tree, timeout=900)
    with Stage("build: dpkg-buildpackage -us -uc -b"):
        result = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, timeout=900)
    debs = sorted(work.glob(f"carpd_{version}_all.deb"))
    changes = sorted(set(work.glob(f"carpd_{version}_*.changes"))
                     - set(work.glob("*_source.changes")))
    dscs = sorted(work.glob(f"carpd_{version}.dsc"))
    assert len(debs) == len(changes) == len(dscs) == 1, sorted(p.name for p in work.iterdir())
    return Built(tree=tree, deb=debs[0], changes=changes[0], dsc=dscs[0], log=result.output)


@pytest.fixture(scope="session")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debootstrapped minbase trixie (read-only from here on: everything else overlays it)."""
    with Stage("debootstrap --variant=minbase trixie" + (" (CI: fresh)" if os.environ.get("CI")
                                                         else " (cached per day)")):
        if os.environ.get("CI"):
            target = tmp_path_factory.mktemp("trixie") / "root"
            debootstrap(target)
            return target
        CACHE.mkdir(parents=True, exist_ok=True)
        target = CACHE / f"trixie-minbase-{datetime.date.today():%Y%m%d}"
        if not target.is_dir():
            for old in CACHE.glob("trixie-minbase-*"):
                shutil.rmtree(old, ignore_errors=True)
            debootstrap(target)
        return target


@pytest.fixture(scope="session")
def installed(trixie: Path, built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The package installed with apt-get (pulling its dependencies from the trixie archive)
    into an overlay over the debootstrapped tree, kept as a layer for the nodes."""
    base = tmp_path_factory.mktemp("installed")
    overlay = Overlay(base, [trixie])
    try:
        deb = f"/tmp/{built.deb.name}"
        shutil.copy2(built.deb, overlay.root / deb.lstrip("/"))
        forbid_service_starts(overlay.root)
        with Stage("apt-get install ./carpd_*.deb in trixie"):
            in_root(overlay.root, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                   deb])
    finally:
        overlay.unmount()
    return Installed(layer=overlay.upper, lowers=(overlay.upper, trixie), deb_in_root=deb)


@pytest.fixture(scope="session")
def trixie_lintian(trixie: Path, built: Built,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """trixie with trixie's lintian installed, and the build's results (source and binary)
    in its /tmp."""
    overlay = Overlay(tmp_path_factory.mktemp("lintian"), [trixie])
    try:
        forbid_service_starts(overlay.root)
        with Stage("apt-get install lintian in trixie"):
            in_root(overlay.root, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                   "lintian"])
        for path in built.changes.parent.iterdir():
            if path.is_file() and path.name.startswith("carpd_"):
                shutil.copy2(path, overlay.root / "tmp" / path.name)
        yield overlay.root
    finally:
        overlay.unmount()


@pytest.fixture
def pair(installed: Installed, tmp_path: Path) -> Iterator[Pair]:
    """Two trixie nodes with the package installed, each in its own network namespace with
    eth0 on a shared bridge, and the ucarp stanza in /etc/network/interfaces: a (advskew 0,
    ucarp-master yes) should end up MASTER, b (advskew 100) BACKUP. Nothing is up yet."""
    tag = uuid.uuid4().hex[:8]
    hub = f"carpd-pkg-{tag}-hub"
    made_ns: list[str] = []
    nodes: list[Node] = []
    try:
        run(["ip", "netns", "add", hub])
        made_ns.append(hub)
        run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", hub, "link", "set", "br0", "up"])
        for name, host, advskew, preempt in (("a", 11, 0, True), ("b", 12, 100, False)):
            netns = f"carpd-pkg-{tag}-{name}"
            run(["ip", "netns", "add", netns])
            made_ns.append(netns)
            run(["ip", "-n", netns, "link", "set", "lo", "up"])
            run(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name",
                 f"p-{name}", "netns", hub])
            run(["ip", "-n", hub, "link", "set", f"p-{name}", "master", "br0", "up"])
            overlay = Overlay(tmp_path / name, installed.lowers)
            node = Node(name, netns, overlay, f"{NET}.{host}", installed.deb_in_root)
            nodes.append(node)
            (node.root / "etc/network/interfaces").write_text(
                interfaces_file(node.address + "", advskew, preempt))
            (node.root / "run/network").mkdir(parents=True, exist_ok=True)
            # A node is a running system, not an image being built: maintainer scripts may
            # (re)start what they must.
            (node.root / "usr/sbin/policy-rc.d").unlink()
        yield Pair(nodes[0], nodes[1])
    finally:
        for node in nodes:
            node.stop_everything()
        for netns in reversed(made_ns):
            run(["ip", "netns", "del", netns], check=False)
        for node in nodes:
            node.overlay.unmount()
