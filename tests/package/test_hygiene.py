"""Package hygiene (issue 13, item 6, and item 3's relations): the package's declared versions
agree with pyproject.toml, its hooks and units name commands by absolute path, the php-fpm
ordering names the unit Debian really ships, the unit tests run in the package build on trixie,
the autopkgtest smoke test passes against the installed package, and apt/dpkg never leave carpd
and ifupdown2 (or netscript-2.4) unpacked together."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from debian.changelog import Changelog
from debian.deb822 import Deb822, PkgRelation
from pkgtools import (
    REPO,
    Booted,
    Installed,
    Overlay,
    Pair,
    Stage,
    copy_tree,
    forbid_service_starts,
    in_root,
)

CONTROL = REPO / "debian" / "control"
UNITS = sorted((REPO / "systemd").glob("*.service"))
HOOKS = [REPO / "if-up.d" / "carpd", REPO / "if-down.d" / "carpd"]

# pyproject.toml's name of a dependency -> Debian's package of it
DEBIAN_NAMES = {"pydantic": "python3-pydantic", "pyroute2": "python3-pyroute2",
                "python-debian": "python3-debian"}


def _paragraphs() -> list[Deb822]:
    with CONTROL.open() as control:
        return list(Deb822.iter_paragraphs(control))


def _minimum_versions(field: str) -> dict[str, str]:
    """{package: version} of the `(>= version)` relations in a field of debian/control
    (the source paragraph's Build-Depends, or the binary's Depends)."""
    source, binary = _paragraphs()
    text = (source if field == "Build-Depends" else binary)[field]
    found = {}
    for alternatives in PkgRelation.parse_relations(text):
        for relation in alternatives:
            if relation["version"] and relation["version"][0] == ">=":
                found[relation["name"]] = relation["version"][1]
    return found


def _pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["project"]  # type: ignore[no-any-return]


def test_pyproject_and_debian_control_agree_on_versions() -> None:
    project = _pyproject()
    wanted = {}
    for requirement in project["dependencies"]:  # type: ignore[attr-defined]
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement).groups()
        wanted[DEBIAN_NAMES[name]] = version
    depends = _minimum_versions("Depends")
    assert {name: depends.get(name) for name in wanted} == wanted
    build_depends = _minimum_versions("Build-Depends")
    assert {name: build_depends.get(name) for name in wanted} == wanted
    changelog = Changelog((REPO / "debian" / "changelog").read_text())
    assert changelog.upstream_version == project["version"]


def test_depends_on_ifupdown_that_no_unversioned_provides_satisfies() -> None:
    depends = _paragraphs()[1]["Depends"]
    ifupdown = [alternatives for alternatives in PkgRelation.parse_relations(depends)
                if any(relation["name"].startswith("ifupdown") for relation in alternatives)]
    assert ifupdown == [[{"name": "ifupdown", "version": (">=", "0.8"), "arch": None,
                          "archqual": None, "restrictions": None}]]


def _exec_lines(unit: Path) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines()
            if re.match(r"Exec[A-Za-z]+=", line)]


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_units_run_commands_by_absolute_path(unit: Path) -> None:
    commands = [value.lstrip("-@:+!").split()[0] for value in _exec_lines(unit)]
    assert commands and all(command.startswith("/") for command in commands), commands


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: hook.parent.name)
def test_hooks_never_run_a_carpd_ifupdown_found_on_path(hook: Path, tmp_path: Path) -> None:
    # ifup passes on the PATH of whoever ran it: a carpd-ifupdown there must not be run (on
    # this host the package's /usr/libexec/carpd/carpd-ifupdown does not exist, so the hook
    # does nothing at all)
    assert not Path("/usr/libexec/carpd/carpd-ifupdown").exists()
    ran = tmp_path / "ran"
    fake = tmp_path / "carpd-ifupdown"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {ran}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "IFACE": "eth0", "MODE": "start",
           "PHASE": "post-up", "IF_UCARP_VID": "3", "IF_UCARP_VIP": "10.0.0.1"}
    result = subprocess.run(["sh", str(hook)], env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert (result.returncode, ran.exists()) == (0, False), result.stderr


def test_the_engine_unit_has_the_journal_identifier_carpd() -> None:
    lines = (REPO / "systemd" / "carpd@.service").read_text().splitlines()
    assert "SyslogIdentifier=carpd" in lines


def _after(unit: Path) -> list[str]:
    return [name for line in unit.read_text().splitlines() if line.startswith("After=")
            for name in line.removeprefix("After=").split()]


def test_php_fpm_ordering_names_the_unit_of_trixies_php_fpm(trixie: Path,
                                                            tmp_path: Path) -> None:
    """php-fpm is a metapackage depending on the default phpX.Y-fpm, whose unit is named after
    the version: that unit, as the .deb ships it, must be among carpd@'s After=."""
    overlay = Overlay(tmp_path / "php", [trixie])
    try:
        depends = in_root(overlay.root, ["apt-cache", "depends", "php-fpm"]).output
        versioned = re.findall(r"Depends: (php[0-9.]+-fpm)\b", depends)
        assert versioned, depends
        in_root(overlay.root, ["sh", "-c", f"cd /tmp && apt-get download -q {versioned[0]}"])
        debs = list((overlay.root / "tmp").glob(f"{versioned[0]}_*.deb"))
        assert len(debs) == 1, debs
        listing = subprocess.run(["dpkg-deb", "--contents", str(debs[0])], capture_output=True,
                                 text=True, check=True).stdout
    finally:
        overlay.unmount()
    units = re.findall(r"/lib/systemd/system/(php[^/\s]*-fpm\.service)$", listing, re.M)
    assert units, listing
    after = _after(REPO / "systemd" / "carpd@.service")
    assert [unit for unit in units if unit not in after] == []
    assert "php-fpm.service" not in after  # no such unit in Debian


BUILD = "/build"


def test_package_build_on_trixie_runs_the_unit_tests(trixie: Path, tmp_path: Path) -> None:
    """dpkg-buildpackage in trixie with its Build-Depends (python3-pydantic 2.10,
    python3-pytest...), not as root: dh_auto_test runs tests/unit, and they pass."""
    overlay = Overlay(tmp_path / "build", [trixie])
    try:
        root = overlay.root
        forbid_service_starts(root)
        source = root / BUILD.lstrip("/") / "carpd"
        copy_tree(source)
        with Stage("apt-get build-dep in trixie"):
            in_root(root, ["apt-get", "build-dep", "-y", "-q", f"{BUILD}/carpd"], timeout=900)
        # as a buildd builds: not as root (Rules-Requires-Root: no)
        in_root(root, ["chown", "-R", "nobody:nogroup", BUILD])
        with Stage("dpkg-buildpackage -b in trixie (dh_auto_test runs tests/unit)"):
            result = in_root(root, ["setpriv", "--reuid=nobody", "--regid=nogroup",
                                    "--clear-groups", "sh", "-c",
                                    f"cd {BUILD}/carpd && env -u DEB_BUILD_OPTIONS HOME=/tmp "
                                    "dpkg-buildpackage -us -uc -b"],
                             timeout=1200, check=False)
    finally:
        overlay.unmount()
    assert result.returncode == 0, result.output[-20000:]
    runs = re.findall(r"^(\d+) passed(?:, (\d+) skipped)? in ", result.output, re.M)
    assert runs, result.output[-5000:]
    assert "tests/unit" in result.output
    assert " failed" not in "".join(line for line in result.output.splitlines()
                                    if re.match(r"^\d+ (passed|failed)", line))


def _autopkgtest_control() -> list[Deb822]:
    with (REPO / "debian" / "tests" / "control").open() as control:
        return list(Deb822.iter_paragraphs(control))


def test_autopkgtest_runs_the_smoke_test_as_root_in_a_machine() -> None:
    [paragraph] = _autopkgtest_control()
    assert paragraph["Tests"] == "smoke"
    assert set(paragraph["Restrictions"].replace(",", " ").split()) == {
        "needs-root", "isolation-machine"}
    assert "@" in paragraph["Depends"].replace(",", " ").split()
    smoke = REPO / "debian" / "tests" / "smoke"
    assert smoke.stat().st_mode & 0o111 == 0o111


def test_autopkgtest_smoke_passes_with_the_installed_package(installed: Installed,
                                                             tmp_path: Path) -> None:
    overlay = Overlay(tmp_path / "smoke", installed.lowers)
    try:
        shutil.copy2(REPO / "debian" / "tests" / "smoke", overlay.root / "tmp" / "smoke")
        with Stage("debian/tests/smoke in trixie with the package installed"):
            result = in_root(overlay.root, ["/tmp/smoke"], timeout=180, check=False)
        left = sorted(os.listdir(overlay.root / "run" / "netns")) \
            if (overlay.root / "run" / "netns").is_dir() else []
    finally:
        overlay.unmount()
    assert result.returncode == 0, result.output
    assert "ok: the VIP moved to b when a's engine stopped" in result.output
    assert left == []  # the smoke test removed its namespaces


def _status(root: Path, package: str) -> str:
    return in_root(root, ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", package],
                   check=False).output.strip()


def test_with_ifupdown2_forced_in_by_dpkg_the_hook_starts_no_engine(installed: Installed,
                                                                   tmp_path: Path) -> None:
    """dpkg --auto-deconfigure (as apt runs it, here by hand) removes ifupdown, deconfigures
    carpd, whose Conflicts then no longer count, and unpacks ifupdown2 beside it: the hook,
    run by ifupdown2 as by ifupdown, must refuse to start an engine and say why, yet still stop
    one that runs."""
    overlay = Overlay(tmp_path / "dpkg", installed.lowers)
    try:
        root = overlay.root
        forbid_service_starts(root)
        in_root(root, ["sh", "-c", "cd /tmp && apt-get download -q ifupdown2"])
        [deb] = (root / "tmp").glob("ifupdown2_*.deb")
        in_root(root, ["dpkg", "--auto-deconfigure", "-i", f"/tmp/{deb.name}"], check=False)
        states = {name: _status(root, name)[:2] for name in ("carpd", "ifupdown2")}
        options = ["IFACE=eth0", "LOGICAL=eth0", "ADDRFAM=inet", "METHOD=static",
                   "IF_ADDRESS=192.0.2.11/24", "IF_UCARP_VID=7", "IF_UCARP_VIP=192.0.2.100",
                   "IF_UCARP_PASSWORD=pkg-test-secret"]
        up = in_root(root, ["env", "MODE=start", "PHASE=post-up", *options,
                            "/etc/network/if-up.d/carpd"], check=False)
        started = (root / "run/carpd/eth0.conf").exists()
        (root / "run/carpd").mkdir(parents=True, exist_ok=True)
        down = in_root(root, ["env", "MODE=stop", "PHASE=pre-down", *options,
                              "/etc/network/if-down.d/carpd"], check=False)
    finally:
        overlay.unmount()
    assert states["carpd"][1] in "UHF" and states["ifupdown2"] == "ii", states
    assert up.returncode == 1 and "works with ifupdown, not ifupdown2" in up.output, up.output
    assert not started
    assert down.returncode == 0 and "ifupdown2" not in down.output, down.output


def test_apt_removes_carpd_to_install_ifupdown2_or_netscript(installed: Installed,
                                                             tmp_path: Path) -> None:
    overlay = Overlay(tmp_path / "apt", installed.lowers)
    try:
        root = overlay.root
        forbid_service_starts(root)
        netscript = in_root(root, ["apt-get", "install", "-s", "-q", "netscript-2.4"]).output
        in_root(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                       "ifupdown2"], timeout=600)
        states = {name: _status(root, name) for name in ("carpd", "ifupdown", "ifupdown2")}
        hooks_left = (root / "usr/libexec/carpd/if-up").exists()
    finally:
        overlay.unmount()
    assert re.search(r"^Remv carpd ", netscript, re.M), netscript
    assert states == {"carpd": "rc", "ifupdown": "rc", "ifupdown2": "ii"}, states
    assert not hooks_left  # the conffiles in /etc/network now do nothing


def test_journalctl_t_carpd_shows_the_engines_lines(systemd_pair: Pair) -> None:
    """On a booted trixie, the engine of carpd@eth0 (syslog to /dev/log, as by default) and
    whatever the unit writes to stderr are found with `journalctl -t carpd`."""
    a = systemd_pair.a
    assert isinstance(a, Booted)
    a.wait(lambda: a.unit_state("carpd@eth0.service") == "active", 150,
           "carpd@eth0.service active")
    systemd_pair.wait_holder(a, timeout=20)

    def logged() -> bool:
        out = a.run("journalctl", "-t", "carpd", "-o", "cat", "--no-pager", check=False).output
        return "-> MASTER" in out

    try:
        a.wait(logged, 10, "the engine's MASTER line under `journalctl -t carpd`")
    except AssertionError:
        identifiers = a.run("journalctl", "-u", "carpd@eth0.service", "-o",
                            "verbose", "--no-pager", check=False).output
        found = sorted(set(re.findall(r"SYSLOG_IDENTIFIER=(.*)", identifiers)))
        raise AssertionError(f"identifiers of carpd@eth0's lines: {found}") from None
