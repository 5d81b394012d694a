"""Fixtures for tests/package; the helpers and the layout on disk are in pkgtools.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from pkgtools import (
    CLEAN_PATH,
    NEEDS,
    NET,
    PASSWORD,
    STAGES,
    Built,
    Installed,
    Node,
    Overlay,
    Pair,
    Stage,
    boot_node_a,
    clean_env,
    copy_tree,
    forbid_service_starts,
    in_root,
    interfaces_file,
    run,
)

from lab import rootfs
from lab.booted import Booted
from lab.netns import Switch

ROOT_FIXTURES = {"built", "trixie", "trixie_systemd", "installed", "trixie_lintian", "pair",
                 "systemd_pair"}


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
    if rootfs.BUILDS:  # each built once per run, whichever suite asked first (lab/rootfs.py)
        terminalreporter.section("debootstrapped trixie roots built by this run (seconds)")
        for label, seconds in rootfs.BUILDS.items():
            terminalreporter.write_line(f"{seconds:8.2f}  root-trixie-{label}")


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
    # This host may be older than trixie: its python3-pydantic cannot satisfy the test
    # Build-Depends (<!nocheck>), so the package is built with the nocheck profile here;
    # tests/package/test_hygiene.py builds it in trixie with dh_auto_test running the tests.
    nocheck = {**clean_env(), "DEB_BUILD_PROFILES": "nocheck", "DEB_BUILD_OPTIONS": "nocheck"}
    with Stage("build: orig tarball + dpkg-buildpackage -S -us -uc (source)"):
        run(["tar", "--exclude", f"{tree.name}/debian", "-cJf",
             str(work / f"carpd_{upstream}.orig.tar.xz"), tree.name], cwd=work)
        run(["dpkg-buildpackage", "-S", "-us", "-uc"], cwd=tree, timeout=900, env=nocheck)
    with Stage("build: dpkg-buildpackage -us -uc -b (nocheck profile)"):
        result = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, timeout=900,
                     env=nocheck)
    debs = sorted(work.glob(f"carpd_{version}_all.deb"))
    changes = sorted(set(work.glob(f"carpd_{version}_*.changes"))
                     - set(work.glob("*_source.changes")))
    dscs = sorted(work.glob(f"carpd_{version}.dsc"))
    assert len(debs) == len(changes) == len(dscs) == 1, sorted(p.name for p in work.iterdir())
    return Built(tree=tree, deb=debs[0], changes=changes[0], dsc=dscs[0], log=result.output)


WHERE = " (CI: fresh)" if os.environ.get("CI") else " (cached per day)"


@pytest.fixture(scope="session")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debootstrapped minbase trixie (read-only from here on: everything else overlays it)."""
    with Stage("debootstrap --variant=minbase trixie" + WHERE):
        return rootfs.trixie(rootfs.MINBASE, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def trixie_systemd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """minbase trixie with systemd and the package's dependencies (read-only; lab.rootfs's,
    the one tests/ifupdown boots too, built once per run)."""
    with Stage("debootstrap --variant=minbase --include=systemd,... trixie" + WHERE):
        return rootfs.trixie(rootfs.SYSTEMD, tmp_path_factory.getbasetemp())


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


class Lab:
    """Network namespaces on one bridge (in a namespace of its own), removed by close()."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.switch = Switch(f"carpd-pkg-{self.tag}-hub")
        self.hub = self.switch.name

    @property
    def made(self) -> list[str]:
        """The namespaces made so far (the bridge's first)."""
        return self.switch.namespaces

    def node_netns(self, name: str) -> str:
        """A namespace whose eth0 is on the bridge."""
        return self.switch.add_node(f"carpd-pkg-{self.tag}-{name}", f"p-{name}")

    def close(self) -> None:
        self.switch.close()


def chroot_node(lab: Lab, installed: Installed, base: Path, name: str, host: int,
                advskew: int, preempt: bool, extra: Sequence[str] = ()) -> Node:
    """A node of ``installed`` in a namespace of ``lab``'s, its root an overlay under
    ``base``/``name``, the stanza of interfaces_file in /etc/network/interfaces with the
    ``extra`` lines after its password; nothing is up yet."""
    overlay = Overlay(base / name, installed.lowers)
    node = Node(name, lab.node_netns(name), overlay, f"{NET}.{host}", installed.deb_in_root)
    stanza = interfaces_file(node.address, advskew, preempt)
    password = f"    ucarp-password {PASSWORD}\n"
    assert password in stanza
    added = "".join(f"    {line}\n" for line in extra)
    (node.root / "etc/network/interfaces").write_text(stanza.replace(password, password + added))
    (node.root / "run/network").mkdir(parents=True, exist_ok=True)
    # A node is a running system, not an image being built: maintainer scripts may (re)start
    # what they must.
    (node.root / "usr/sbin/policy-rc.d").unlink()
    return node


def plugged(lab: Lab, name: str, address: str) -> str:
    """A namespace of ``lab``'s whose eth0 (on the bridge) is up with ``address``/24."""
    netns = lab.node_netns(name)
    run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    return netns


NodeMaker = Callable[[Lab, str, int, int, bool], Node]
"""Makes a node in a lab: (lab, name, host, advskew, preempt)."""


@contextlib.contextmanager
def chroot_pair(make: NodeMaker, a_preempts: bool = True) -> Iterator[tuple[Lab, Node, Node]]:
    """A lab with node a (host .11, advskew 0, preempting as asked) and b (host .12, advskew
    100, no preempt) made by ``make``; on the way out their engines (and every process in their
    roots) are stopped, the lab's namespaces removed and their overlays unmounted."""
    lab = Lab()
    nodes: list[Node] = []
    try:
        for name, host, advskew, preempt in (("a", 11, 0, a_preempts), ("b", 12, 100, False)):
            nodes.append(make(lab, name, host, advskew, preempt))
        yield lab, nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop_everything()
        lab.close()
        for node in nodes:
            node.overlay.unmount()


@pytest.fixture
def pair(installed: Installed, tmp_path: Path) -> Iterator[Pair]:
    """Two trixie nodes (chroots) with the package installed, each in its own network
    namespace with eth0 on a shared bridge, and the ucarp stanza in /etc/network/interfaces:
    a (advskew 0, ucarp-master yes) should end up MASTER, b (advskew 100) BACKUP. Nothing is up
    yet: ifup runs the installed hooks, which start the engines under carpd's supervisor (no
    systemd)."""
    with chroot_pair(lambda lab, *node: chroot_node(lab, installed, tmp_path, *node)) as (
            _, a, b):
        yield Pair(a, b)


@pytest.fixture
def systemd_pair(built: Built, installed: Installed, trixie_systemd: Path,
                 tmp_path: Path) -> Iterator[Pair]:
    """a: a trixie booted with systemd (systemd-nspawn) with the package installed, eth0 up at
    boot by networking.service, so the hook runs the engine as carpd@eth0.service (advskew 0,
    ucarp-master yes: it ends up MASTER); b: a chroot node as in `pair` (advskew 100), not up
    yet."""
    def install(root: Path) -> str:
        deb = f"/root/{built.deb.name}"  # trixie's systemd mounts a tmpfs on /tmp
        shutil.copy2(built.deb, root / deb.lstrip("/"))
        with Stage("apt-get install ./carpd_*.deb in booted-to-be trixie (deps already there)"):
            in_root(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                           deb])
        return deb

    yield from booted_pair(install, installed, trixie_systemd, tmp_path)


def booted_pair(install: Callable[[Path], str], installed: Installed, trixie_systemd: Path,
                base: Path) -> Iterator[Pair]:
    """systemd_pair's a and b, with what ``install`` (given the root, service starts
    forbidden) installs on a, from the .deb whose path in the root it returns; b has
    ``installed``'s package. Powered off, stopped and removed on the way out."""
    lab = Lab()
    overlay = Overlay(base / "a", [trixie_systemd])
    a: Booted | None = None
    b: Node | None = None
    try:
        forbid_service_starts(overlay.root)
        deb = install(overlay.root)
        a = boot_node_a(overlay, lab.node_netns("a"), base / "console.log", "carpd-a", deb)
        b = chroot_node(lab, installed, base, "b", 12, 100, False)
        yield Pair(a, b)
    finally:
        if b is not None:
            b.stop_everything()
        if a is not None:
            a.power_off()
        lab.close()
        if b is not None:
            b.overlay.unmount()
        overlay.unmount()
