"""carpd.debian.debian_status reads dpkg's status database to tell which ifupdown is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from carpd.debian.debian_status import (
    IfupdownStatus,
    InstalledPackage,
    ifupdown_status,
    installed_packages,
)

# Stanzas as dpkg writes them, with the multi-line fields (Conffiles, Description) that a
# parser must step over.
IFUPDOWN = """\
Package: ifupdown
Status: install ok installed
Priority: important
Section: admin
Installed-Size: 231
Maintainer: Debian ifupdown Maintainers <ifupdown@packages.debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 0.8.44
Depends: libc6 (>= 2.34), adduser, iproute2
Conffiles:
 /etc/default/networking 76e2ec1bd2b2e0e5e8fbc3c4f6c1a8b0
 /etc/init.d/networking 8a6e7a6b3d1b8d4e2c4a5d9b1b0c6f34
Description: high level tools to configure network interfaces
 This package provides the tools ifup and ifdown which may be used to
 configure (or, respectively, deconfigure) network interfaces.
 .
 Interfaces are defined in /etc/network/interfaces.
"""

IFUPDOWN_CONFIG_FILES = """\
Package: ifupdown
Status: deinstall ok config-files
Priority: important
Section: admin
Installed-Size: 231
Architecture: amd64
Version: 0.8.41
Conffiles:
 /etc/default/networking 76e2ec1bd2b2e0e5e8fbc3c4f6c1a8b0
Description: high level tools to configure network interfaces
 This package provides the tools ifup and ifdown.
"""

IFUPDOWN2 = """\
Package: ifupdown2
Status: install ok installed
Priority: optional
Section: admin
Architecture: all
Version: 3.0.0-1.2
Provides: ifupdown
Depends: python3:any, iproute2
Conflicts: ifupdown
Description: Network Interface Management tool similar to ifupdown
 ifupdown2 is ifupdown re-written in Python.
"""

OTHER = """\
Package: iproute2
Status: install ok installed
Architecture: amd64
Version: 6.15.0-1
Description: networking and traffic control tools
 The iproute suite.
"""


def write_status(tmp_path: Path, *stanzas: str) -> Path:
    path = tmp_path / "status"
    path.write_text("\n".join(stanzas))
    return path


def test_ifupdown_installed_is_reported_with_its_version(tmp_path: Path) -> None:
    status = ifupdown_status(write_status(tmp_path, OTHER, IFUPDOWN))
    assert status.flavour == "ifupdown"
    assert status.ifupdown == InstalledPackage("ifupdown", "0.8.44", "amd64")
    assert status.ifupdown2 is None


def test_ifupdown2_is_the_flavour_when_ifupdown_left_only_config_files(tmp_path: Path) -> None:
    status = ifupdown_status(write_status(tmp_path, IFUPDOWN_CONFIG_FILES, OTHER, IFUPDOWN2))
    assert status.flavour == "ifupdown2"
    assert status.ifupdown is None
    assert status.ifupdown2 == InstalledPackage("ifupdown2", "3.0.0-1.2", "all")


def test_neither_installed_gives_no_flavour(tmp_path: Path) -> None:
    status = ifupdown_status(write_status(tmp_path, OTHER, IFUPDOWN_CONFIG_FILES))
    assert status == IfupdownStatus(ifupdown=None, ifupdown2=None)
    assert status.flavour is None
    assert not status.at_least("ifupdown", "0")


@pytest.mark.parametrize(("state", "counts"), [
    ("install ok installed", True),
    ("install ok triggers-pending", True),
    ("install ok triggers-awaiting", True),
    ("install ok unpacked", False),
    ("install ok half-configured", False),
    ("install reinstreq half-installed", False),
    ("deinstall ok config-files", False),
    ("purge ok not-installed", False),
])
def test_only_configured_packages_count_as_installed(
        tmp_path: Path, state: str, counts: bool) -> None:
    stanza = IFUPDOWN.replace("Status: install ok installed", f"Status: {state}")
    found = installed_packages(["ifupdown"], write_status(tmp_path, stanza))
    assert ("ifupdown" in found) is counts


def test_versions_compare_as_dpkg_compares_them(tmp_path: Path) -> None:
    status = ifupdown_status(write_status(tmp_path, IFUPDOWN))
    assert status.at_least("ifupdown", "0.8.44")
    assert status.at_least("ifupdown", "0.8.9")  # 44 > 9 numerically, not as text
    assert status.at_least("ifupdown", "0.8.44~rc1")  # ~ sorts before the release
    assert not status.at_least("ifupdown", "0.8.44-1")
    assert not status.at_least("ifupdown", "1:0.1")  # an epoch outranks the rest
    assert not status.at_least("ifupdown2", "0")


def test_at_least_refuses_other_package_names(tmp_path: Path) -> None:
    status = ifupdown_status(write_status(tmp_path, IFUPDOWN))
    with pytest.raises(ValueError, match="ifupdown, ifupdown2"):
        status.at_least("ucarp", "1")


def test_unreadable_status_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        ifupdown_status(tmp_path / "missing")


@pytest.mark.skipif(shutil.which("dpkg-query") is None,
                    reason="needs dpkg-query: a Debian host (CI is one)")
def test_this_hosts_status_agrees_with_dpkg_query() -> None:
    status = ifupdown_status()
    for name in ("ifupdown", "ifupdown2"):
        query = subprocess.run(
            ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", name],
            capture_output=True, text=True, check=False)
        state, _, version = query.stdout.partition(" ")
        package = status.ifupdown if name == "ifupdown" else status.ifupdown2
        if query.returncode == 0 and state == "installed":
            assert package is not None and package.version == version
        else:
            assert package is None


def test_carpctl_explains_what_differs_under_ifupdown2(tmp_path: Path) -> None:
    from carpd.debian.carpctl import ifupdown_note

    note = ifupdown_note(write_status(tmp_path, IFUPDOWN_CONFIG_FILES, IFUPDOWN2))
    assert note is not None
    assert "ifupdown2 3.0.0-1.2 is installed" in note and "merges" in note and "ip(8)" in note


def test_carpctl_says_nothing_extra_under_ifupdown(tmp_path: Path) -> None:
    from carpd.debian.carpctl import ifupdown_note

    assert ifupdown_note(write_status(tmp_path, IFUPDOWN)) is None


def test_carpctl_warns_when_no_ifupdown_is_installed(tmp_path: Path) -> None:
    from carpd.debian.carpctl import ifupdown_note

    note = ifupdown_note(write_status(tmp_path, IFUPDOWN_CONFIG_FILES))
    assert note is not None and "start nothing" in note
